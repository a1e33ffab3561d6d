"""Retention (issue 30): the server erases what its settings say it keeps no longer, by itself.

Every FACEREST_RETENTION_INTERVAL_S (and once at start) a thread of each worker erases, through
the one deletion path (facerest/gallery/erasure.py: rows, crops, index entries, feedback, the
bytes):
- the faces enrolled without a subject for longer than FACEREST_RETENTION_UNSORTED_DAYS;
- the review items queued longer ago than FACEREST_PEOPLE_REVIEW_MAX_AGE_S (the queue also pushes
  its oldest items out as new ones arrive, by age and past FACEREST_PEOPLE_REVIEW_MAX_ITEMS, but a
  gallery nobody searches any more gets no new ones);
- the audit files older than FACEREST_ACCESS_AUDIT_KEEP_DAYS.
Several workers doing the same sweep find nothing left to do after the first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import APIRouter, FastAPI

from facerest.access.audit import AuditTrail
from facerest.api.state import AppState
from facerest.errors import StorageUnavailable
from facerest.gallery import erasure

log = logging.getLogger(__name__)


def sweep(state: AppState, trail: AuditTrail) -> None:
    """One pass; every error is logged, none stops the next pass."""
    settings = state.settings
    try:
        for path in trail.prune():
            log.info("retention: audit file %s erased", path.name)
    except OSError as exc:
        log.warning("retention: audit files could not be erased: %s", exc)
    service = state.gallery
    if service is None:
        return
    removed: list[erasure.Removed] = []
    try:
        store = service.store
        removed += erasure.expire_review(store, settings.people_review_max_age_s)
        if settings.retention_unsorted_days > 0:
            removed += erasure.expire_unsorted(
                store, service.feedback_store(), settings.retention_unsorted_days * 86_400
            )
    except StorageUnavailable:  # the gallery could not be opened: nothing to expire
        return
    except Exception:  # a database that went away: the next pass tries again
        log.exception("retention: expired faces or review items could not be erased")
    for item in removed:
        if item.faces:
            log.info("retention: %d unsorted faces of gallery %r erased", len(item.faces), item.gallery)
        if item.review:
            log.info("retention: %d review items of gallery %r erased", item.review, item.gallery)
        # no key did it: the trail says the server did
        record: dict[str, object] = {
            "key": "retention",
            "role": None,
            "action": "delete" if item.faces else "review",
            "gallery": item.gallery,
            "faces": item.faces,
            "outcome": "ok",
        }
        if item.review:
            record["review_items"] = item.review
        trail.write(record)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """After the gallery's lifespan (the router is included after it): its service is there."""
    state: AppState = app.state.facerest
    trail: AuditTrail = app.state.access.trail
    stop = threading.Event()

    def run() -> None:
        while True:
            sweep(state, trail)
            if stop.wait(state.settings.retention_interval_s):
                return

    thread = threading.Thread(target=run, name="facerest-retention", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        await anyio.to_thread.run_sync(thread.join, 30)
        trail.close()


router = APIRouter(lifespan=lifespan)
