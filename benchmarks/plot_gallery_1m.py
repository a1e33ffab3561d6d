"""The picture of docs/performance.md's 1M-face gallery figures: HNSW graph vs sign codes.

    PYTHONPATH=. python benchmarks/plot_gallery_1m.py [--out docs/img/gallery_1m.png]

The numbers are the measured ones recorded in docs/performance.md (gallery_bench.py through the
HTTP API, 1 client, 2026-12-02: httpx on the Intel Xeon; "lean client" = http.client on the
AMD EPYC, third session), not measured again here; the dashed lines are issue 16's targets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: (label, p50 ms through HTTP at 1 client, recall@1 against the exact scan, target ms, target recall)
MEASURED = [
    ("SQLite\nHNSW (usearch i8)", 18.1, 0.880, 5.0, 0.99),
    ("SQLite\nsign codes", 6.0, 1.000, 5.0, 0.99),
    ("SQLite\ncodes, lean\nclient", 4.4, 0.998, 5.0, 0.99),
    ("PostgreSQL\nHNSW (pgvector)", 50.3, 0.855, 20.0, 0.98),
    ("PostgreSQL\nreplica's codes", 6.6, 1.000, 20.0, 0.98),
    ("PostgreSQL\ncodes, lean\nclient", 7.6, 1.000, 20.0, 0.98),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/img/gallery_1m.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m[0] for m in MEASURED]
    colours = ["#b0b0b0", "#2a7ab9", "#1b4f7a", "#b0b0b0", "#2a7ab9", "#1b4f7a"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for axis, column, target_column, title in (
        (left, 1, 3, "search p50 through HTTP, ms (lower is better)"),
        (right, 2, 4, "recall@1 against the exact scan (higher is better)"),
    ):
        values = [m[column] for m in MEASURED]
        axis.bar(range(len(values)), values, color=colours)
        for x, (value, row) in enumerate(zip(values, MEASURED, strict=True)):
            axis.hlines(row[target_column], x - 0.4, x + 0.4, colors="#d62728", linestyles="dashed")
            axis.text(x, value, f"{value:g}", ha="center", va="bottom", fontsize=9)
        axis.set_xticks(range(len(values)), labels, fontsize=8)
        axis.set_title(title, fontsize=10)
    right.set_ylim(0.8, 1.02)
    fig.suptitle(
        "A million faces, 2 cores: HNSW graph vs sign codes (dashed: issue 16's targets)", fontsize=11
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
