"""ONNX graph surgery, in memory: batch dimension, detector input size, initializers as inputs.

Every function changes the ModelProto it is given and returns it; nothing touches the disk but
`load` and `save`, and no temporary file is written.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from facerest.errors import ModelError

BatchDim = int | str  # a fixed size, or "dynamic" (or any symbolic name)


def load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises protobuf's DecodeError and others, untyped
        raise ModelError(f"{path} is not a readable ONNX file: {exc}") from exc


def save(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".writing")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)


def to_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def _data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    weights = {init.name for init in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in weights]


def _set_dim(dim: onnx.TensorShapeProto.Dimension, value: BatchDim) -> None:
    if isinstance(value, int):
        dim.ClearField("dim_param")
        dim.dim_value = value
    else:
        dim.ClearField("dim_value")
        dim.dim_param = "batch" if value == "dynamic" else value


def remove_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop graph inputs that are really weights (old exporters list them; TensorRT and ORT's
    optimiser then treat the weights as overridable and skip constant folding)."""
    weights = {init.name for init in model.graph.initializer}
    keep = [v for v in model.graph.input if v.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def set_batch(model: onnx.ModelProto, batch: BatchDim) -> onnx.ModelProto:
    """Set the first dimension of every input and output to `batch` (a size, or "dynamic").

    Outputs too: graphs like w600k_mbf declare `[1, 512]` outputs although they compute any batch,
    which makes runtimes warn, or refuse batched calls (TensorRT).
    """
    if isinstance(batch, int) and batch < 1:
        raise ModelError(f"a batch size must be at least 1, not {batch}")
    for value in [*_data_inputs(model), *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0:
            _set_dim(dims[0], batch)
    # intermediate shapes stored by an earlier shape inference would contradict the new batch
    del model.graph.value_info[:]
    return model


def set_input_size(model: onnx.ModelProto, width: int, height: int) -> onnx.ModelProto:
    """Fix a detector's input to (height, width); spatial output dims become symbolic."""
    if width < 32 or height < 32 or width % 32 or height % 32:
        raise ModelError(f"detector input sides must be multiples of 32 (at least 32), not {width}x{height}")
    inputs = _data_inputs(model)
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise ModelError("set_input_size needs a graph with one 4-D image input")
    dims = inputs[0].type.tensor_type.shape.dim
    nhwc = dims[3].dim_value == 3 and dims[1].dim_value != 3
    h_dim, w_dim = (dims[1], dims[2]) if nhwc else (dims[2], dims[3])
    _set_dim(h_dim, height)
    _set_dim(w_dim, width)
    # feature-map sizes follow the input: [N, C, H, W] maps and [N, rows, C] anchor lists
    spatial = {4: (2, 3), 3: (1,)}
    for output in model.graph.output:
        out_dims = output.type.tensor_type.shape.dim
        for i in spatial.get(len(out_dims), ()):
            _set_dim(out_dims[i], f"{output.name}_d{i}")
    del model.graph.value_info[:]
    return model
