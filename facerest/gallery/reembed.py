"""Galleries that move to another recognizer (issue 32): every face embedded again from the crop it
keeps, while searches answer from the old model until the switch.

How a move runs:
- The target recognizer is loaded by catalogue name through the preparation stage
  (`preparation.load_recognizer`: the same fetch or conversion, licence guard and runtime sessions
  as the server's own models; the server's own instance is used when it is the target), its
  embedding size measured by one inference, and the job recorded in the gallery store
  (`GalleryStore.reembed_begin`), which checks the gallery, the target and the faces without a
  usable crop in one transaction: a refused move changes nothing.
- Faces are taken FACEREST_REEMBED_BATCH_SIZE at a time in id order. Each crop is decoded, aligned
  by the target on the landmarks kept with it (`Recognizer.align`, the call the pipeline makes on a
  photo: ArcFace's template or dlib's chip), embedded through the server's inference scheduler as
  jobs of the move's own (requests are served least-first, so they go ahead of its batches), and
  written beside the old embedding together with the runner's heartbeat in one transaction
  (`reembed_put`). A crash loses at most the batch in flight; the next run (a POST, the CLI, or the
  server's start once the lease FACEREST_REEMBED_LEASE_S has run out) takes up where the last one
  committed, and writes land on the same rows, so nothing is duplicated.
- When no face with a crop is left without its new embedding, `reembed_finish` switches in one
  transaction (in place: embeddings, model and index; `into`: the new gallery made whole); faces
  enrolled meanwhile are embedded first. In place, the review queue's items move too.
- The target is released when the run ends: its scheduler queue forgotten and the last reference
  dropped, so its session's memory goes back. A server keeps one recognizer for its requests.

Why the stored landmarks and not the target pack's own detector run again on the crop: measured on
the 76 faces of the shared sets (docs/models.md, "Moving a gallery"), SFace on a crop with the
stored SCRFD landmarks is within cosine 0.990-0.997 of SFace on the original photo at the same
landmarks (warped without aliasing), while YuNet's landmarks found again on the crop move by 8.5%
of the eye distance from YuNet's on the photo and give embeddings 0.876-0.986 from them.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from facerest.config import Settings
from facerest.errors import BadInput, Conflict, FaceRestError, NotFound
from facerest.gallery.store import GalleryStore, ModelTag, NotOwner, ReembedJob
from facerest.imaging.crops import FaceCrop
from facerest.models.recognition import Recognizer
from facerest.models.store import ModelStore, md5_of
from facerest.pipeline.scheduler import InferenceScheduler

log = logging.getLogger(__name__)

#: the alignments a kept crop can give (its 2x-box square holds both; docs/architecture.md)
ALIGNMENTS = ("arcface", "dlib_chip")


def recognizer_tag(recognizer: Recognizer, settings: Settings) -> ModelTag:
    """What a gallery records of the recognizer that builds it: name, file md5, embedding size."""
    entry = recognizer.entry
    md5 = entry.main_file.md5 or md5_of(ModelStore(settings.models_dir).path(entry))
    dim = getattr(recognizer, "dim", None)
    return ModelTag(entry.name, md5, dim if isinstance(dim, int) else 512)


def shown_state(job: ReembedJob, lease_s: float, now: float | None = None) -> str:
    """running, interrupted (nobody runs it: its runner stopped or crashed; the next run takes it
    up), done or failed (or cancelled, as a run that lost its job to a cancel returns it)."""
    if job.state != "running":
        return job.state
    silent = (now or time.time()) - job.updated_at
    return "interrupted" if job.owner is None or silent >= lease_s else "running"


@dataclass(slots=True)
class Target:
    """The recognizer a gallery moves to, loaded for the move."""

    recognizer: Recognizer
    tag: ModelTag
    own: bool = False  # the server's own recognizer: not released after the move

    @property
    def queue(self) -> str:
        """The move's name in the scheduler: its batches queue apart from the requests'."""
        return f"reembed:{self.tag.name}"


Progress = Callable[[ReembedJob], None]


class Reembedder:
    """Moves galleries of one store: in the foreground (`prepare` then `run`: the CLI) or in a
    thread per gallery (`start`: the API). Every state lives in the store, so any process answers
    `status` and any runner can take up a move another left."""

    def __init__(
        self,
        store: Callable[[], GalleryStore],
        settings: Settings,
        scheduler: InferenceScheduler,
        changed: Callable[[ReembedJob], None] | None = None,
        own: Recognizer | None = None,
        load: Callable[[str, Settings], Recognizer] | None = None,
    ) -> None:
        """`own`: the recognizer the server already runs (used when it is the target); `load`: how
        another is loaded (preparation.load_recognizer); `changed`: told of each finished move."""
        self._store = store
        self.settings = settings
        self.scheduler = scheduler
        self._changed = changed or (lambda job: None)
        self._own = own
        self._load = load
        #: who this runner is, in the job's `owner`: host, process and a token per Reembedder
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._threads: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._closing = threading.Event()

    @property
    def store(self) -> GalleryStore:
        return self._store()

    # --- the target ---

    def load_target(self, name: str) -> Target:
        """The recognizer `name`, checked: BadInput when it is not one or aligns in a way a kept
        crop cannot give; FeatureUnavailable when it cannot be loaded here."""
        own = self._own
        if own is not None and own.entry.name == name:
            return Target(own, recognizer_tag(own, self.settings), own=True)
        if self._load is None:
            from facerest.preparation import load_recognizer

            self._load = load_recognizer
        recognizer = self._load(name, self.settings)
        target = Target(recognizer, recognizer_tag(recognizer, self.settings))
        try:
            if recognizer.alignment not in ALIGNMENTS:
                raise BadInput(
                    f"{name} aligns faces as {recognizer.alignment or 'nothing known'}; a kept crop gives "
                    f"{' or '.join(ALIGNMENTS)} (the 5 landmarks and the face's surroundings)"
                )
            # the size the gallery will record is the one it gives, whatever the graph declares
            size = recognizer.size
            dim = self._embed(target, [np.zeros((size, size, 3), np.uint8)]).shape[1]
            target.tag = ModelTag(target.tag.name, target.tag.md5, int(dim))
        except BaseException:
            self.release(target)
            raise
        return target

    def release(self, target: Target) -> None:
        """The move's queue forgotten, so the target's session goes with the last reference."""
        self.scheduler.release(target.queue)

    def _embed(self, target: Target, aligned: list[np.ndarray]) -> np.ndarray:
        """Unit embeddings of aligned crops, batched through the scheduler as the move's jobs."""
        recognizer = target.recognizer
        max_batch = max(1, min(recognizer.max_batch, self.settings.rec_batch_size))
        stack = np.stack(aligned)
        futures = [
            self.scheduler.submit(
                target.queue,
                recognizer.infer,
                recognizer.prepare(stack[i : i + max_batch]),
                max_batch,
                owner=("reembed", self.owner),
            )
            for i in range(0, len(stack), max_batch)
        ]
        rows = np.concatenate([f.result() for f in futures]).astype(np.float32)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        if not np.isfinite(rows).all() or (norms == 0).any():
            raise FaceRestError(f"{recognizer.name} gave an embedding that is zero or not finite")
        return rows / norms

    def _embed_crops(self, target: Target, rows: list[tuple[int, FaceCrop]]) -> np.ndarray:
        aligned = []
        for face_id, crop in rows:
            try:
                pixels = crop.pixels()
            except ValueError as exc:  # a damaged picture: the move stops and says which
                raise FaceRestError(f"the crop of face {face_id} cannot be decoded: {exc}") from exc
            aligned.append(target.recognizer.align(pixels, np.asarray(crop.landmarks, np.float32)))
        return self._embed(target, aligned)

    # --- a move, in the foreground ---

    def prepare(
        self, gallery: str, model: str | None, into: str | None = None, drop_missing: bool = False
    ) -> tuple[ReembedJob, Target]:
        """The move recorded (or the gallery's unfinished move to the same target taken up) and its
        target loaded; `model` None: take up the unfinished move, whatever its target. Every
        refusal (unknown gallery or model, a recognizer that does not fit, the gallery's own model,
        `into` taken, faces that would be lost, a move under way) changes nothing."""
        info = self.store.gallery(gallery)
        if info is None:
            raise NotFound(f"no gallery {gallery!r}")
        if model is None:
            existing = self.store.reembed_job(gallery)
            if existing is None or existing.state == "done":
                raise NotFound(f"gallery {gallery!r} has no unfinished move to take up; name the model")
            model, into = existing.target.name, existing.into
            drop_missing = drop_missing or existing.drop_missing
        if into is not None and self.store.gallery(into) is not None:
            raise Conflict(f"gallery {into!r} already exists")
        target = self.load_target(model)
        try:
            if target.tag == info.model:
                raise BadInput(f"gallery {gallery!r} is built with {model} already (md5 {info.model.md5})")
            job = ReembedJob(gallery, target.tag, target.recognizer.alignment, info.model, into, drop_missing)
            job = self.store.reembed_begin(job, self.owner, self.settings.reembed_lease_s)
        except BaseException:
            self.release(target)
            raise
        log.info(
            "moving gallery %r from %s to %s (%s): %d of its faces have their new embedding",
            gallery,
            job.source.name,
            job.target.name,
            "in place" if job.into is None else f"into {job.into!r}",
            job.done,
        )
        return job, target

    def run(
        self,
        job: ReembedJob,
        target: Target,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
    ) -> ReembedJob:
        """Embed what is left, then switch; the job as it ends. With `stop` set it lets go after the
        batch in flight (the next run takes up at once). Failures are recorded on the job (kept
        resumable) and raised; a runner that lost its job (cancelled, taken up) stops quietly."""
        stop = stop or threading.Event()
        gallery, store, batch = job.gallery, self.store, self.settings.reembed_batch_size
        try:
            while True:
                for review in (False, True) if job.into is None else (False,):
                    after = 0
                    while rows := store.reembed_todo(gallery, review, after, batch):
                        if stop.is_set():
                            store.reembed_end(gallery, self.owner, None)
                            return self.status(gallery)
                        vectors = self._embed_crops(target, rows)
                        store.reembed_put(gallery, self.owner, review, [i for i, _ in rows], vectors)
                        after = rows[-1][0]
                        if progress is not None:
                            progress(self.status(gallery))
                        if self.settings.reembed_pause_s:
                            stop.wait(self.settings.reembed_pause_s)
                finished = store.reembed_finish(gallery, self.owner)
                if finished is not None:
                    log.info(
                        "gallery %r moved to %s (%s): %d faces, %d without a crop %s",
                        gallery,
                        finished.target.name,
                        "in place" if finished.into is None else f"into {finished.into!r}",
                        finished.faces,
                        finished.missing_count,
                        "left behind" if finished.into else "deleted",
                    )
                    self._changed(finished)
                    return finished
        except NotOwner as exc:
            log.info("%s", exc.detail)
            found = store.reembed_job(gallery)
            if found is None:  # cancelled, or the gallery deleted: said so, nothing stored
                job.state = "cancelled"
                return job
            return found
        except FaceRestError as exc:
            store.reembed_end(gallery, self.owner, exc.detail)
            raise
        except Exception as exc:  # a bug: recorded on the job as well, then raised
            store.reembed_end(gallery, self.owner, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if not target.own:
                self.release(target)

    # --- moves in the background (the API) ---

    def start(
        self, gallery: str, model: str | None, into: str | None = None, drop_missing: bool = False
    ) -> ReembedJob:
        """`prepare` here and `run` in a thread of its own; the job as it starts. Asked again while
        this process runs the same move, the same job (Conflict for another)."""
        with self._lock:
            running = self._threads.get(gallery)
            if running is not None and running[0].is_alive():
                job = self.status(gallery)
                if model not in (None, job.target.name) or (model is not None and into != job.into):
                    raise Conflict(
                        f"gallery {gallery!r} is being moved to {job.target.name}; "
                        f"DELETE /gallery/{gallery}/reembed cancels it"
                    )
                return job
            job, target = self.prepare(gallery, model, into, drop_missing)
            stop = threading.Event()
            thread = threading.Thread(
                target=self._background, args=(job, target, stop), name=f"reembed-{gallery[:40]}", daemon=True
            )
            self._threads[gallery] = (thread, stop)
            thread.start()
        return job

    def _background(self, job: ReembedJob, target: Target, stop: threading.Event) -> None:
        try:
            self.run(job, target, stop)
        except FaceRestError as exc:
            log.error("moving gallery %r to %s failed: %s", job.gallery, job.target.name, exc.detail)
        except Exception:
            log.exception("moving gallery %r to %s failed", job.gallery, job.target.name)
        finally:
            with self._lock:
                if self._threads.get(job.gallery, (None,))[0] is threading.current_thread():
                    del self._threads[job.gallery]

    def status(self, gallery: str) -> ReembedJob:
        job = self.store.reembed_job(gallery)
        if job is None:
            raise NotFound(f"gallery {gallery!r} has not been moved to another recognizer")
        return job

    def cancel(self, gallery: str) -> None:
        """The unfinished move and the embeddings written for it gone; the gallery as it was."""
        if not self.store.reembed_cancel(gallery):
            raise NotFound(f"gallery {gallery!r} has no unfinished move to cancel")
        running = self._threads.get(gallery)
        if running is not None:
            running[1].set()  # its next write finds the job gone, and it stops

    def resume_interrupted(self) -> threading.Thread:
        """In the background: take up every move left running whose runner has gone silent (a
        crashed server), once its lease has run out. Several workers may try; one wins each."""

        def work() -> None:
            try:
                waiting = [
                    job
                    for gallery in self.store.reembed_running()
                    if (job := self.store.reembed_job(gallery)) is not None and job.state == "running"
                ]
            except FaceRestError as exc:
                log.warning("cannot look for interrupted re-embeddings: %s", exc.detail)
                return
            for job in sorted(waiting, key=lambda j: j.updated_at):
                lease_ends = job.updated_at + self.settings.reembed_lease_s
                delay = 0.0 if job.owner is None else max(0.0, lease_ends - time.time())
                if self._closing.wait(delay + 0.05):
                    return
                try:
                    self.start(job.gallery, None)
                except Conflict:
                    continue  # another runner has it
                except FaceRestError as exc:
                    log.warning("cannot take up the move of gallery %r: %s", job.gallery, exc.detail)

        thread = threading.Thread(target=work, name="reembed-resume", daemon=True)
        thread.start()
        return thread

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the moves this process runs after their batch in flight (each stays resumable)."""
        self._closing.set()
        with self._lock:
            running = list(self._threads.values())
        for _, stop in running:
            stop.set()
        for thread, _ in running:
            thread.join(timeout_s)
