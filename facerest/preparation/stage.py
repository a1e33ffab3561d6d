"""The stage's entry points: the model files made ready, the runtime's once-per-machine work, and the
models loaded on ready sessions."""

from __future__ import annotations

import logging
from pathlib import Path

from facerest.config import Settings
from facerest.errors import BadInput, FeatureUnavailable, LicenceRefused, ModelError, ModelMissing
from facerest.models import LoadedModels, build_detector, build_face_model
from facerest.models.base import FaceModel
from facerest.models.catalog import CatalogEntry
from facerest.models.detection.base import Detector
from facerest.models.recognition import Recognizer
from facerest.models.store import ModelStore
from facerest.preparation.sessions import engine_for, open_session, session_name
from facerest.runtime.base import InferenceSession
from facerest.runtime.factory import check_runtime
from facerest.runtime.gpu import check_gpu_runtime
from facerest.runtime.shapes import ModelRole
from facerest.tools.converters import CONVERTERS
from facerest.tools.mxnet_convert import convert_dropped_models

log = logging.getLogger("facerest.models")


def configured_models(settings: Settings) -> list[str]:
    """The catalogue names of every model the settings ask for, detector first."""
    names = [
        settings.det_name,
        settings.rec_name,
        settings.ga_name,
        settings.mask_name,
        settings.landmarks_name,
    ]
    return [name for name in names if name]


def check_licences(settings: Settings, store: ModelStore) -> None:
    """With FACEREST_COMMERCIAL_USE=true, LicenceRefused (one line naming each model and its
    licence) unless every configured model's licence allows commercial use."""
    if not settings.commercial_use:
        return
    refused = []
    for name in configured_models(settings):
        entry = store.entry(name)
        if entry.commercial_use is not True:
            refused.append(f"{name} ({entry.licence_shown})")
    if refused:
        raise LicenceRefused(
            "FACEREST_COMMERCIAL_USE=true, but the licence of "
            + ", ".join(refused)
            + " does not allow commercial use (or is not known); set FACEREST_MODEL_PACK=commercial or "
            "choose models whose licence allows it (`facerest models list`; a custom model's entry in "
            '<models>/catalog.json may say "commercial_use": true)'
        )


def prepare_models(settings: Settings) -> dict[str, list[Path]]:
    """Make sure every configured model's files are present and intact; returns their paths.

    Runs once before any worker starts, so workers never download or copy at the same time. With
    FACEREST_COMMERCIAL_USE=true it first refuses models whose licence does not allow that.
    """
    convert_dropped_models(settings.models_dir, settings.mxnet_env)  # <models>/mxnet/<name>/ -> ONNX
    store = ModelStore(settings.models_dir)
    check_licences(settings, store)
    return {
        name: store.ensure(name, download=settings.auto_download, converters=CONVERTERS)
        for name in configured_models(settings)
    }


def prepare_runtime(settings: Settings) -> None:
    """Work the runtime needs once per machine (or GPU) before any worker starts.

    TensorRT: build (or find cached) engines for every configured model, so workers only load
    them and never race to build; auto: measure which CPU runtime runs each model faster. Called
    by `facerest serve` after the model files are prepared, in each GPU's process group (it sees
    only its GPU). It first checks what can be known wrong without a model (providers asked for by
    name and absent) and, with FACEREST_REQUIRE_GPU, proves the GPU runtime asked for is the one
    that runs (BackendUnavailable, one line, otherwise).
    """
    check_runtime(settings)
    if settings.gpu_required:
        check_gpu_runtime(settings)
    if settings.runtime == "auto":
        if settings.workers == 1:  # the one worker measures as it loads
            return
        # measured here, before the workers start, so they only read the choice (and do not
        # measure while the others load, on the same cores)
        for name, paths in prepare_models(settings).items():
            for i, path in enumerate(paths):
                open_session(path, settings, model_name=session_name(name, i))
        return
    if settings.runtime != "trt":
        return
    for name, paths in prepare_models(settings).items():
        for path in paths:
            engine_for(path, settings, name)


def _sessions(entry: CatalogEntry, paths: list[Path], settings: Settings) -> list[InferenceSession]:
    return [
        open_session(
            p,
            settings,
            model_name=session_name(entry.name, i),
            role=ModelRole(entry.task, entry.family, i, entry.allow_batching),
        )
        for i, p in enumerate(paths)
    ]


def load_detector(entry: CatalogEntry, paths: list[Path], settings: Settings) -> Detector:
    return build_detector(entry, _sessions(entry, paths, settings), nms_threshold=settings.nms_thresh)


def load_face_model(entry: CatalogEntry, paths: list[Path], settings: Settings) -> FaceModel:
    sessions = _sessions(entry, paths, settings)
    return build_face_model(entry, sessions, paths[0], antialias=settings.align_antialias)


def load_recognizer(name: str, settings: Settings) -> Recognizer:
    """One recognizer besides the models in use, by catalogue name, through the same preparation
    (files fetched or converted, the licence guard, the runtime's sessions): what a gallery moving
    to another recognizer embeds with (issue 32). BadInput when `name` is not a recognizer;
    FeatureUnavailable when its files cannot be had here or its licence is refused."""
    store = ModelStore(settings.models_dir)
    try:
        entry = store.entry(name)
    except ModelMissing as exc:
        raise BadInput(exc.detail) from exc
    if entry.task != "recognition":
        raise BadInput(f"{name!r} is a {entry.task} model, not a face recognizer")
    if settings.commercial_use and entry.commercial_use is not True:
        raise FeatureUnavailable(
            f"FACEREST_COMMERCIAL_USE=true, but the licence of {name} ({entry.licence_shown}) does not "
            "allow commercial use (or is not known)"
        )
    try:
        paths = store.ensure(name, download=settings.auto_download, converters=CONVERTERS)
        model = load_face_model(entry, paths, settings)
    except ModelError as exc:
        raise FeatureUnavailable(f"{name} cannot be loaded here: {exc.detail}") from exc
    if not isinstance(model, Recognizer):
        raise BadInput(f"{name!r} is not a face recognizer")
    log.info("%s loaded on %s", name, model.session.backend)
    return model


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
