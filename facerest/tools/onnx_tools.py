"""ONNX graph surgery, in memory: batch dimension, detector input size, initializers as inputs,
constant weights folded (quantised zoo exports).

Every function changes the ModelProto it is given and returns it; nothing touches the disk but
`load` and `save`, and no temporary file is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

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


def remove_unused_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop graph inputs that no node reads. OpenCV Zoo's block-quantised exports (SFace int8bq)
    keep each original weight as a graph input beside its quantised replacement: ONNX Runtime then
    asks the caller to feed them."""
    used = {name for node in model.graph.node for name in node.input}
    used |= {output.name for output in model.graph.output}
    keep = [v for v in model.graph.input if v.name in used]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def _dequantize(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int
) -> np.ndarray:
    """DequantizeLinear as ONNX Runtime computes it: (int32(x) - int32(zero)) * scale, in float32;
    scale (and zero) per tensor, per axis, or per block of `block` elements along `axis` (opset 21)."""
    zero = np.zeros_like(scale, dtype=np.int32) if zero is None else zero.astype(np.int32)
    if scale.size > 1:
        axis = axis % x.ndim
        if block > 0:  # one scale per `block` elements along the axis: spread them out
            scale = np.repeat(scale, block, axis=axis).take(range(x.shape[axis]), axis=axis)
            zero = np.repeat(zero, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        else:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
    else:
        scale, zero = scale.reshape(()), zero.reshape(())
    return (x.astype(np.int32) - zero).astype(np.float32) * scale.astype(np.float32)


def _reshaped(data: np.ndarray, shape: np.ndarray) -> np.ndarray:
    dims = [data.shape[i] if d == 0 else int(d) for i, d in enumerate(shape.tolist())]
    return data.reshape(dims)


def fold_constant_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace DequantizeLinear and Reshape nodes whose inputs are all constants by the float
    tensors they compute, and drop Dropout (inference: identity).

    The weight-only quantised zoo models (YuNet, SFace int8bq) run their convolutions in float
    anyway: every runtime dequantises the weights once. Doing it here gives a plain float graph
    that every backend facerest runs takes (TensorRT and the torch runtime know no
    DequantizeLinear with blocks), with the very numbers ONNX Runtime would compute.
    """
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        inputs = [n for n in node.input if n]
        if node.op_type == "Dropout":
            renamed[node.output[0]] = node.input[0]
            continue
        if node.op_type in ("DequantizeLinear", "Reshape") and all(n in constants for n in inputs):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "DequantizeLinear":
                zero = constants[node.input[2]] if len(node.input) > 2 and node.input[2] else None
                value = _dequantize(
                    constants[node.input[0]],
                    constants[node.input[1]],
                    zero,
                    int(attrs.get("axis", 1)),
                    int(attrs.get("block_size", 0)),
                )
            else:
                value = _reshaped(constants[node.input[0]], constants[node.input[1]])
            constants[node.output[0]] = value
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            continue
        kept.append(node)
    for output in graph.output:
        if output.name in renamed:
            raise ModelError(f"graph output {output.name} comes straight from a Dropout")
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(model)
    return model


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {output.name for output in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    remove_initializer_inputs(model)
    remove_unused_inputs(model)


def batch_row_reshapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reshapes to [1, -1, C] (detector heads flattening a map into rows) made [0, -1, C], which
    keeps the batch: exports traced with one image otherwise fold every batch into the first."""
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] not in constants:
            continue
        shape = numpy_helper.to_array(constants[node.input[1]])
        if shape.ndim == 1 and len(shape) == 3 and shape[0] == 1 and shape[1] == -1:
            name = f"{node.output[0]}_batched_shape"
            model.graph.initializer.append(
                numpy_helper.from_array(np.array([0, -1, int(shape[2])], np.int64), name)
            )
            node.input[1] = name
    _drop_unused_initializers(model)
    return model


def set_dynamic_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """A detector's image input and outputs made (batch, 3, height, width) -> (batch, rows, C)
    with every one of those dimensions symbolic."""
    inputs = _data_inputs(model)
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise ModelError("set_dynamic_input needs a graph with one 4-D image input")
    dims = inputs[0].type.tensor_type.shape.dim
    for dim, name in zip(dims, ("batch", None, "height", "width"), strict=True):
        if name is not None:
            _set_dim(dim, name)
    for output in model.graph.output:
        out_dims = output.type.tensor_type.shape.dim
        for i, dim in enumerate(out_dims):
            if i < len(out_dims) - 1:
                _set_dim(dim, "batch" if i == 0 else f"{output.name}_d{i}")
    del model.graph.value_info[:]
    return model
