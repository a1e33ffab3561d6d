"""GPU start-up checks: prove the GPU runtime asked for is the one running (the child process
that runs them at start lives in facerest.preparation.gpu)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from facerest.errors import BackendUnavailable, FaceRestError

if TYPE_CHECKING:
    from facerest.config import Settings

log = logging.getLogger(__name__)

#: what each onnxruntime-gpu release's TensorRT provider is built against (its TensorRT must be
#: the one installed, or the provider does not load); deploy/Dockerfile.gpu follows this table
ORT_GPU_BUILDS = {"1.24.1": {"tensorrt": "10.14", "cuda": "12.9"}}


def uses_gpu(settings: Settings) -> bool:
    """The settings ask for a GPU runtime (whether or not one is there)."""
    from facerest.runtime.onnx import GPU_PROVIDERS

    if settings.runtime in ("trt", "torch"):
        return True
    if settings.runtime in ("onnx", "auto"):
        return settings.providers == ["auto"] or any(p in GPU_PROVIDERS for p in settings.providers)
    return False


def _probe_model() -> bytes:
    """A one-node ONNX graph (y = x + x) that every provider runs: starts a provider in ms."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def check_gpu_runtime(settings: Settings) -> str:
    """What runs the models on the GPU ("onnxruntime:CUDAExecutionProvider", "tensorrt:10.8",
    "torch:cuda"); BackendUnavailable, in one line, when that is not what would run."""
    if not uses_gpu(settings):
        raise BackendUnavailable(
            f"FACEREST_REQUIRE_GPU is on but FACEREST_RUNTIME={settings.runtime} with FACEREST_PROVIDERS="
            f"{','.join(settings.providers)} runs on the CPU; ask for a GPU runtime "
            "(FACEREST_RUNTIME=trt or torch, or FACEREST_PROVIDERS=CUDAExecutionProvider) or set "
            "FACEREST_REQUIRE_GPU=false"
        )
    if settings.runtime == "trt":
        from facerest.runtime.tensorrt import cuda_call, cudart

        try:
            import tensorrt
        except ImportError as exc:
            raise BackendUnavailable(f"FACEREST_REQUIRE_GPU: TensorRT is not installed ({exc})") from exc
        try:
            count = cuda_call(cudart().cudaGetDeviceCount())
        except FaceRestError as exc:
            raise BackendUnavailable(f"FACEREST_REQUIRE_GPU: no usable CUDA device ({exc.detail})") from exc
        if count < 1:
            raise BackendUnavailable("FACEREST_REQUIRE_GPU: TensorRT is installed but no CUDA device shows")
        return f"tensorrt:{tensorrt.__version__}"
    if settings.runtime == "torch":
        from facerest.runtime.pytorch import cuda_problem

        problem = cuda_problem()
        if problem:
            raise BackendUnavailable(f"FACEREST_REQUIRE_GPU: FACEREST_RUNTIME=torch has no CUDA: {problem}")
        return "torch:cuda"
    from facerest.runtime.onnx import OnnxSession, provider_plan

    providers, options = provider_plan(settings)
    session = OnnxSession(
        _probe_model(), providers=providers, provider_options=options, model_name="probe", require_gpu=True
    )
    return session.backend
