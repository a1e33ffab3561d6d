"""GPU paths: ONNX Runtime's CUDA provider, native TensorRT engine build and inference.

They run where an NVIDIA GPU with the GPU packages is present (the GPU image, or facerest[gpu]
with TensorRT and onnxruntime-gpu) and skip with the reason everywhere else. docs/performance.md
(## GPU) says how to produce the figures with them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import package_photo, read_bgr

from facerest.config import Settings
from facerest.models.store import ModelStore

pytestmark = pytest.mark.gpu


def _need_tensorrt_gpu() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"TensorRT is not installed here ({exc}); runs in the GPU image")
    try:
        from facerest.runtime.tensorrt import cuda_call, cudart

        count = cuda_call(cudart().cudaGetDeviceCount())
    except Exception as exc:
        pytest.skip(f"no usable CUDA device here ({exc})")
    if count < 1:
        pytest.skip("no CUDA device here")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def crops(models_dir: Path) -> np.ndarray:
    """The recognizer's input for the real faces of players.jpg, prepared by the CPU pipeline.

    Its settings are given here, not inherited: with FACEREST_RUNTIME=trt (or CUDA providers) in
    the environment the "CPU" reference would otherwise run on the GPU path under test."""
    from facerest.pipeline import ExtractOptions, FaceAnalyzer
    from facerest.preparation import load_models

    settings = Settings(
        models_dir=models_dir,
        runtime="onnx",
        providers=["CPUExecutionProvider"],
        threads=2,
        require_gpu=False,
    )
    analyzer = FaceAnalyzer(load_models(settings), settings)
    try:
        image = read_bgr(package_photo("players.jpg"))
        faces = analyzer.process([image], ExtractOptions(extract_embedding=False))[0].faces
        model = analyzer.models.recognizer
        return model.prepare(np.stack([model.crop(image, face) for face in faces]))
    finally:
        analyzer.close()


def gpu_present() -> bool:
    """An NVIDIA device node: a GPU is here, so a GPU path that does not run is a failure."""
    return Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/version").exists()


def test_cuda_provider_matches_cpu(models_dir: Path, crops: np.ndarray) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(
            f"this onnxruntime has no CUDA provider ({ort.get_available_providers()}); needs onnxruntime-gpu"
        )
    from facerest.runtime.onnx import OnnxSession

    path = ModelStore(models_dir).ensure("w600k_mbf")[0]
    if not gpu_present():
        pytest.skip("no NVIDIA device here (/dev/nvidia0)")
    # a GPU is here: a CUDA provider that falls back to the CPU fails the test (require_gpu raises)
    gpu = OnnxSession(path, providers=["CUDAExecutionProvider"], model_name="w600k_mbf", require_gpu=True)
    cpu = OnnxSession(path, providers=["CPUExecutionProvider"])
    assert gpu.providers[0] == "CUDAExecutionProvider"
    name = gpu.inputs[0].name
    cos = _cosine(next(iter(gpu.run({name: crops}).values())), next(iter(cpu.run({name: crops}).values())))
    assert cos.min() >= 0.999


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_tensorrt_engine_builds_caches_and_matches_cpu(
    fp16: bool, models_dir: Path, tmp_path: Path, crops: np.ndarray, capsys, caplog
) -> None:  # type: ignore[no-untyped-def]
    _need_tensorrt_gpu()
    from facerest.runtime.onnx import OnnxSession
    from facerest.runtime.tensorrt import TensorRTSession
    from facerest.tools.tensorrt_build import build_engine

    store = ModelStore(models_dir)
    path = store.ensure("w600k_mbf")[0]
    settings = Settings(models_dir=models_dir, trt_engines_dir=tmp_path, rec_batch_size=64, force_fp16=fp16)
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="facerest.tools.tensorrt_build"):
        engine = build_engine(path, settings, store.entry("w600k_mbf"))
    build_s = time.perf_counter() - started
    assert ("built in FP16" in caplog.text) is fp16  # never silently
    mtime = engine.stat().st_mtime_ns
    assert build_engine(path, settings, store.entry("w600k_mbf")) == engine  # cached
    assert engine.stat().st_mtime_ns == mtime
    session = TensorRTSession(engine, model_name="w600k_mbf")
    cpu = OnnxSession(path, providers=["CPUExecutionProvider"])
    name = session.inputs[0].name
    got = session.run({name: crops})[session.outputs[0].name]
    want = next(iter(cpu.run({name: crops}).values()))
    cos = _cosine(got, want)
    assert cos.min() >= (0.99 if fp16 else 0.999)
    # more rows than the profile allows are run in slices
    many = np.concatenate([crops] * (64 // len(crops) + 2))
    assert session.run({name: many})[session.outputs[0].name].shape == (len(many), 512)
    for batch in (1, 64):
        feed = {name: np.repeat(crops[:1], batch, axis=0)}
        session.run(feed)
        t0 = time.perf_counter()
        for _ in range(20):
            session.run(feed)
        rate = 20 * batch / (time.perf_counter() - t0)
        with capsys.disabled():
            print(
                f"\nw600k_mbf TensorRT {'fp16' if fp16 else 'fp32'}: build {build_s:.1f} s, "
                f"batch {batch}: {rate:.0f} faces/s, min cosine vs CPU {cos.min():.5f}"
            )
    session.close()


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_torch_cuda_matches_cpu(fp16: bool, models_dir: Path, crops: np.ndarray) -> None:
    """FACEREST_RUNTIME=torch on CUDA: CUDA-graph calls (full, padded, replayed on new data) and
    eager calls (more rows than the graph's batch) equal the CPU (FP16 within 0.995)."""
    torch = pytest.importorskip("torch", reason="torch is not installed here (facerest[torch])")
    if not torch.cuda.is_available():
        pytest.skip(f"torch sees no CUDA device here (torch CUDA build: {torch.version.cuda})")
    from facerest.runtime.onnx import OnnxSession
    from facerest.runtime.pytorch import TorchSession

    path = ModelStore(models_dir).ensure("w600k_mbf")[0]
    cpu = OnnxSession(path, providers=["CPUExecutionProvider"])
    name = cpu.inputs[0].name
    want = next(iter(cpu.run({name: crops}).values()))
    session = TorchSession(
        path, device="cuda", fp16=fp16, cuda_graph_batch=len(crops), model_name="w600k_mbf"
    )
    assert session.backend == ("torch:cuda:fp16" if fp16 else "torch:cuda")
    graphed = next(iter(session.run({name: crops}).values()))  # captured, then
    replayed = next(iter(session.run({name: crops[::-1].copy()}).values()))[::-1]  # replayed on new data
    padded = next(iter(session.run({name: crops[:1]}).values()))  # one row, padded to the graph's batch
    eager = next(iter(session.run({name: np.concatenate([crops, crops])}).values()))  # beyond it
    floor = 0.995 if fp16 else 0.999
    assert _cosine(graphed, want).min() >= floor
    assert _cosine(replayed, want).min() >= floor
    assert padded.shape == (1, 512) and _cosine(padded, want[:1]).min() >= floor
    assert _cosine(eager, np.concatenate([want, want])).min() >= floor


def test_onnx_tensorrt_provider_runs_every_detector_shape_without_rebuilding(
    models_dir: Path, tmp_path: Path
) -> None:
    """The TensorRT provider gets the detector's profile (runtime/shapes.py): canvases of several
    sizes run on the engine built at start, with no new engine file per shape."""
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no TensorRT provider (onnxruntime-gpu with TensorRT)")
    if not gpu_present():
        pytest.skip("no NVIDIA device here (/dev/nvidia0)")
    from facerest.runtime.factory import create_session
    from facerest.runtime.shapes import ModelRole

    path = ModelStore(models_dir).ensure("scrfd_500m_bnkps")[0]
    settings = Settings(
        models_dir=models_dir,
        trt_engines_dir=tmp_path,
        runtime="onnx",
        providers=["TensorrtExecutionProvider"],
        require_gpu=True,
    )
    session = create_session(
        path, settings, backend="onnx", model_name="scrfd_500m_bnkps", role=ModelRole("detection", "scrfd")
    )
    assert session.backend == "onnxruntime:TensorrtExecutionProvider"
    name = session.inputs[0].name
    session.run({name: np.zeros((1, 3, 640, 640), np.float32)})
    engines = sorted(p.name for p in (tmp_path / "ort").iterdir())
    started = time.perf_counter()
    for h, w in [(320, 640), (640, 352), (512, 512), (96, 128)]:
        session.run({name: np.zeros((1, 3, h, w), np.float32)})
    assert time.perf_counter() - started < 5, "an engine was rebuilt for a new shape"
    assert sorted(p.name for p in (tmp_path / "ort").iterdir()) == engines
