"""Write a Triton Inference Server model repository for the configured models.

Layout: `<dir>/<model name>/config.pbtxt` and `<dir>/<model name>/1/model.onnx`, one folder per
ONNX file (a model with two files, like age_gender_dlib, gives `<name>` and `<name>_1`: the names
the Triton runtime asks for). Configs are built with Triton's own protobuf schema, so what is
written is what Triton parses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from google.protobuf import text_format

from facerest.errors import BackendUnavailable
from facerest.models.store import ModelStore

if TYPE_CHECKING:
    from facerest.config import Settings
    from facerest.models.catalog import CatalogEntry

log = logging.getLogger(__name__)

_TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
}


def _config_schema():  # type: ignore[no-untyped-def]
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise BackendUnavailable(
            f"writing Triton configs needs the Triton client ({exc}); install `facerest[triton]`"
        ) from exc
    return model_config_pb2


@dataclass(frozen=True, slots=True)
class ExportedModel:
    name: str
    path: Path
    max_batch_size: int


def _dims(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initialisers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initialisers]


def batchable(model: onnx.ModelProto) -> bool:
    """The graph runs any batch *and* every output carries it on axis 0.

    A dynamic first input axis is not enough: InsightFace's own SCRFD exports take [N, 3, H, W]
    but answer [rows, 1] per stride (rows of all images together, no batch axis); Triton would
    then split rows, not images, between the requests of a batch. So the graph is run at batch 1
    and 2 and each output's first axis must follow.
    """
    first = _graph_inputs(model)[0].type.tensor_type.shape.dim
    if len(first) == 0 or first[0].HasField("dim_value"):
        return False
    return all(a == 1 and b == 2 for a, b in output_batch_axes(model))


def output_batch_axes(model: onnx.ModelProto) -> list[tuple[int, int]]:
    """Each output's first axis when the graph runs at batch 1 and at batch 2 (dynamic sides 64)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rows: list[list[int]] = []
    for batch in (1, 2):
        feeds = {}
        for arg in session.get_inputs():
            shape = [
                batch if axis == 0 else (d if isinstance(d, int) else 64) for axis, d in enumerate(arg.shape)
            ]
            dtype = np.uint8 if arg.type == "tensor(uint8)" else np.float32
            feeds[arg.name] = np.zeros(shape, dtype)
        rows.append([out.shape[0] if out.ndim else 0 for out in session.run(None, feeds)])
    return list(zip(rows[0], rows[1], strict=True))


def with_dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with the first axis of every input and output declared dynamic.

    Some converted recognizers declare an output batch of 1 although they compute any batch;
    Triton checks declared shapes against max_batch_size and would refuse them.
    """
    for value in [*_graph_inputs(model), *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    return model


def model_config(name: str, model: onnx.ModelProto, *, max_batch_size: int, settings: Settings) -> str:
    """config.pbtxt text for one ONNX model on Triton's onnxruntime backend."""
    pb = _config_schema()
    config = pb.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    skip = 1 if max_batch_size > 0 else 0  # with batching, dims leave out the batch axis
    for target, values in ((config.input, _graph_inputs(model)), (config.output, model.graph.output)):
        for value in values:
            elem = value.type.tensor_type.elem_type
            if elem not in _TRITON_TYPES:
                raise BackendUnavailable(f"{name}: tensor {value.name} has a type Triton export does not map")
            target.add(name=value.name, data_type=_TRITON_TYPES[elem], dims=_dims(value)[skip:])
    if max_batch_size > 1:
        config.dynamic_batching.max_queue_delay_microseconds = settings.triton_queue_delay_us
    group = config.instance_group.add(count=settings.triton_instances)
    if settings.gpus:
        group.kind = pb.ModelInstanceGroup.KIND_GPU
        group.gpus.extend(settings.gpus)
    else:
        group.kind = pb.ModelInstanceGroup.KIND_CPU
    return text_format.MessageToString(config)


def batch_size_for(entry: CatalogEntry, settings: Settings) -> int:
    return settings.det_batch_size if entry.task == "detection" else settings.rec_batch_size


def export_repository(
    directory: Path, settings: Settings, prepared: dict[str, list[Path]]
) -> list[ExportedModel]:
    """Write every prepared model (name -> its files, from facerest.preparation.prepare_models) into
    `directory` (created; existing models are replaced)."""
    store = ModelStore(settings.models_dir)
    exported = []
    for model_name, paths in prepared.items():
        entry = store.entry(model_name)
        for index, path in enumerate(paths):
            name = model_name if index == 0 else f"{model_name}_{index}"
            model = onnx.load(str(path))
            max_batch = batch_size_for(entry, settings) if batchable(model) and entry.allow_batching else 0
            if max_batch:
                model = with_dynamic_batch(model)
            folder = directory / name
            (folder / "1").mkdir(parents=True, exist_ok=True)
            onnx.save(model, str(folder / "1" / "model.onnx"))
            config = model_config(name, model, max_batch_size=max_batch, settings=settings)
            (folder / "config.pbtxt").write_text(config, encoding="utf-8")
            log.info("exported %s (max batch %d) to %s", name, max_batch, folder)
            exported.append(ExportedModel(name, folder, max_batch))
    return exported
