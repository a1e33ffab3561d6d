"""`facerest gallery import | export | list | reembed | erase-subject | export-subject | compact`:
galleries from folders of photos, to and from JSON, and moved to another recognizer; a person's
data erased or exported (issue 30)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from facerest.cli.common import fail
from facerest.config import Settings
from facerest.errors import FaceRestError, ModelMismatch

app = typer.Typer(
    help="Face galleries: import folders of photos, export, list, move to another recognizer.",
    no_args_is_help=True,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
#: images enrolled per call (one transaction each), enough to fill the recognizer's batches
CHUNK = 16


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    )


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from facerest.gallery import gallery_url, index_options, open_store

    return open_store(gallery_url(settings), index_options(settings))


def _service(settings: Settings):  # type: ignore[no-untyped-def]
    from facerest.gallery.service import GalleryService
    from facerest.pipeline import FaceAnalyzer
    from facerest.preparation import load_models

    analyzer = FaceAnalyzer(load_models(settings), settings)
    return GalleryService(_store(settings), analyzer, settings)


@app.command("import")
def import_(
    source: Path = typer.Argument(
        ..., help="A folder with one subfolder of photos per subject, or an export file."
    ),
    gallery: str = typer.Option(..., "--gallery", "-g", help="Gallery to enrol into (created if new)."),
    all_faces: bool = typer.Option(False, help="Enrol every face of each photo, not only the largest."),
) -> None:
    """Enrol every subject folder of SOURCE (or every face of a `gallery export` file)."""
    from facerest.imaging.decode import decode_image

    settings = Settings()
    if not source.exists():
        fail(f"{source} does not exist")
    try:
        service = _service(settings)
    except FaceRestError as exc:
        fail(exc.detail)
    added = failed = 0
    try:
        if source.is_file():
            added = _import_export_file(service, source, gallery)
        else:
            work = [
                (folder.name, sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
                for folder in sorted(source.iterdir())
                if folder.is_dir()
            ]
            total = sum(len(files) for _, files in work)
            if total == 0:
                fail(f"no photos in subfolders of {source} (one subfolder per subject)")
            with _progress() as progress:
                task = progress.add_task(f"enrolling into {gallery}", total=total)
                for subject, files in work:
                    for start in range(0, len(files), CHUNK):
                        chunk = files[start : start + CHUNK]
                        images = []
                        for path in chunk:
                            try:
                                images.append(
                                    decode_image(path.read_bytes(), max_pixels=settings.max_image_pixels)
                                )
                            except FaceRestError as exc:
                                images.append(exc)
                        done = service.enrol(gallery, subject, images, all_faces=all_faces)
                        added += len(done.added)
                        for index, detail in done.failed:
                            failed += 1
                            progress.console.print(
                                f"skipped {chunk[index].relative_to(source)}: {detail}",
                                soft_wrap=True,
                                markup=False,
                                style="yellow",
                            )
                        progress.advance(task, len(chunk))
    except FaceRestError as exc:
        fail(exc.detail)
    finally:
        service.close()
        service.analyzer.close()
    typer.echo(f"{added} faces enrolled into {gallery!r}; {failed} photos skipped")


def _import_export_file(service, path: Path, gallery: str) -> int:  # type: ignore[no-untyped-def]
    data = json.loads(path.read_text("utf-8"))
    model = service.model
    if model is not None and (data.get("model"), data.get("model_md5")) != (model.name, model.md5):
        raise ModelMismatch(
            f"{path} holds embeddings of {data.get('model')} (md5 {data.get('model_md5')}); "
            f"this server runs {model.name} (md5 {model.md5})"
        )
    added = 0
    with _progress() as progress:
        task = progress.add_task(f"importing into {gallery}", total=len(data["subjects"]))
        for subject in data["subjects"]:
            vectors = [face["embedding"] for face in subject["faces"]]
            added += len(service.enrol(gallery, subject["subject"], embeddings=vectors).added)
            progress.advance(task)
    return added


@app.command()
def export(
    gallery: str = typer.Argument(..., help="Gallery to export."),
    output: Path = typer.Option(..., "--output", "-o", help="JSON file to write."),
) -> None:
    """Write every subject and face of GALLERY, with embeddings, to a JSON file."""
    settings = Settings()
    store = _store(settings)
    try:
        info = store.gallery(gallery)
        if info is None:
            fail(f"no gallery {gallery!r}")
            return
        subjects = []
        with _progress() as progress:
            names = store.subjects(gallery)
            task = progress.add_task(f"exporting {gallery}", total=len(names))
            for subject, _ in names:
                faces = store.faces(gallery, subject, with_embeddings=True)
                subjects.append(
                    {
                        "subject": subject,
                        "faces": [
                            {
                                "face_id": f.face_id,
                                "bbox": f.bbox,
                                "prob": f.prob,
                                "image_hash": f.image_hash,
                                "added_at": f.added_at,
                                "embedding": [round(float(v), 7) for v in f.embedding],  # type: ignore[union-attr]
                            }
                            for f in faces
                        ],
                    }
                )
                progress.advance(task)
    finally:
        store.close()
    body = {
        "gallery": gallery,
        "model": info.model.name,
        "model_md5": info.model.md5,
        "dim": info.model.dim,
        "subjects": subjects,
    }
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text(json.dumps(body), "utf-8")
    tmp.replace(output)
    typer.echo(f"{info.faces} faces of {info.subjects} subjects written to {output}")


@app.command("list")
def list_() -> None:
    """Every gallery: model, subjects, faces."""
    store = _store(Settings())
    try:
        for g in store.galleries():
            typer.echo(f"{g.name}\t{g.model.name}\t{g.subjects} subjects\t{g.faces} faces")
    finally:
        store.close()


@app.command()
def reembed(
    gallery: str = typer.Argument(..., help="Gallery to move."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Recognizer to move to (catalogue name); absent: take up the last move."
    ),
    into: str | None = typer.Option(None, "--into", help="Make this new gallery instead of moving in place."),
    drop_missing: bool = typer.Option(
        False, "--drop-missing", help="In place: delete the faces that keep no picture to embed again."
    ),
    status: bool = typer.Option(False, "--status", help="Only say how the gallery's move is going."),
    cancel: bool = typer.Option(False, "--cancel", help="Cancel the unfinished move (the gallery stays)."),
) -> None:
    """Embed every face of GALLERY again with another recognizer, from the picture each face keeps.

    Searches (of a server on the same storage) answer from the old model until the switch. Stopped
    (Ctrl-C) or crashed, the next run takes up where it was; faces without a picture are listed.
    """
    from facerest.gallery.reembed import Reembedder, shown_state
    from facerest.gallery.service import check_name
    from facerest.pipeline.scheduler import InferenceScheduler

    settings = Settings()
    store = _store(settings)
    scheduler = InferenceScheduler()
    mover = Reembedder(lambda: store, settings, scheduler)
    try:
        if status or cancel:
            if cancel:
                mover.cancel(gallery)
                typer.echo(f"the move of {gallery!r} is cancelled; the gallery is as it was")
            else:
                job = mover.status(gallery)
                _print_move(job, shown_state(job, settings.reembed_lease_s))
            return
        if into is not None:
            check_name("gallery", into)
        job, target = mover.prepare(gallery, model, into, drop_missing)
        if job.missing_count:
            fate = "stay in the gallery, not in the new one" if job.into else "will be deleted at the switch"
            missing = _ids(job.missing, job.missing_count)
            typer.secho(
                f"{job.missing_count} faces keep no picture and {fate}: {missing}",
                fg=typer.colors.YELLOW,
                err=True,
            )
        with _progress() as progress:
            what = f"{gallery} -> {job.target.name}" + (f" into {job.into}" if job.into else "")
            task = progress.add_task(what, total=max(job.faces, job.done, 1), completed=job.done)

            def advance(now) -> None:  # type: ignore[no-untyped-def]
                progress.update(task, total=max(now.faces, now.done, 1), completed=now.done)

            try:
                done = mover.run(job, target, progress=advance)
            except KeyboardInterrupt:
                store.reembed_end(gallery, mover.owner, None)
                fail(f"stopped; `facerest gallery reembed {gallery}` takes up where it was")
                return
        _print_move(done, shown_state(done, settings.reembed_lease_s))
    except FaceRestError as exc:
        fail(exc.detail)
    finally:
        scheduler.close()
        store.close()


def _ids(ids: list[int], count: int) -> str:
    return ", ".join(map(str, ids)) + (f" and {count - len(ids)} more" if count > len(ids) else "")


def _print_move(job, state: str) -> None:  # type: ignore[no-untyped-def]
    where = "in place" if job.into is None else f"into {job.into!r}"
    typer.echo(
        f"{job.gallery}: {state}, {job.source.name} -> {job.target.name} ({job.target.dim} dims, "
        f"{job.alignment} alignment) {where}; {job.done}/{job.faces} faces"
    )
    if job.missing_count:
        typer.echo(f"faces without a picture: {_ids(job.missing, job.missing_count)}")
    if job.review_dropped:
        typer.echo(f"review items without a picture deleted: {job.review_dropped}")
    if job.error:
        typer.echo(f"error: {job.error}")


# --- a person's data: erase it, export it (issue 30) ---


def _feedback(settings: Settings):  # type: ignore[no-untyped-def]
    from facerest.gallery.people import FeedbackStore

    path = settings.data_dir / "people.db"
    return FeedbackStore(path) if path.exists() else None


def _audit(settings: Settings, record: dict) -> None:  # type: ignore[type-arg]
    """What the command did, in the audit trail, as the key "cli" (no key is used here)."""
    from facerest.access.audit import AuditTrail

    trail = AuditTrail.from_settings(settings)
    try:
        trail.write({"key": "cli", "role": "admin", **record})
    finally:
        trail.close()


@app.command("erase-subject")
def erase_subject(
    gallery: str = typer.Argument(..., help="The gallery."),
    subject: str = typer.Argument(..., help="The subject to erase."),
    vacuum: bool = typer.Option(
        False, help="SQLite: also rewrite the whole file (space freed before secure_delete was on)."
    ),
) -> None:
    """Erase a person: every face (embedding, crop, index entry), the review items that are likely
    their face (the others lose the name), the feedback naming them, and their bytes from the
    files (PostgreSQL: VACUUM FULL of facerest's tables). Prints what went."""
    from facerest.access.audit import AuditTrail
    from facerest.gallery import erasure
    from facerest.gallery.service import same_person_threshold

    settings = Settings()
    store = _store(settings)
    feedback = _feedback(settings)
    try:
        info = store.gallery(gallery)
        if info is None:
            fail(f"no gallery {gallery!r}")
            return
        same = same_person_threshold(settings, info.model.name)
        removed = erasure.erase_subject(store, feedback, gallery, subject, same, vacuum=vacuum)
    except FaceRestError as exc:
        fail(exc.detail)
        return
    finally:
        store.close()
        if feedback is not None:
            feedback.close()
    trail = AuditTrail.from_settings(settings)
    _audit(
        settings,
        {
            "action": "delete",
            "gallery": gallery,
            "subjects": trail.pseudonyms([subject]) if removed.faces else [],
            "faces": removed.faces,
            "outcome": "ok" if removed.faces else "not_found",
        },
    )
    if not removed.faces:
        typer.echo(f"no subject {subject!r} in gallery {gallery!r}; nothing held about it was left")
    else:
        ids = ", ".join(str(i) for i in removed.faces)
        typer.echo(f"erased {len(removed.faces)} faces of {subject!r} from {gallery!r}: {ids}")
    typer.echo(f"feedback rows naming them: {removed.feedback}")
    typer.echo(
        f"review items: {removed.review} erased (scored {same:.3f} or more: likely their face), "
        f"{removed.review_cleaned} without the name"
    )
    for step in removed.erased:
        typer.echo(f"erased from disk: {step}")


@app.command("export-subject")
def export_subject(
    gallery: str = typer.Argument(..., help="The gallery."),
    subject: str = typer.Argument(..., help="The subject."),
    output: Path = typer.Option(..., "--output", "-o", help="JSON file to write."),
    audit: bool = typer.Option(True, help="Add the audit records about the subject (who looked them up)."),
) -> None:
    """Everything held about one person (a data-subject access export): faces with embeddings and
    where they came from, the feedback naming them, and the audit records about them."""
    from facerest.access.audit import AuditTrail, audit_dir, load_secret, pseudonym, records
    from facerest.gallery import erasure

    settings = Settings()
    store = _store(settings)
    feedback = _feedback(settings)
    try:
        if store.gallery(gallery) is None:
            fail(f"no gallery {gallery!r}")
        body = erasure.export_subject(store, feedback, gallery, subject)
    finally:
        store.close()
        if feedback is not None:
            feedback.close()
    if not body["faces"]:
        fail(f"no subject {subject!r} in gallery {gallery!r}")
    if audit:
        secret = load_secret(audit_dir(settings), create=False)
        wanted = None if secret is None else pseudonym(secret, subject)
        body["audit"] = [
            {**r, "subjects": [subject], "candidates": []}
            for r in records(audit_dir(settings))
            if wanted is not None and wanted in (r.get("subjects") or [])
        ]
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text(json.dumps(body), "utf-8")
    tmp.replace(output)
    trail = AuditTrail.from_settings(settings)
    faces = [f["face_id"] for f in body["faces"]]
    _audit(
        settings,
        {
            "action": "export",
            "gallery": gallery,
            "subjects": trail.pseudonyms([subject]),
            "faces": faces,
            "outcome": "ok",
        },
    )
    typer.echo(f"{len(faces)} faces of {subject!r} written to {output}")


@app.command()
def compact(
    vacuum: bool = typer.Option(True, help="SQLite: rewrite the whole file too (VACUUM)."),
) -> None:
    """Make the bytes of everything deleted so far gone from the gallery's files (PostgreSQL:
    VACUUM FULL of facerest's tables, which locks each while it is rewritten)."""
    settings = Settings()
    store = _store(settings)
    feedback = _feedback(settings)
    try:
        steps = store.erase_deleted(vacuum=vacuum) + (
            feedback.erase_deleted() if feedback is not None else []
        )
    finally:
        store.close()
        if feedback is not None:
            feedback.close()
    for step in steps:
        typer.echo(step)
