"""MXNet checkpoints (PREFIX-symbol.json + PREFIX-EPOCH.params) -> ONNX, registered in the models folder.

MXNet 1.9.1 needs numpy<1.24, which the service's environment must not be held to, so the export
runs in a virtualenv of its own (`make mxnet-env`, or created here on first use) through
`mxnet_worker.py` as a subprocess. This side, in the service's environment, repairs what
MXNet's exporter gets wrong for the InsightFace-era models, checks ONNX Runtime against MXNet on
the same random input, and registers the result so it is usable by name.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facerest.errors import ModelError
from facerest.models.catalog import Catalog, CatalogEntry, ModelFile
from facerest.models.store import CUSTOM_DIR, md5_of

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

#: what the MXNet environment holds; numpy 1.23.5 is the last with wheels for Python 3.11 that
#: MXNet 1.9.1 runs on (it uses aliases numpy 1.24 removed); onnx 1.14.1 still has onnx.mapping,
#: which MXNet's exporter imports, and installs against that numpy; protobuf 3.20 is what it reads.
MXNET_REQUIREMENTS = ["mxnet==1.9.1", "numpy==1.23.5", "onnx==1.14.1", "protobuf==3.20.3"]
MXNET_PYTHON = "python3.11"
WORKER = Path(__file__).with_name("mxnet_worker.py")
#: folder under the models folder whose <name>/ sub-folders are converted at start
DROP_DIR = "mxnet"
CONVERTED_MARKER = ".converted"
#: ONNX Runtime may differ from MXNet by float rounding only: this much, relative to the output's scale
TOLERANCE = 1e-3


class ConversionError(ModelError):
    code = "conversion_failed"


@dataclass(slots=True)
class ConversionReport:
    name: str
    path: Path
    input_shape: list[int]
    max_abs_diff: float
    outputs: list[str]
    repairs: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --- the MXNet environment ---


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


def _marker(env: Path) -> Path:
    return env / ".installed"


def env_ready(env: Path) -> bool:
    """True when the environment holds today's requirements (a marker written after pip succeeded)."""
    marker = _marker(env)
    return env_python(env).is_file() and marker.is_file() and marker.read_text().split() == MXNET_REQUIREMENTS


def ensure_env(env: Path, *, create: bool = True, timeout_s: float = 900) -> Path:
    """The Python of the MXNet environment, creating the environment when it is missing."""
    if env_ready(env):
        return env_python(env)
    if not create:
        raise ConversionError(f"the MXNet environment {env} does not exist; create it with `make mxnet-env`")
    base = shutil.which(MXNET_PYTHON) or (sys.executable if sys.version_info[:2] == (3, 11) else None)
    if base is None:
        raise ConversionError(
            f"creating the MXNet environment needs {MXNET_PYTHON} (MXNet 1.9.1 runs with numpy<1.24, "
            "which has no wheels for newer Pythons); install it or point FACEREST_MXNET_ENV at an "
            "environment holding " + " ".join(MXNET_REQUIREMENTS)
        )
    log.warning(
        "creating the MXNet environment in %s (%s); this downloads about 100 MB once",
        env,
        " ".join(MXNET_REQUIREMENTS),
    )
    steps = [] if env_python(env).is_file() else [[base, "-m", "venv", str(env)]]
    steps.append([str(env_python(env)), "-m", "pip", "install", "--quiet", *MXNET_REQUIREMENTS])
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConversionError(f"could not create the MXNet environment {env}: {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise ConversionError(
                f"could not create the MXNet environment {env} ({' '.join(step[:4])}...): {' | '.join(tail)}"
            )
    _marker(env).write_text("\n".join(MXNET_REQUIREMENTS) + "\n")
    return env_python(env)


# --- graph repairs ---


def repair_graph(model: onnx.ModelProto) -> list[str]:
    """Fix what MXNet's exporter gets wrong for these models, in place; says what was changed."""
    from onnx import numpy_helper

    repairs: list[str] = []
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}

    # weights listed as graph inputs too: ONNX Runtime then cannot fold them as constants
    weights_as_inputs = [i for i in graph.input if i.name in initializers]
    for value in weights_as_inputs:
        graph.input.remove(value)
    if weights_as_inputs:
        repairs.append(f"removed {len(weights_as_inputs)} weights from the graph inputs")

    # the batch dimension: named, so every runtime treats it as dynamic
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_param and dims[0].dim_value in (0, 1):
            dims[0].Clear()
            dims[0].dim_param = "batch"
            repairs.append(f"dynamic batch on {value.name}")

    # BatchNormalization: `spatial` was removed in opset 9 and ONNX Runtime rejects it
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            kept = [a for a in node.attribute if a.name != "spatial"]
            if len(kept) != len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(kept)
                repairs.append(f"dropped `spatial` from {node.name}")

    # PReLU slopes come out with shape (C,): ONNX broadcasts from the last axis, so on (N, C, H, W)
    # they must be (C, 1, 1) to apply per channel
    ranks = _ranks(model)
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in initializers:
            continue
        slope = initializers[node.input[1]]
        rank = ranks.get(node.input[0])
        if len(slope.dims) == 1 and slope.dims[0] > 1 and rank is not None and rank > 2:
            values = numpy_helper.to_array(slope).reshape(-1, *([1] * (rank - 2)))
            slope.CopyFrom(numpy_helper.from_array(values, slope.name))
            repairs.append(f"PReLU slope {slope.name} -> {list(values.shape)}")
    return repairs


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor shape inference can tell (the PReLU fix needs its input's rank)."""
    import onnx

    # the slopes are still (C,) here, which inference does not mind; a failure leaves ranks unknown
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises several untyped errors on odd graphs
        log.warning("shape inference failed (%s); PReLU slopes left as they are", exc)
        return {}
    ranks = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks


# --- checking and registering ---


def compare_with_mxnet(onnx_path: Path, check: Path) -> float:
    """Largest absolute difference between ONNX Runtime's outputs and MXNet's on the same input."""
    from facerest.runtime.onnx import OnnxSession

    reference = np.load(check)
    session = OnnxSession(onnx_path)
    outputs = session.run({session.inputs[0].name: reference["input"]})
    expected = [reference[f"output_{i}"] for i in range(len(reference.files) - 1)]
    got = list(outputs.values())
    if len(got) != len(expected):
        raise ConversionError(f"the ONNX graph has {len(got)} outputs, MXNet's {len(expected)}")
    worst = 0.0
    for index, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        if ours.shape != theirs.shape:
            raise ConversionError(f"output {index}: ONNX shape {ours.shape}, MXNet {theirs.shape}")
        diff = float(np.abs(ours - theirs).max()) if ours.size else 0.0
        worst = max(worst, diff)
        if diff > TOLERANCE * max(1.0, float(np.abs(theirs).max())):
            raise ConversionError(
                f"ONNX Runtime and MXNet disagree on output {index}: max abs diff {diff:.3g}"
            )
    return worst


def register(
    onnx_path: Path,
    name: str,
    models_dir: Path,
    *,
    input_shape: list[int],
    task: str | None = None,
    family: str | None = None,
) -> Path:
    """Place the model where the store finds it by `name`; returns its final path.

    With a task and family (given, or from the catalogue entry of that name) it gets its own folder
    and an entry in `<models>/catalog.json` (which overrides the packaged catalogue, md5 included);
    otherwise it goes to `<models>/custom/<name>.onnx`, routed by inspecting the graph.
    """
    override = models_dir / "catalog.json"
    known = Catalog.load(override).get(name)
    task = task or (known.task if known else None)
    family = family or (known.family if known else None)
    if task is None or family is None:
        target = models_dir / CUSTOM_DIR / f"{name}.onnx"
        _install(onnx_path, target)
        return target
    file_name = known.main_file.name if known and len(known.files) == 1 else f"{name}.onnx"
    target = models_dir / name / file_name
    _install(onnx_path, target)
    # only what the known entry states: an unstated normalisation is then read from the graph
    base = known.model_dump(exclude_unset=True) if known else {"name": name}
    base.update(
        task=task,
        family=family,
        input_shape=input_shape,
        files=[ModelFile(name=file_name, md5=md5_of(target), size=target.stat().st_size).model_dump()],
        notes=f"converted from MXNet by facerest on {time.strftime('%Y-%m-%d')}",
    )
    entry = CatalogEntry.model_validate(base)
    data = json.loads(override.read_text("utf-8")) if override.is_file() else {"models": []}
    data["models"] = [m for m in data.get("models", []) if m.get("name") != name]
    data["models"].append(entry.model_dump(mode="json", exclude_unset=True))
    tmp = override.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", "utf-8")
    tmp.replace(override)
    return target


def _install(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


def default_input_shape(name: str, entry: CatalogEntry | None = None) -> list[int]:
    """The shape to export with: the catalogue's, else 640x640 for detectors, 112x112 for face models."""
    if entry is not None and entry.input_shape:
        return [1, *entry.input_shape[1:]]
    detector_names = ("retina", "mnet", "det")
    if (entry is not None and entry.task == "detection") or any(k in name.lower() for k in detector_names):
        return [1, 3, 640, 640]
    return [1, 3, 112, 112]


def convert(
    prefix: Path,
    epoch: int,
    name: str,
    models_dir: Path,
    env: Path,
    *,
    input_shape: list[int] | None = None,
    task: str | None = None,
    family: str | None = None,
    create_env: bool = True,
    timeout_s: float = 600,
) -> ConversionReport:
    """Export PREFIX-symbol.json + PREFIX-EPOCH.params to ONNX, repair, check, and register as `name`."""
    import onnx

    started = time.perf_counter()
    symbol = Path(f"{prefix}-symbol.json")
    params = Path(f"{prefix}-{epoch:04d}.params")
    for path in (symbol, params):
        if not path.is_file():
            raise ConversionError(
                f"{path} does not exist (expected PREFIX-symbol.json and PREFIX-EPOCH.params)"
            )
    if input_shape is None:
        input_shape = default_input_shape(name, Catalog.load(models_dir / "catalog.json").get(name))
    python = ensure_env(env, create=create_env)
    with tempfile.TemporaryDirectory(prefix="mxnet-convert-") as tmp:
        raw, check = Path(tmp) / "exported.onnx", Path(tmp) / "check.npz"
        command = [
            str(python),
            str(WORKER),
            str(prefix),
            str(epoch),
            "--shape",
            ",".join(str(v) for v in input_shape),
            "--onnx",
            str(raw),
            "--check",
            str(check),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ConversionError(f"exporting {prefix} took longer than {timeout_s} s") from exc
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-4:])
            raise ConversionError(f"MXNet could not export {prefix} (epoch {epoch}): {tail}")
        exported = json.loads(done.stdout.strip().splitlines()[-1])
        model = onnx.load(str(raw))
        repairs = repair_graph(model)
        repairs += [f"BatchNorm {g} fix_gamma: gamma set to 1" for g in exported["fixed_gamma"]]
        fixed = Path(tmp) / f"{name}.onnx"
        onnx.save(model, str(fixed))
        diff = compare_with_mxnet(fixed, check)
        target = register(fixed, name, models_dir, input_shape=input_shape, task=task, family=family)
    report = ConversionReport(
        name, target, input_shape, diff, exported["outputs"], repairs, time.perf_counter() - started
    )
    log.info("converted %s-%04d to %s (max abs diff vs MXNet %.3g)", prefix, epoch, target, diff)
    return report


def checkpoint_in(folder: Path) -> tuple[Path, int] | None:
    """(prefix, epoch) of the checkpoint in `folder` (the highest epoch if several), if any."""
    for symbol in sorted(folder.glob("*-symbol.json")):
        prefix = symbol.with_name(symbol.name.removesuffix("-symbol.json"))
        epochs = sorted(
            int(p.stem.rsplit("-", 1)[1])
            for p in folder.glob(f"{prefix.name}-*.params")
            if p.stem.rsplit("-", 1)[1].isdigit()
        )
        if epochs:
            return prefix, epochs[-1]
    return None


def convert_dropped_models(models_dir: Path, env: Path) -> list[ConversionReport]:
    """Convert each `<models>/mxnet/<name>/` checkpoint not converted yet, when the MXNet env exists.

    Called at start; a model that fails to convert is logged and skipped, never stops the server.
    """
    drop = models_dir / DROP_DIR
    if not drop.is_dir() or not env_ready(env):
        if drop.is_dir() and any(drop.iterdir()):
            log.warning("MXNet checkpoints in %s are not converted: no MXNet environment at %s", drop, env)
        return []
    reports = []
    for folder in sorted(p for p in drop.iterdir() if p.is_dir()):
        found = checkpoint_in(folder)
        if found is None or _converted(folder, *found):
            continue
        try:
            report = convert(found[0], found[1], folder.name, models_dir, env, create_env=False)
        except ModelError as exc:
            log.error("MXNet checkpoint %s not converted: %s", folder, exc.detail)
            continue
        (folder / CONVERTED_MARKER).write_text(f"{report.path}\n")
        reports.append(report)
    return reports


def _converted(folder: Path, prefix: Path, epoch: int) -> bool:
    """Converted already: the marker is newer than the checkpoint and the ONNX file it names exists."""
    marker = folder / CONVERTED_MARKER
    if not marker.is_file():
        return False
    params = Path(f"{prefix}-{epoch:04d}.params")
    return marker.stat().st_mtime >= params.stat().st_mtime and Path(marker.read_text().strip()).is_file()


if __name__ == "__main__":  # `make mxnet-env`: python -m facerest.tools.mxnet_convert [ENV]
    print(ensure_env(Path(sys.argv[1] if len(sys.argv) > 1 else ".venv-mxnet")))
