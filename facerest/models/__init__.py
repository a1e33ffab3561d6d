"""Models: catalogue, store, and the classes that own each family's pre/post-processing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from facerest.errors import ModelError
from facerest.models.base import FaceModel
from facerest.models.catalog import CatalogEntry
from facerest.models.detection.base import Detector
from facerest.models.store import ModelStore
from facerest.runtime.base import create_session
from facerest.runtime.shapes import ModelRole

if TYPE_CHECKING:
    from facerest.config import Settings

log = logging.getLogger(__name__)

#: family -> "module:Class"; each detector family decodes its own outputs
DETECTOR_FAMILIES = {
    "scrfd": "facerest.models.detection.scrfd:ScrfdDetector",
    "retinaface": "facerest.models.detection.retinaface:RetinaFaceDetector",
    "mnet_cov2": "facerest.models.detection.retinaface:RetinaFaceDetector",
    "centerface": "facerest.models.detection.centerface:CenterFaceDetector",
    "yolov5_face": "facerest.models.detection.yolov5_face:YoloV5FaceDetector",
    "mtcnn": "facerest.models.detection.mtcnn:MtcnnDetector",
}


def _load_class(ref: str) -> type:
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


@dataclass(slots=True)
class LoadedModels:
    detector: Detector
    recognizer: FaceModel | None = None
    genderage: FaceModel | None = None
    mask: FaceModel | None = None
    landmarks: FaceModel | None = None
    backends: dict[str, str] = field(default_factory=dict)  # model name -> backend in use


def _role(entry: CatalogEntry, stage: int) -> ModelRole:
    return ModelRole(entry.task, entry.family, stage, entry.allow_batching)


def load_detector(entry: CatalogEntry, paths: list[Path], settings: Settings) -> Detector:
    ref = DETECTOR_FAMILIES.get(entry.family)
    if ref is None:
        raise ModelError(f"{entry.name!r} is a {entry.family!r} model, which is not a known detector family")
    session = create_session(paths[0], settings, model_name=entry.name, role=_role(entry, 0))
    # a cascade (MTCNN) keeps one session per stage: its later stages come from the later files
    stages = [
        create_session(p, settings, model_name=f"{entry.name}_{i}", role=_role(entry, i))
        for i, p in enumerate(paths[1:], 1)
    ]
    extra = {"stage_sessions": stages} if stages else {}
    return _load_class(ref)(entry, session, nms_threshold=settings.nms_thresh, **extra)


def load_face_model(entry: CatalogEntry, paths: list[Path], settings: Settings) -> FaceModel:
    from facerest.models import attributes
    from facerest.models.recognition import ArcFaceRecognizer

    def session(i: int = 0):  # type: ignore[no-untyped-def]
        return create_session(
            paths[i], settings, model_name=entry.name if i == 0 else f"{entry.name}_{i}", role=_role(entry, i)
        )

    if entry.task == "recognition":
        return ArcFaceRecognizer(entry, session(), paths[0], antialias=settings.align_antialias)
    if entry.family == "dlib_age_gender":
        return attributes.DlibAgeGender(entry, session(0), session(1))
    if entry.task == "genderage":
        return attributes.InsightFaceGenderAge(entry, session())
    if entry.task == "mask":
        return attributes.MaskClassifier(entry, session())
    if entry.task == "landmarks":
        from facerest.models.landmarks import Landmark2d106

        return Landmark2d106(entry, session())
    raise ModelError(f"{entry.name!r} ({entry.task}/{entry.family}) is not a per-face model this server runs")


def prepare_models(settings: Settings) -> dict[str, list[Path]]:
    """Make sure every configured model's files are present and intact; returns their paths.

    Runs once before any worker starts, so workers never download or copy at the same time.
    """
    from facerest.tools.mxnet_convert import convert_dropped_models  # <models>/mxnet/<name>/ -> ONNX

    convert_dropped_models(settings.models_dir, settings.mxnet_env)
    store = ModelStore(settings.models_dir)
    names = [
        settings.det_name,
        settings.rec_name,
        settings.ga_name,
        settings.mask_name,
        settings.landmarks_name,
    ]
    return {name: store.ensure(name, download=settings.auto_download) for name in names if name}


def load_models(settings: Settings) -> LoadedModels:
    store = ModelStore(settings.models_dir)
    paths = prepare_models(settings)
    detector = load_detector(store.entry(settings.det_name), paths[settings.det_name], settings)
    loaded = LoadedModels(detector=detector)
    loaded.backends[detector.name] = detector.session.backend
    for attr, name in (
        ("recognizer", settings.rec_name),
        ("genderage", settings.ga_name),
        ("mask", settings.mask_name),
        ("landmarks", settings.landmarks_name),
    ):
        if not name:
            continue
        model = load_face_model(store.entry(name), paths[name], settings)
        setattr(loaded, attr, model)
        session = getattr(model, "session", None) or getattr(model, "age_session", None)
        if session is not None:
            loaded.backends[name] = session.backend
    log.info("models loaded: %s", ", ".join(f"{k} on {v}" for k, v in loaded.backends.items()))
    return loaded
