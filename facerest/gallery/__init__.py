"""Face galleries: subjects with enrolled faces, 1:N identification and 1:1 verification."""

from __future__ import annotations

from pathlib import Path

from facerest.config import Settings
from facerest.errors import BackendUnavailable
from facerest.gallery.index import IndexOptions, candidates_for_recall, ef_for_recall
from facerest.gallery.store import GalleryStore


def gallery_url(settings: Settings) -> str:
    """The storage URL in force: FACEREST_GALLERY_URL, or SQLite in the data folder."""
    return settings.gallery_url or f"sqlite:///{(settings.data_dir / 'gallery.db').resolve()}"


def index_options(settings: Settings) -> IndexOptions:
    """How galleries are indexed and how broadly the index is searched, from the settings."""
    return IndexOptions(
        min_faces=settings.gallery_index_min_faces,
        bits=settings.gallery_index_bits,
        scan_threads=settings.gallery_index_scan_threads,
        candidates=candidates_for_recall(settings.gallery_recall),
        pg_ef_search=ef_for_recall(settings.gallery_recall),
        pg_hnsw=settings.gallery_pg_hnsw,
        pg_codes=settings.gallery_pg_codes,
        pg_build_memory_mb=settings.gallery_index_build_memory_mb,
    )


def open_store(url: str, options: IndexOptions | None = None) -> GalleryStore:
    """sqlite:///PATH (a relative PATH after three slashes, an absolute one after four) or postgresql://..."""
    options = options or IndexOptions()
    if url.startswith("sqlite:///"):
        from facerest.gallery.sqlite import SQLiteStore

        return SQLiteStore(Path(url.removeprefix("sqlite:///")), options)
    if url.startswith(("postgresql://", "postgres://")):
        from facerest.gallery.postgres import PostgresStore

        return PostgresStore(url, options)
    raise BackendUnavailable(
        f"FACEREST_GALLERY_URL must start with sqlite:/// or postgresql://, not {url.split(':')[0]!r}"
    )
