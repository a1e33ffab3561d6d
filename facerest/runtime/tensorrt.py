"""Native TensorRT: a serialized engine, pinned host buffers, one CUDA stream.

Inputs are copied into page-locked host buffers (sized for the profile's largest shape), sent
to the GPU asynchronously, run with `execute_async_v3`, and the outputs come back the same way;
pinned memory is what lets those copies run at full PCIe speed. Needs TensorRT >= 10 and
cuda-python (facerest[gpu]).
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from facerest.errors import BackendUnavailable, BadInput, ModelError
from facerest.runtime.base import TensorSpec
from facerest.runtime.shapes import check_shape

log = logging.getLogger(__name__)


@cache
def cudart() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendUnavailable(f"cuda-python is not installed ({exc}); install facerest[gpu]") from exc
    return runtime


def cuda_call(result: tuple) -> Any:
    """cuda-python returns (error, value...): raise on error, return the value(s)."""
    error, *values = result
    if int(error) != 0:
        raise BackendUnavailable(f"CUDA error {error}")
    return values[0] if len(values) == 1 else tuple(values)


class _Buffer:
    """A pinned host buffer and a device buffer of the same size for one tensor."""

    def __init__(self, dtype: np.dtype, max_shape: tuple[int, ...]) -> None:
        rt = cudart()
        self.dtype = dtype
        self.nbytes = int(np.prod(max_shape)) * dtype.itemsize
        self.host_ptr = cuda_call(rt.cudaMallocHost(self.nbytes))
        self.device_ptr = cuda_call(rt.cudaMalloc(self.nbytes))
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self.host_ptr))
        self.host = np.frombuffer(raw, dtype=dtype)

    def view(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.host[: int(np.prod(shape))].reshape(shape)

    def free(self) -> None:
        rt = cudart()
        rt.cudaFreeHost(self.host_ptr)
        rt.cudaFree(self.device_ptr)


class TensorRTSession:
    def __init__(self, engine_path: Path, model_name: str = "") -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable(f"TensorRT is not installed ({exc})") from exc
        if int(trt.__version__.split(".")[0]) < 10:
            raise BackendUnavailable(f"TensorRT {trt.__version__} is too old: facerest needs 10 or newer")
        rt = cudart()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise ModelError(
                f"{engine_path} is not a TensorRT engine for this GPU/TensorRT; delete it to rebuild"
            )
        self._context = self._engine.create_execution_context()
        self._stream = cuda_call(rt.cudaStreamCreate())
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self._max_shapes: dict[str, tuple[int, ...]] = {}
        self._min_shapes: dict[str, tuple[int, ...]] = {}
        self._buffers: dict[str, _Buffer] = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = tuple(self._engine.get_tensor_shape(name))
            spec = TensorSpec(name, tuple(None if d < 0 else d for d in shape), dtype.name)
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(spec)
                low, _, high = (tuple(s) for s in self._engine.get_tensor_profile_shape(name, 0))
                self._max_shapes[name] = high
                self._min_shapes[name] = low
                self._buffers[name] = _Buffer(dtype, high)
            else:
                self.outputs.append(spec)
        # outputs are sized from the largest input shapes
        for name, high in self._max_shapes.items():
            self._context.set_input_shape(name, high)
        for spec in self.outputs:
            self._buffers[spec.name] = _Buffer(
                np.dtype(spec.dtype), tuple(self._context.get_tensor_shape(spec.name))
            )
        for name, buffer in self._buffers.items():
            self._context.set_tensor_address(name, int(buffer.device_ptr))
        self.max_batch = self._max_shapes[self.inputs[0].name][0]
        self.backend = f"tensorrt:{trt.__version__}"
        log.info(
            "%s runs on TensorRT %s (%s)", model_name or engine_path.name, trt.__version__, engine_path.name
        )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(feeds.values())))
        if rows > self.max_batch:  # the profile ends at max_batch: run the rest in slices
            parts = [
                self._run({k: v[i : i + self.max_batch] for k, v in feeds.items()})
                for i in range(0, rows, self.max_batch)
            ]
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = cudart()
        kind = rt.cudaMemcpyKind
        for name, array in feeds.items():
            # below the minimum as well as above the maximum: TensorRT would reject the shape
            # (set_input_shape returns False) and run the previous one on stale buffers
            check_shape(name, array.shape, self._min_shapes[name], self._max_shapes[name])
            buffer = self._buffers[name]
            np.copyto(buffer.view(array.shape), array, casting="same_kind")
            if not self._context.set_input_shape(name, array.shape):
                raise BadInput(f"TensorRT refused input {name} of shape {array.shape} for this engine")
            nbytes = array.size * buffer.dtype.itemsize
            cuda_call(
                rt.cudaMemcpyAsync(
                    buffer.device_ptr, buffer.host_ptr, nbytes, kind.cudaMemcpyHostToDevice, self._stream
                )
            )
        if not self._context.execute_async_v3(int(self._stream)):
            raise ModelError("TensorRT failed to run the engine")
        shapes = {}
        for spec in self.outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            buffer = self._buffers[spec.name]
            nbytes = int(np.prod(shape)) * buffer.dtype.itemsize
            cuda_call(
                rt.cudaMemcpyAsync(
                    buffer.host_ptr, buffer.device_ptr, nbytes, kind.cudaMemcpyDeviceToHost, self._stream
                )
            )
            shapes[spec.name] = shape
        cuda_call(rt.cudaStreamSynchronize(self._stream))
        # copies: the pinned buffers are overwritten by the next call
        return {name: self._buffers[name].view(shape).copy() for name, shape in shapes.items()}

    def close(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        self._buffers.clear()
        cudart().cudaStreamDestroy(self._stream)
