"""Models: the catalogue, the store of files, and one class per family that owns its pre/post-processing
and runs on sessions it is handed (facerest.preparation makes them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facerest.errors import ModelError
from facerest.models import attributes
from facerest.models.base import FaceModel
from facerest.models.catalog import CatalogEntry
from facerest.models.detection.base import Detector
from facerest.models.detection.centerface import CenterFaceDetector
from facerest.models.detection.mtcnn import MtcnnDetector
from facerest.models.detection.retinaface import RetinaFaceDetector
from facerest.models.detection.scrfd import ScrfdDetector
from facerest.models.detection.yolov5_face import YoloV5FaceDetector
from facerest.models.detection.yunet import YuNetDetector
from facerest.models.landmarks import Landmark2d106
from facerest.models.recognition import RECOGNIZER_FAMILIES, ArcFaceRecognizer
from facerest.runtime.base import InferenceSession

#: family -> class; each detector family decodes its own outputs
DETECTOR_FAMILIES: dict[str, type[Detector]] = {
    "scrfd": ScrfdDetector,
    "retinaface": RetinaFaceDetector,
    "mnet_cov2": RetinaFaceDetector,
    "centerface": CenterFaceDetector,
    "yolov5_face": YoloV5FaceDetector,
    "mtcnn": MtcnnDetector,
    "yunet": YuNetDetector,
}


@dataclass(slots=True)
class LoadedModels:
    detector: Detector
    recognizer: FaceModel | None = None
    genderage: FaceModel | None = None
    mask: FaceModel | None = None
    landmarks: FaceModel | None = None
    backends: dict[str, str] = field(default_factory=dict)  # model name -> backend in use

    def licences(self) -> dict[str, dict[str, object]]:
        """Model name -> its weights' licence, source and whether that licence allows commercial
        use (None: not known), for every model in use."""
        models = [self.detector, self.recognizer, self.genderage, self.mask, self.landmarks]
        return {
            m.entry.name: {
                "licence": m.entry.licence_shown,
                "source": m.entry.source,
                "commercial_use": m.entry.commercial_use,
            }
            for m in models
            if m is not None
        }


def build_detector(
    entry: CatalogEntry, sessions: list[InferenceSession], *, nms_threshold: float
) -> Detector:
    """The detector class of `entry`'s family on its ready sessions (one per file)."""
    family = DETECTOR_FAMILIES.get(entry.family)
    if family is None:
        raise ModelError(f"{entry.name!r} is a {entry.family!r} model, which is not a known detector family")
    # a cascade (MTCNN) keeps one session per stage: its later stages come from the later files
    extra = {"stage_sessions": sessions[1:]} if len(sessions) > 1 else {}
    return family(entry, sessions[0], nms_threshold=nms_threshold, **extra)


def build_face_model(
    entry: CatalogEntry, sessions: list[InferenceSession], model_path: Path, *, antialias: bool
) -> FaceModel:
    """The per-face model of `entry` on its ready sessions; `model_path` is its first file (the
    recognizer reads its input normalisation from the graph)."""
    if entry.task == "recognition":
        family = RECOGNIZER_FAMILIES.get(entry.family)
        if family is None:
            known = ", ".join(sorted(RECOGNIZER_FAMILIES))
            raise ModelError(
                f"{entry.name!r} is a {entry.family!r} model, not a known recognizer family ({known})"
            )
        if family is ArcFaceRecognizer:
            return ArcFaceRecognizer(entry, sessions[0], model_path, antialias=antialias)
        return family(entry, sessions[0])
    if entry.family == "dlib_age_gender":
        return attributes.DlibAgeGender(entry, sessions[0], sessions[1])
    if entry.task == "genderage":
        return attributes.InsightFaceGenderAge(entry, sessions[0])
    if entry.task == "mask":
        return attributes.MaskClassifier(entry, sessions[0])
    if entry.task == "landmarks":
        return Landmark2d106(entry, sessions[0])
    raise ModelError(f"{entry.name!r} ({entry.task}/{entry.family}) is not a per-face model this server runs")
