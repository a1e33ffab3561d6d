"""Similarity scores as error rates: a recognizer's genuine and impostor score distributions.

A calibration is made from labelled faces (`facerest calibrate`): every pair of faces of the
same identity is a genuine pair, every pair of different identities an impostor pair. From the
impostor scores it answers "how often does a stranger score at least this high" (the false-match
rate, FMR, per comparison) and its inverse, the threshold for an FMR; from the genuine scores the
true-match rate (TMR) at a threshold.

Where the data is thin the empirical rate is not trusted: below `TAIL_MIN_PAIRS` impostor pairs
above a score, the estimate follows an exponential tail fitted to the highest 1% of impostor
scores (peaks over threshold), joined continuously to the empirical curve. The file states which
region each figure comes from, and a Clopper-Pearson upper bound for every threshold.

1:N: a stranger searched against N subjects is falsely matched when any of the N comparisons
is; with independent comparisons FPIR = 1 - (1 - FMR)^N, so FMR = 1 - (1 - FPIR)^(1/N).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from facerest.errors import BadInput, FeatureUnavailable, OutsideCalibration

#: the false-match rates a calibration file tabulates
STANDARD_FMRS = (1e-2, 1e-3, 1e-4)
#: fewer impostor pairs above a score than this: the tail model answers, not the count
TAIL_MIN_PAIRS = 10
#: the impostor fraction the exponential tail is fitted on (the highest 1%)
TAIL_FRACTION = 0.01
#: the tail model is trusted this many decades below the empirical resolution (1 / impostor pairs)
EXTRAPOLATION_DECADES = 2.0
#: impostor scores kept in the file (enough for FMR 1e-2 and the tail fit)
KEPT_IMPOSTOR_SCORES = 2000
#: thresholds with fewer impostor pairs above them than this are marked thin
THIN_PAIRS = 10
CONFIDENCE = 0.95
FORMAT_VERSION = 1


def clopper_pearson_upper(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided upper bound of a binomial rate after k events in n trials."""
    from scipy.stats import beta

    if k >= n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def fmr_for_fpir(fpir: float, subjects: int) -> float:
    """The per-comparison FMR that gives `fpir` over a gallery of `subjects` (independent tries)."""
    if subjects <= 1:
        return fpir
    return float(-math.expm1(math.log1p(-fpir) / subjects))


def fpir_for_fmr(fmr: float, subjects: int) -> float:
    return float(-math.expm1(max(subjects, 1) * math.log1p(-fmr)))


@dataclass(slots=True)
class ThresholdRow:
    fmr: float
    threshold: float
    tmr: float
    impostor_pairs: int  # all impostor pairs
    impostor_pairs_above: int  # impostor pairs scoring at or above the threshold
    fmr_upper: float  # Clopper-Pearson upper bound of the FMR at the threshold
    thin: bool  # fewer than THIN_PAIRS impostor pairs behind the figure
    basis: str  # "empirical" or "tail model"


@dataclass(slots=True)
class Calibration:
    """What a calibration file holds; build with `calibrate`, read with `load`."""

    model: str
    genuine_scores: np.ndarray  # every genuine score, ascending
    impostor_top: np.ndarray  # the highest impostor scores, descending
    impostor_pairs: int
    identities: int
    faces: int
    tail_start: float  # the score where the exponential tail takes over
    tail_fmr: float  # the empirical FMR at tail_start
    tail_scale: float  # the tail's 1/e length in cosine
    made_from: dict[str, Any] = field(default_factory=dict)
    model_md5: str | None = None
    source: str = ""  # the file it was read from

    # --- estimates ---

    @property
    def empirical_min_fmr(self) -> float:
        return 1.0 / self.impostor_pairs

    @property
    def min_fmr(self) -> float:
        """The smallest FMR this calibration answers for (the tail model, a bounded way out)."""
        return self.empirical_min_fmr * 10 ** (-EXTRAPOLATION_DECADES)

    @property
    def max_fmr(self) -> float:
        """The largest FMR it can turn into a threshold: the kept impostor scores cover it."""
        return (len(self.impostor_top) - 1) / self.impostor_pairs

    def fmr_at(self, score: float) -> float:
        """Estimated share of impostor pairs scoring at or above `score`."""
        if score >= self.tail_start:
            return float(self.tail_fmr * math.exp(-(score - self.tail_start) / self.tail_scale))
        above = int(np.searchsorted(-self.impostor_top, -score, side="right"))
        if above >= len(self.impostor_top):  # below the kept scores: at least this share
            return self.max_fmr
        return above / self.impostor_pairs

    def basis_at(self, score: float) -> str:
        return "tail model" if score >= self.tail_start else "empirical"

    def threshold_for(self, fmr: float) -> float:
        """The lowest score whose estimated FMR is at most `fmr`; BadInput outside the range."""
        self.check_fmr(fmr)
        if fmr <= self.tail_fmr:
            exact = self.tail_start + self.tail_scale * math.log(self.tail_fmr / fmr)
        else:
            allowed = math.floor(fmr * self.impostor_pairs + 1e-9)
            # with `allowed` impostors let through, the threshold sits just above the next one
            exact = float(self.impostor_top[allowed]) + 5e-7
        return math.ceil(exact * 1e6) / 1e6  # the file keeps scores to 6 decimals

    def tmr_at(self, threshold: float) -> float:
        below = int(np.searchsorted(self.genuine_scores, threshold, side="left"))
        return 1.0 - below / len(self.genuine_scores)

    def check_fmr(self, fmr: float) -> None:
        if not self.min_fmr <= fmr <= self.max_fmr:
            raise OutsideCalibration(
                f"fmr {fmr:g} is outside the calibrated range {self.min_fmr:.1e} to {self.max_fmr:.1e} "
                f"of {self.model} ({self.impostor_pairs} impostor pairs in "
                f"{self.source or 'the calibration'})"
            )

    def row(self, fmr: float) -> ThresholdRow:
        threshold = self.threshold_for(fmr)
        above = int(np.searchsorted(-self.impostor_top, -threshold, side="right"))
        return ThresholdRow(
            fmr=fmr,
            threshold=round(threshold, 6),
            tmr=self.tmr_at(threshold),
            impostor_pairs=self.impostor_pairs,
            impostor_pairs_above=above,
            fmr_upper=clopper_pearson_upper(above, self.impostor_pairs),
            thin=fmr * self.impostor_pairs < THIN_PAIRS,
            basis=self.basis_at(threshold),
        )

    def table(self, fmrs: Sequence[float] = STANDARD_FMRS) -> list[ThresholdRow]:
        return [self.row(f) for f in fmrs]

    # --- file ---

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "model": self.model,
            "model_md5": self.model_md5,
            "made_from": self.made_from,
            "faces": self.faces,
            "identities": self.identities,
            "genuine_pairs": len(self.genuine_scores),
            "impostor_pairs": self.impostor_pairs,
            "thresholds": [row_json(r) for r in self.table()],
            "calibrated_fmr_range": [self.min_fmr, self.max_fmr],
            "tail_model": {
                "kind": "exponential tail over the highest impostor scores, P(s' >= s) = "
                "fmr_at_start * exp(-(s - start) / scale)",
                "start": self.tail_start,
                "fmr_at_start": self.tail_fmr,
                "scale": self.tail_scale,
            },
            "genuine_scores": [round(float(s), 6) for s in self.genuine_scores],
            "impostor_top_scores": [round(float(s), 6) for s in self.impostor_top],
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")


def row_json(row: ThresholdRow) -> dict[str, Any]:
    return {
        "fmr": row.fmr,
        "threshold": row.threshold,
        "tmr": round(row.tmr, 6),
        "impostor_pairs": row.impostor_pairs,
        "impostor_pairs_above": row.impostor_pairs_above,
        "fmr_upper_95": row.fmr_upper,
        "thin": row.thin,
        "basis": row.basis,
    }


def load(path: Path) -> Calibration:
    try:
        raw = json.loads(Path(path).read_text())
        tail = raw["tail_model"]
        return Calibration(
            model=raw["model"],
            model_md5=raw.get("model_md5"),
            genuine_scores=np.sort(np.asarray(raw["genuine_scores"], np.float64)),
            impostor_top=-np.sort(-np.asarray(raw["impostor_top_scores"], np.float64)),
            impostor_pairs=int(raw["impostor_pairs"]),
            identities=int(raw["identities"]),
            faces=int(raw["faces"]),
            tail_start=float(tail["start"]),
            tail_fmr=float(tail["fmr_at_start"]),
            tail_scale=float(tail["scale"]),
            made_from=raw.get("made_from", {}),
            source=str(path),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"calibration file {path} cannot be read: {type(exc).__name__}: {exc}") from exc


def shipped_path(model: str) -> Path:
    """Where the catalogue's calibration of `model` lives (it may not exist)."""
    return Path(str(resources.files("facerest.models").joinpath(f"calibration/{model}.json")))


def shipped(model: str) -> Calibration | None:
    path = shipped_path(model)
    if not path.is_file():
        return None
    found = load(path)
    found.source = f"catalogue:{path.name}"  # what answers name (never a server path)
    return found


# --- decisions ---


@dataclass(slots=True)
class Decision:
    """The similarity at or above which a face is named, and what error rate that stands for."""

    threshold: float
    basis: str  # "threshold" (a raw cosine asked), "fmr" or "fpir"
    fmr: float | None = None  # per comparison, at the threshold
    fpir: float | None = None  # 1:N, over `subjects`
    subjects: int | None = None
    fpir_asked: float | None = None  # when the asked FPIR could not be met in this gallery
    calibration: str | None = None  # the file behind the figures

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"basis": self.basis, "threshold": self.threshold}
        for key in ("fmr", "fpir", "subjects", "fpir_asked", "calibration"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def decide(
    calibration: Calibration | None,
    *,
    threshold: float | None = None,
    fmr: float | None = None,
    fpir: float | None = None,
    subjects: int | None = None,
    default_fmr: float,
    default_fpir: float | None = None,
    fallback_threshold: float,
) -> Decision:
    """The decision point from what a request asked, else the server's default error rate.

    `subjects` given: a 1:N search, where the default is `default_fpir` over the gallery's
    subjects. An FPIR that would need an FMR smaller than the calibration answers for is met with
    its smallest FMR: asked by the client, BadInput; the server's default, the FPIR in force is
    reported (higher than the default, as the gallery has outgrown the calibration)."""
    if sum(v is not None for v in (threshold, fmr, fpir)) > 1:
        raise BadInput("give one of threshold, fmr and fpir")
    if fpir is not None and subjects is None:
        raise BadInput("fpir is a 1:N rate: give fmr (or threshold) to verify")
    source = calibration.source if calibration is not None else None
    if threshold is not None:
        return Decision(
            threshold,
            "threshold",
            fmr=calibration.fmr_at(threshold) if calibration else None,
            fpir=fpir_for_fmr(calibration.fmr_at(threshold), subjects) if calibration and subjects else None,
            subjects=subjects,
            calibration=source,
        )
    if calibration is None:
        if fmr is not None or fpir is not None:
            raise BadInput("fmr and fpir need a calibration of the recognizer; none is installed for it")
        return Decision(fallback_threshold, "threshold", subjects=subjects)
    if fmr is None and (fpir is not None or (subjects is not None and default_fpir is not None)):
        asked = fpir if fpir is not None else default_fpir
        assert asked is not None
        if not 0.0 < asked < 1.0:
            raise BadInput(f"fpir must be between 0 and 1, not {asked:g}")
        count = max(subjects or 1, 1)
        wanted = min(fmr_for_fpir(asked, count), calibration.max_fmr)
        if wanted < calibration.min_fmr and fpir is not None:
            raise OutsideCalibration(
                f"fpir {asked:g} over {count} subjects needs fmr {wanted:.1e}, below the calibrated range "
                f"({calibration.min_fmr:.1e} to {calibration.max_fmr:.1e})"
            )
        used = max(wanted, calibration.min_fmr)
        return Decision(
            calibration.threshold_for(used),
            "fpir",
            fmr=used,
            fpir=fpir_for_fmr(used, count),
            subjects=subjects,
            fpir_asked=asked if used != wanted else None,
            calibration=source,
        )
    chosen = default_fmr if fmr is None else fmr
    return Decision(
        calibration.threshold_for(chosen),
        "fmr",
        fmr=chosen,
        fpir=fpir_for_fmr(chosen, subjects) if subjects else None,
        subjects=subjects,
        calibration=source,
    )


# --- building one ---


def pair_scores(embeddings: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) cosine scores of every unordered pair of unit embeddings."""
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    upper = np.triu_indices(len(codes), k=1)
    scores = (embeddings @ embeddings.T)[upper]
    same = codes[upper[0]] == codes[upper[1]]
    return np.sort(scores[same]), np.sort(scores[~same])


def calibrate(
    embeddings: np.ndarray,
    labels: Sequence[str],
    model: str,
    model_md5: str | None = None,
    made_from: dict[str, Any] | None = None,
    fmrs: Sequence[float] = STANDARD_FMRS,
) -> Calibration:
    """A calibration from unit embeddings and their identity labels.

    BadInput when the data cannot support it: fewer than two identities, no genuine pair, or too
    few impostor pairs for the smallest FMR asked (the message says how many are needed)."""
    if len(embeddings) != len(labels):
        raise BadInput("calibration needs one label per embedding")
    identities = len(set(labels))
    if identities < 2:
        raise BadInput(f"calibration needs faces of at least 2 identities; got {identities}")
    genuine, impostor = pair_scores(np.asarray(embeddings, np.float64), labels)
    if len(genuine) == 0:
        raise BadInput("calibration needs at least one identity with two or more faces (no genuine pair)")
    smallest = min(fmrs)
    # the tail model may answer two decades below the data; past that the data is too thin
    needed = math.ceil(10 ** (-EXTRAPOLATION_DECADES) / smallest)
    tail_count = max(TAIL_MIN_PAIRS, math.ceil(TAIL_FRACTION * len(impostor)))
    if len(impostor) < max(needed, 2 * TAIL_MIN_PAIRS):
        raise BadInput(
            f"FMR {smallest:g} needs at least {max(needed, 2 * TAIL_MIN_PAIRS)} impostor pairs; the "
            f"{len(embeddings)} faces of {identities} identities give {len(impostor)}: add faces of "
            "more people (e.g. crowd photos with --crowd)"
        )
    descending = impostor[::-1]
    kept = descending[: max(KEPT_IMPOSTOR_SCORES, tail_count + 1, math.ceil(max(fmrs) * len(impostor)) + 1)]
    # exponential tail (peaks over threshold): the mean excess over the fit start is its scale
    fit_start = float(descending[tail_count - 1])
    scale = float(np.mean(descending[:tail_count] - fit_start))
    scale = max(scale, 1e-4)
    # the tail answers where fewer than TAIL_MIN_PAIRS impostors lie above; joined at that point
    tail_start = float(descending[TAIL_MIN_PAIRS - 1])
    return Calibration(
        model=model,
        model_md5=model_md5,
        genuine_scores=genuine,
        impostor_top=kept,
        impostor_pairs=len(impostor),
        identities=identities,
        faces=len(embeddings),
        tail_start=tail_start,
        tail_fmr=TAIL_MIN_PAIRS / len(impostor),
        tail_scale=scale,
        made_from=made_from or {},
    )


def plot(calibration: Calibration, path: Path, all_impostors: np.ndarray | None = None) -> None:
    """An ROC (TMR against FMR, log scale) and the two score histograms, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional: pip install 'facerest[plots]'
        raise FeatureUnavailable("the ROC plot needs matplotlib: pip install 'facerest[plots]'") from exc
    figure, (roc, hist) = plt.subplots(1, 2, figsize=(12, 5))
    low, high = calibration.min_fmr, calibration.max_fmr
    fmrs = np.clip(np.logspace(math.log10(low), math.log10(high), 200), low, high)
    thresholds = [calibration.threshold_for(f) for f in fmrs]
    tmrs = [calibration.tmr_at(t) for t in thresholds]
    empirical = [f >= calibration.tail_fmr for f in fmrs]
    roc.semilogx(
        [f for f, e in zip(fmrs, empirical, strict=True) if e],
        [t for t, e in zip(tmrs, empirical, strict=True) if e],
        label="empirical",
    )
    roc.semilogx(
        [f for f, e in zip(fmrs, empirical, strict=True) if not e],
        [t for t, e in zip(tmrs, empirical, strict=True) if not e],
        "--",
        label="impostor tail model",
    )
    lines = ["FMR      threshold  TMR     impostor pairs above"]
    for row in calibration.table():
        roc.plot(row.fmr, row.tmr, "o", color="black")
        lines.append(
            f"{row.fmr:<8g} {row.threshold:<10.4f} {row.tmr:<7.4f} {row.impostor_pairs_above}"
            + (" (thin)" if row.thin else "")
        )
    roc.text(0.3, 0.3, "\n".join(lines), transform=roc.transAxes, family="monospace", fontsize=9)
    roc.set_xlabel("false-match rate (per comparison)")
    roc.set_ylabel("true-match rate")
    roc.set_ylim(min(0.8, min(tmrs) - 0.02), 1.005)
    roc.set_title(f"{calibration.model}: ROC")
    roc.grid(True, which="both", alpha=0.3)
    roc.legend(loc="lower right")
    impostors = all_impostors if all_impostors is not None else calibration.impostor_top
    bins = np.linspace(-0.3, 1.0, 131)
    hist.hist(impostors, bins=bins, density=True, alpha=0.6, label=f"impostor ({calibration.impostor_pairs})")
    hist.hist(
        calibration.genuine_scores,
        bins=bins,
        density=True,
        alpha=0.6,
        label=f"genuine ({len(calibration.genuine_scores)})",
    )
    for row in calibration.table():
        hist.axvline(row.threshold, color="black", linestyle=":", linewidth=1)
    hist.set_yscale("log")
    hist.set_xlabel("cosine similarity")
    hist.set_title(f"{calibration.faces} faces, {calibration.identities} identities")
    hist.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
