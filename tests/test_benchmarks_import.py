"""Every benchmark still imports: they run by hand, not in the suite, so a moved module breaks one
silently (gallery_bench.py imported facerest.local_server for a day after it became
facerest.serving.local)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_benchmark_imports() -> None:
    names = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "__init__")
    assert names, "no benchmarks found"
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    run = subprocess.run(
        [sys.executable, "-c", script, *names],
        cwd=BENCHMARKS,
        env={"PYTHONPATH": f"{BENCHMARKS.parent}:{BENCHMARKS}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
