"""PyTorch runtime (FACEREST_RUNTIME=torch, extra facerest[torch]): for hosts with PyTorch and
CUDA but no TensorRT.

The ONNX graph is converted once, at load, into a torch module that runs the graph's nodes in
order with torch's own operators. Why not onnx2torch: it imports torchvision at import time
(for NMS/RoIAlign, which our models do not use), and torchvision's wheels are built for one torch
build (a CUDA one on PyPI): with the CPU torch of `make test` it fails to import. The converter
covers the ONNX operators of the models we ship (checked op by op at load: an unknown operator
is an error naming it, never a silent wrong answer); equality with ONNX Runtime is tested in
tests/test_runtime_torch.py.

On CUDA: weights and inputs on the GPU, FP16 with FACEREST_FORCE_FP16 (outputs back in FP32),
inputs staged in pinned host memory and copied with non_blocking=True, and fixed-shape calls
(crop models at their batch size) replayed as CUDA graphs, which removes the per-operator launch
cost of small models.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

# OpenMP's idle threads would spin after every operator and take the cores from the next one
# (why ONNX Runtime's spinning is off in runtime/onnx.py): 6x slower per call on 2 busy cores.
# Read by OpenMP when torch loads, so only effective when this module imports torch first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F
from onnx import numpy_helper

from facerest.errors import BackendUnavailable, ModelError
from facerest.runtime.base import TensorSpec

if TYPE_CHECKING:
    from facerest.config import Settings
    from facerest.runtime.shapes import ModelRole

log = logging.getLogger(__name__)

Tensor = torch.Tensor
Op = Callable[[list[Any], dict[str, Any]], list[Any]]


def cuda_problem() -> str:
    """Why torch cannot use CUDA here ("" when it can)."""
    if not torch.cuda.is_available():
        build = torch.version.cuda
        return "this torch is a CPU build" if build is None else f"torch (CUDA {build}) sees no GPU"
    return ""


# --- the operators -------------------------------------------------------------------------


def _attr(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(value: Any) -> list[int]:
    if isinstance(value, Tensor):
        return [int(v) for v in value.flatten().tolist()]
    return [int(v) for v in value]


def _pads(
    x: Tensor, attrs: dict[str, Any], kernel: list[int], strides: list[int], dilations: list[int]
) -> Tensor:
    """Explicit or SAME_* padding as F.pad (ONNX pads: begins then ends, per spatial axis)."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    spatial = x.shape[2:]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else large)
            ends.append(large if auto == "SAME_UPPER" else small)
    else:
        pads = list(attrs.get("pads", [0] * (2 * len(spatial))))
        begins, ends = pads[: len(spatial)], pads[len(spatial) :]
    flat: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends), strict=True):
        flat += [b, e]
    return x if not any(flat) else F.pad(x, flat, value=attrs.get("_pad_value", 0.0))


def _conv(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    kernel = list(w.shape[2:])
    strides = list(attrs.get("strides", [1] * len(kernel)))
    dilations = list(attrs.get("dilations", [1] * len(kernel)))
    x = _pads(x, attrs, kernel, strides, dilations)
    return [F.conv2d(x, w, bias, strides, 0, dilations, attrs.get("group", 1))]


def _pool(kind: str) -> Op:
    def run(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
        x = inputs[0]
        kernel = list(attrs["kernel_shape"])
        strides = list(attrs.get("strides", [1] * len(kernel)))
        ceil = bool(attrs.get("ceil_mode", 0))
        if kind == "max":
            padded = _pads(x, {**attrs, "_pad_value": float("-inf")}, kernel, strides, [1] * len(kernel))
            return [F.max_pool2d(padded, kernel, strides, 0, ceil_mode=ceil)]
        if attrs.get("count_include_pad", 0) or not any(attrs.get("pads", [0])):
            padded = _pads(x, attrs, kernel, strides, [1] * len(kernel))
            return [F.avg_pool2d(padded, kernel, strides, 0, ceil_mode=ceil)]
        raise BackendUnavailable("AveragePool with padding that excludes the pad is not supported")

    return run


def _gemm(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    a, b = inputs[0], inputs[1]
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    y = attrs.get("alpha", 1.0) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + attrs.get("beta", 1.0) * inputs[2]
    return [y]


def _batch_norm(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x, scale, bias, mean, var = inputs[:5]
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, attrs.get("epsilon", 1e-5))]


def _prelu(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x, slope = inputs
    if x.ndim == 4 and slope.numel() == x.shape[1]:  # per channel: one fused kernel
        return [F.prelu(x, slope.reshape(-1))]
    return [torch.where(x >= 0, x, x * slope)]


def _flatten(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x = inputs[0]
    axis = attrs.get("axis", 1)
    return [x.reshape(int(np.prod(x.shape[:axis])) if axis else 1, -1)]


def _reshape(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x, shape = inputs[0], _ints(inputs[1])
    shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _shape(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    return [torch.tensor(list(inputs[0].shape), dtype=torch.int64)]


def _gather(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    data, index = inputs
    axis = attrs.get("axis", 0)
    index = torch.as_tensor(index, dtype=torch.int64, device=data.device)
    if index.ndim == 0:
        return [data.select(axis, int(index))]
    return [
        torch.index_select(data, axis, index.flatten()).reshape(
            *data.shape[:axis], *index.shape, *data.shape[axis + 1 :]
        )
    ]


def _unsqueeze(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x = inputs[0]
    axes = attrs["axes"] if "axes" in attrs else _ints(inputs[1])
    rank = x.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return [x]


def _concat(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    parts = [torch.as_tensor(p) for p in inputs]
    if all(p.device.type == "cpu" and p.dtype == torch.int64 for p in parts):  # shape arithmetic
        return [torch.cat(parts, attrs["axis"])]
    device = next(p.device for p in parts if p.dtype != torch.int64 or p.device.type != "cpu")
    return [torch.cat([p.to(device) for p in parts], attrs["axis"])]


def _slice(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        size = x.shape[axis]
        index[axis] = slice(max(min(start, size), -size), max(min(end, size), -size - 1), step)
    return [x[tuple(index)]]


def _cast(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    target = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"])
    dtypes = {
        np.dtype("int64"): torch.int64,
        np.dtype("int32"): torch.int32,
        np.dtype("float32"): torch.float32,
    }
    x = inputs[0]
    dtype = dtypes.get(np.dtype(target))
    if dtype is None:
        raise BackendUnavailable(f"Cast to {target} is not supported")
    if dtype == torch.float32 and x.is_floating_point():
        return [x]  # keeps FP16 graphs in FP16
    return [x.to(dtype)]


def _resize(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x = inputs[0]
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    transform = attrs.get("coordinate_transformation_mode", b"half_pixel")
    transform = transform.decode() if isinstance(transform, bytes) else transform
    sizes = inputs[3] if len(inputs) > 3 and inputs[3] is not None and inputs[3].numel() else None
    if sizes is not None:
        out = _ints(sizes)[2:]
    else:
        scales = [float(s) for s in inputs[2].flatten().tolist()][2:]
        out = [math.floor(d * s) for d, s in zip(x.shape[2:], scales, strict=True)]
    if (
        mode == "nearest"
        and transform == "asymmetric"
        and attrs.get("nearest_mode", b"floor") in (b"floor", "floor")
    ):
        return [F.interpolate(x, size=out, mode="nearest")]
    raise BackendUnavailable(
        f"Resize mode={mode} coordinate_transformation_mode={transform} is not supported"
    )


def _pad(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x = inputs[0]
    mode = attrs.get("mode", b"constant")
    if mode not in (b"constant", "constant"):
        raise BackendUnavailable(f"Pad mode {mode!r} is not supported")
    pads = _ints(inputs[1]) if len(inputs) > 1 else list(attrs["pads"])
    value = float(inputs[2]) if len(inputs) > 2 and inputs[2] is not None and inputs[2].numel() else 0.0
    rank = x.ndim
    flat: list[int] = []
    for axis in reversed(range(rank)):
        flat += [pads[axis], pads[axis + rank]]
    return [F.pad(x, flat, value=value)]


def _softmax(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
    return [torch.softmax(inputs[0], attrs.get("axis", -1))]


def _elementwise(fn: Callable[[Tensor, Tensor], Tensor]) -> Op:
    def run(inputs: list[Any], attrs: dict[str, Any]) -> list[Any]:
        a, b = inputs
        if isinstance(a, Tensor) and isinstance(b, Tensor) and a.device != b.device:
            b = b.to(a.device) if a.device.type != "cpu" else b
            a = a.to(b.device)
        return [fn(a, b)]

    return run


OPS: dict[str, Op] = {
    "Conv": _conv,
    "Relu": lambda i, a: [torch.relu(i[0])],
    "Sigmoid": lambda i, a: [torch.sigmoid(i[0])],
    "PRelu": _prelu,
    "Add": _elementwise(torch.add),
    "Sub": _elementwise(torch.sub),
    "Mul": _elementwise(torch.mul),
    "Div": _elementwise(torch.div),
    "MatMul": _elementwise(torch.matmul),
    "BatchNormalization": _batch_norm,
    "Flatten": _flatten,
    "Gemm": _gemm,
    "Transpose": lambda i, a: [i[0].permute(*a["perm"])],
    "Reshape": _reshape,
    "Concat": _concat,
    "Resize": _resize,
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Cast": _cast,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda i, a: [i[0].mean(dim=(2, 3), keepdim=True)],
    "Pad": _pad,
    "Softmax": _softmax,
}


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    return sorted({n.op_type for n in model.graph.node if n.op_type not in OPS and n.op_type != "Constant"})


class OnnxGraphModule(torch.nn.Module):
    """An ONNX graph run node by node with torch operators (weights as buffers)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        missing = unsupported_ops(model)
        if missing:
            raise BackendUnavailable(
                f"the torch runtime does not convert ONNX operators {', '.join(missing)}"
            )
        self._names: dict[str, str] = {}
        for index, init in enumerate(model.graph.initializer):
            array = numpy_helper.to_array(init)
            self._constant(f"w{index}", init.name, array)
        self.nodes: list[tuple[str, list[str], list[str], dict[str, Any]]] = []
        for index, node in enumerate(model.graph.node):
            attrs = _attr(node)
            if node.op_type == "Constant":
                self._constant(f"c{index}", node.output[0], numpy_helper.to_array(attrs["value"]))
                continue
            self.nodes.append((node.op_type, list(node.input), list(node.output), attrs))
        initialisers = {i.name for i in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in initialisers]
        self.output_names = [o.name for o in model.graph.output]

    def _constant(self, attribute: str, name: str, array: np.ndarray) -> None:
        tensor = torch.from_numpy(np.array(array))
        # integer constants are shape arithmetic: they stay on the CPU as Python-sized values
        persistent = tensor.is_floating_point()
        self.register_buffer(attribute, tensor, persistent=persistent)
        self._names[name] = attribute

    def forward(self, *inputs: Tensor) -> list[Tensor]:
        values: dict[str, Any] = {"": None}
        for name, attribute in self._names.items():
            values[name] = getattr(self, attribute)
        values.update(zip(self.input_names, inputs, strict=True))
        for op_type, names_in, names_out, attrs in self.nodes:
            results = OPS[op_type]([values[n] for n in names_in], attrs)
            values.update(zip(names_out, results, strict=False))
        return [values[n] for n in self.output_names]


def _move(module: OnnxGraphModule, device: torch.device, fp16: bool) -> OnnxGraphModule:
    """Float weights to `device` (FP16 if asked); integer constants stay on the CPU."""
    for name, buffer in list(module.named_buffers()):
        if buffer.is_floating_point():
            setattr(module, name, buffer.to(device, torch.float16 if fp16 else torch.float32))
    return module


#: FP16 outputs may differ from FP32 by this fraction of the output's largest magnitude
FP16_RELATIVE_TOLERANCE = 2e-2
#: and embedding-like outputs (rows of 64+ numbers) must keep this cosine, row by row
FP16_MIN_COSINE = 0.999


def fp16_outputs_hold(full: list[np.ndarray], half: list[np.ndarray]) -> bool:
    """The FP16 outputs are close enough to the FP32 ones to serve."""
    for a, b in zip(full, half, strict=True):
        if a.shape != b.shape or not np.isfinite(b).all():
            return False
        scale = max(float(np.abs(a).max()), 1e-6)
        if float(np.abs(a - b).max()) > FP16_RELATIVE_TOLERANCE * scale:
            return False
        if a.ndim == 2 and a.shape[1] >= 64:
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cosine = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
            if float(cosine.min()) < FP16_MIN_COSINE:
                return False
    return True


class TorchSession:
    """One ONNX model on PyTorch, CPU or CUDA."""

    def __init__(
        self,
        model_path: Path,
        *,
        device: str = "cpu",
        fp16: bool = False,
        threads: int = 1,
        cuda_graph_batch: int = 0,
        model_name: str = "",
    ) -> None:
        model = onnx.load(str(model_path))
        self.module = OnnxGraphModule(model).eval()
        self.device = torch.device(device)
        self.fp16 = fp16 and self.device.type == "cuda"  # FP16 convolutions on the CPU are slow
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        _move(self.module, self.device, self.fp16)
        initialisers = {i.name for i in model.graph.initializer}
        self.inputs = [
            TensorSpec(v.name, tuple(d.dim_value or None for d in v.type.tensor_type.shape.dim))
            for v in model.graph.input
            if v.name not in initialisers
        ]
        self.outputs = [
            TensorSpec(v.name, tuple(d.dim_value or None for d in v.type.tensor_type.shape.dim))
            for v in model.graph.output
        ]
        if self.fp16:  # FP16 only where the outputs hold; this model stays FP32 otherwise
            self.fp16 = self._fp16_holds(model_name or model_path.stem)
        self.backend = f"torch:{self.device.type}{':fp16' if self.fp16 else ''}"
        self._graphs: dict[tuple[int, ...], tuple[Any, Tensor, list[Tensor]]] = {}
        self._pinned: dict[tuple[tuple[int, ...], torch.dtype], Tensor] = {}
        # calls of up to this many rows are padded to it: one shape, captured once as a CUDA graph
        # (on the CPU only padded, which is how the tests check the padding without a GPU)
        self._cuda_graph_batch = cuda_graph_batch
        log.info("%s runs on %s (torch %s)", model_name or model_path.stem, self.backend, torch.__version__)

    def _fp16_holds(self, label: str) -> bool:
        """Run one sample input in FP16 and FP32 (module left in FP16 when they agree)."""
        rng = np.random.default_rng(0)
        sample = [
            (
                rng.random(
                    [d or (1 if axis == 0 else 160) for axis, d in enumerate(spec.shape)], dtype=np.float32
                )
                * 2
                - 1
            )
            for spec in self.inputs
        ]
        with torch.inference_mode():
            half = [o.float().cpu().numpy() for o in self.module(*[self._to_device(a) for a in sample])]
            _move(self.module, self.device, False)
            self.fp16 = False
            full = [o.float().cpu().numpy() for o in self.module(*[self._to_device(a) for a in sample])]
        if fp16_outputs_hold(full, half):
            _move(self.module, self.device, True)
            return True
        log.warning("%s: FP16 outputs drift from FP32 on a sample input; this model runs in FP32", label)
        return False

    @classmethod
    def from_settings(
        cls, model_path: Path, settings: Settings, model_name: str, role: ModelRole | None = None
    ) -> TorchSession:
        problem = cuda_problem()
        if problem and settings.gpu_required:
            raise BackendUnavailable(f"FACEREST_REQUIRE_GPU: FACEREST_RUNTIME=torch has no CUDA: {problem}")
        fixed_crops = role is not None and role.task != "detection" and role.allow_batching
        return cls(
            model_path,
            device="cpu" if problem else "cuda",
            fp16=settings.force_fp16,
            threads=settings.threads,
            cuda_graph_batch=settings.rec_batch_size if fixed_crops and not problem else 0,
            model_name=model_name,
        )

    def _to_device(self, array: np.ndarray) -> Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            # a page-locked staging buffer per shape (allocating one per call costs more than the
            # copy): the copy then runs asynchronously at full PCIe speed. Reusing it is safe:
            # every run ends by reading its outputs back, after the copy is done.
            key = (tuple(tensor.shape), tensor.dtype)
            staging = self._pinned.get(key)
            if staging is None:
                staging = self._pinned[key] = torch.empty(key[0], dtype=key[1], pin_memory=True)
            staging.copy_(tensor)
            tensor = staging.to(self.device, non_blocking=True)
        return tensor.half() if self.fp16 and tensor.is_floating_point() else tensor

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [feeds[spec.name] for spec in self.inputs]
        rows = len(arrays[0]) if arrays and arrays[0].ndim else 0
        try:
            with torch.inference_mode():
                if self._cuda_graph_batch and len(arrays) == 1 and 0 < rows <= self._cuda_graph_batch:
                    # one fixed shape: smaller batches are padded to it and replay the same graph
                    padded = arrays[0]
                    if rows < self._cuda_graph_batch:
                        padded = np.zeros((self._cuda_graph_batch, *padded.shape[1:]), padded.dtype)
                        padded[:rows] = arrays[0]
                    outputs = [o[:rows] for o in self._replay(padded)]
                else:
                    outputs = self.module(*[self._to_device(a) for a in arrays])
                results = [o.float().cpu().numpy() for o in outputs]
        except BackendUnavailable:
            raise
        except RuntimeError as exc:
            raise ModelError(f"torch failed to run the model: {exc}") from exc
        return dict(zip([o.name for o in self.outputs], results, strict=True))

    def _replay(self, array: np.ndarray) -> list[Tensor]:
        """A fixed-shape call as a CUDA graph: captured once per shape, then replayed."""
        if self.device.type != "cuda":
            return self.module(self._to_device(array))
        key = tuple(array.shape)
        if key not in self._graphs:
            static_in = self._to_device(array).clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph (cuDNN picks its kernels)
                    self.module(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.module(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(self._to_device(array))
        graph.replay()
        return static_out
