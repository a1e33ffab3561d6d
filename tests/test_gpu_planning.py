"""GPU start-up logic that runs without a GPU (issue 19): shape profiles for every detector family
and max_size, the ONNX Runtime TensorRT provider's profile options, shape checks, FP16 on
TensorRT 11, fallback detection with a provider made to fail, FACEREST_REQUIRE_GPU on a real server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import onnxruntime as ort
import pytest
from conftest import start_server, stop_server
from helpers import serve_until_exit

from facerest.config import Settings
from facerest.errors import BackendUnavailable, BadInput
from facerest.imaging import resize
from facerest.models.catalog import Catalog
from facerest.models.detection.base import Detector
from facerest.models.detection.mtcnn import CELL_SIZE, MtcnnDetector
from facerest.models.store import ModelStore
from facerest.runtime import shapes
from facerest.runtime.onnx import OnnxSession, check_gpu_providers, provider_plan
from facerest.runtime.shapes import ModelRole, ShapeLimits, check_shape, profile_shapes

MAX_SIZES = [(320, 320), (480, 640), (640, 640), (1000, 1000), (1920, 1080)]
IMAGE_SIZES = [(50, 50), (300, 4000), (4000, 300), (640, 480), (1000, 1000), (1001, 999), (4000, 3000)]


def test_constants_agree_with_the_pipeline() -> None:
    assert shapes.CLOSEUP_SIDE == resize.CLOSEUP_SIDE
    assert shapes.MTCNN_PNET_MIN_SIDE == CELL_SIZE
    assert Detector.stride == 32 and MtcnnDetector.stride == 1


def _detector_families() -> list[str]:
    return sorted({e.family for e in Catalog.load() if e.task == "detection"})


@pytest.mark.parametrize("max_size", MAX_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("family", _detector_families())
def test_every_canvas_the_pipeline_makes_is_inside_the_profile(
    family: str, max_size: tuple[int, int]
) -> None:
    """Defect 5: max_size 1000 rounds up to 1024; the close-up pass's 512 px canvas with max_size
    below 512. Every first-pass and close-up canvas for these images lies inside the profile."""
    stride = 1 if family == "mtcnn" else 32
    role = ModelRole("detection", family)
    limits = ShapeLimits(max_size, det_batch_size=4, rec_batch_size=64)
    profile = profile_shapes(role, [("input", [None, 3, None, None])], limits)["input"]
    low, opt, high = profile
    assert low[0] == 1 and high[0] == 4
    for width, height in IMAGE_SIZES:
        for plan in (
            resize.plan_input(width, height, max_size, stride=stride),
            resize.plan_closeup(width, height, stride=stride),
        ):
            shape = (1, 3, plan.canvas[1], plan.canvas[0])
            check_shape("input", shape, tuple(low), tuple(high))  # raises when outside
    assert low[1] <= opt[2] <= high[2] and low[2] <= opt[3] <= high[3]
    if family == "mtcnn":  # the pyramid's last level is 12 px: below the other detectors' 32
        assert low[2:] == [12, 12]
    if max_size == (1000, 1000) and family != "mtcnn":
        assert high[2:] == [1024, 1024]


def test_mtcnn_pyramid_levels_fit_pnet_profile() -> None:
    """Defect 4: every P-Net pyramid level is at least 12 px, above the profile's minimum."""
    detector = object.__new__(MtcnnDetector)
    role = ModelRole("detection", "mtcnn", 0, allow_batching=False)
    # P-Net's graph is NHWC with width and height swapped: [N, W, H, 3]
    low, _, high = profile_shapes(role, [("x", [None, None, None, 3])], ShapeLimits((640, 640), 1, 8))["x"]
    for height, width in [(640, 480), (640, 36), (512, 512)]:
        for scale in detector._scales(height, width):
            level = (1, int(width * scale + 0.999), int(height * scale + 0.999), 3)
            check_shape("x", level, tuple(low), tuple(high))


def test_mtcnn_later_stages_take_their_candidates_in_one_call(models_dir: Path) -> None:
    """Defect 6: R-Net and O-Net engines are built for hundreds of rows, not det_batch_size (1)."""
    from facerest.tools.tensorrt_build import make_key

    store = ModelStore(models_dir)
    paths = store.ensure("mtcnn")
    entry = store.entry("mtcnn")
    settings = Settings(models_dir=models_dir)
    keys = [make_key(p, settings, entry, gpu="GPU", trt_version="10.8.0", capability="8.9") for p in paths]
    assert [k.max_batch for k in keys] == [1, shapes.MTCNN_STAGE_MAX_BATCH, shapes.MTCNN_STAGE_MAX_BATCH]
    rnet = next(iter(keys[1].profiles.values()))
    assert rnet[0][0] == 1 and rnet[2][0] == shapes.MTCNN_STAGE_MAX_BATCH
    pnet = next(iter(keys[0].profiles.values()))
    assert min(pnet[0][1:3]) == 12


def test_check_shape_refuses_below_the_minimum_and_above_the_maximum() -> None:
    low, high = (1, 3, 32, 32), (8, 3, 640, 640)
    check_shape("x", (8, 3, 640, 640), low, high)
    check_shape("x", (20, 3, 64, 64), low, high)  # extra rows are run in slices
    for shape in [(1, 3, 12, 640), (1, 3, 640, 672), (1, 3, 640)]:
        with pytest.raises(BadInput, match="outside this engine's profile"):
            check_shape("x", shape, low, high)


def test_onnx_tensorrt_provider_gets_the_profile_and_its_cache_folder(
    models_dir: Path, tmp_path: Path
) -> None:
    """Defect 3: the TensorRT provider is given min/opt/max shapes, so it builds once at start."""
    from facerest.runtime.factory import graph_profiles

    store = ModelStore(models_dir)
    path = store.ensure("scrfd_500m_bnkps")[0]
    settings = Settings(
        models_dir=models_dir,
        trt_engines_dir=tmp_path,
        providers="TensorrtExecutionProvider",
        max_size="1000",
    )
    profiles = graph_profiles(path, ModelRole("detection", "scrfd"), settings)
    _, options = provider_plan(settings, profiles)
    trt = options["TensorrtExecutionProvider"]
    assert trt["trt_profile_min_shapes"] == "input.1:1x3x32x32"
    assert trt["trt_profile_opt_shapes"] == "input.1:1x3x1024x1024"
    assert trt["trt_profile_max_shapes"] == "input.1:1x3x1024x1024"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "ort")
    cuda = provider_plan(Settings(providers="CUDAExecutionProvider", gpu_mem_limit_mb=1024))[1]
    assert cuda["CUDAExecutionProvider"]["cudnn_conv_algo_search"] == "HEURISTIC"  # defect 12
    assert cuda["CUDAExecutionProvider"]["gpu_mem_limit"] == 1 << 30


def test_tensorrt_11_refuses_fp16_in_one_line_before_building() -> None:
    """Defect 7: TensorRT 11 has no BuilderFlag.FP16 (strongly typed networks only)."""
    from facerest.tools.tensorrt_build import check_fp16

    trt11 = SimpleNamespace(__version__="11.0.0", BuilderFlag=SimpleNamespace(TF32=1))
    trt10 = SimpleNamespace(__version__="10.8.0", BuilderFlag=SimpleNamespace(FP16=1))
    check_fp16(trt11, False)
    check_fp16(trt10, True)
    with pytest.raises(BackendUnavailable, match=r"TensorRT 11\.0\.0 no longer has"):
        check_fp16(trt11, True)


def test_missing_gpu_provider_is_detected_and_required(models_dir: Path) -> None:
    """Defect 1: a GPU provider that is not running is an error with REQUIRE_GPU, a visible CPU
    session without it; ONNX Runtime's own run() fallback is off."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: the failure cannot be provoked here")
    path = ModelStore(models_dir).ensure("w600k_mbf")[0]
    with pytest.raises(
        BackendUnavailable, match="FACEREST_REQUIRE_GPU: w600k_mbf asked for CUDAExecutionProvider"
    ):
        OnnxSession(
            path,
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
            model_name="w600k_mbf",
            require_gpu=True,
        )
    session = OnnxSession(
        path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], model_name="w600k_mbf"
    )
    assert session.backend == "onnxruntime:CPUExecutionProvider"
    assert session._session._enable_fallback is False


def test_provider_check_logic() -> None:
    cuda_cpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    check_gpu_providers("m", cuda_cpu, cuda_cpu, cuda_cpu)
    check_gpu_providers("m", ["CPUExecutionProvider"], ["CPUExecutionProvider"], cuda_cpu)
    auto = [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "OpenVINOExecutionProvider",
        "CPUExecutionProvider",
    ]
    check_gpu_providers("m", auto, cuda_cpu, cuda_cpu)  # auto: one GPU provider is enough
    with pytest.raises(BackendUnavailable, match="would run on CPUExecutionProvider"):
        check_gpu_providers("m", cuda_cpu, ["CPUExecutionProvider"], cuda_cpu)
    with pytest.raises(BackendUnavailable):
        check_gpu_providers("m", auto, ["CPUExecutionProvider"], ["CPUExecutionProvider"])


def test_require_gpu_defaults_to_on_with_gpus() -> None:
    assert Settings(gpus="0").gpu_required is True
    assert Settings().gpu_required is False
    assert Settings(gpus="0", require_gpu=False).gpu_required is False
    assert Settings(require_gpu=True).gpu_required is True


def test_server_with_a_missing_gpu_provider(models_dir: Path, tmp_path: Path) -> None:
    """Must show 2: CUDA asked for on a machine without it. REQUIRE_GPU on: `facerest serve` exits
    non-zero with one `error:` line; off: the server starts and /info names the CPU provider."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: the failure cannot be provoked here")
    status, output = serve_until_exit(
        {
            "FACEREST_MODELS_DIR": str(models_dir),
            "FACEREST_RUNTIME": "onnx",
            "FACEREST_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider",
            "FACEREST_REQUIRE_GPU": "true",
            "FACEREST_THREADS": "2",
            "FACEREST_PORT": "1",  # never reached: it stops before binding
        },
        tmp_path,
    )
    assert status != 0
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "FACEREST_REQUIRE_GPU" in errors[0] and "CUDAExecutionProvider" in errors[0]
    assert "Traceback" not in output

    server = start_server(
        {
            "FACEREST_MODELS_DIR": str(models_dir),
            "FACEREST_RUNTIME": "onnx",
            "FACEREST_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider",
            "FACEREST_REQUIRE_GPU": "false",
        },
        tmp_path / "server.log",
    )
    try:
        info = httpx.get(f"{server.url}/info", timeout=30).json()
        assert set(info["models"]["providers"].values()) == {"onnxruntime:CPUExecutionProvider"}
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        labels = 'model="w600k_mbf",provider="CPUExecutionProvider",runtime="onnxruntime"'
        assert f"facerest_model_backend{{{labels}}} 1.0" in metrics
    finally:
        stop_server(server)


def test_triton_export_batches_only_graphs_whose_outputs_carry_the_batch(models_dir: Path) -> None:
    """Defect 9: an SCRFD-like graph answering [rows, 1] gets no dynamic batch (max_batch 0);
    our SCRFD and recognizer, whose outputs follow the batch, do."""
    import onnx
    from onnx import TensorProto, helper

    from facerest.tools.triton_export import batchable

    flat = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["rows"])],
        "scores_without_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])],
    )
    model = helper.make_model(flat, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    assert batchable(model) is False
    store = ModelStore(models_dir)
    for name in ("scrfd_500m_bnkps", "w600k_mbf"):
        assert batchable(onnx.load(str(store.ensure(name)[0]))) is True


def test_gpu_image_pins_the_tensorrt_and_cuda_onnxruntime_is_built_for() -> None:
    """Defect 2: the GPU image's TensorRT and CUDA are the ones onnxruntime-gpu's TensorRT
    provider was built against, and the compose files build it from the same base."""
    import re

    from facerest.runtime.gpu import ORT_GPU_BUILDS

    deploy = Path(__file__).resolve().parents[1] / "deploy"
    text = (deploy / "Dockerfile.gpu").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    ort_version = args["ONNXRUNTIME_GPU"].split("==")[1]
    build = ORT_GPU_BUILDS[ort_version]
    assert args["TENSORRT"].split("==")[1].startswith(build["tensorrt"] + ".")
    assert f"cuda:{build['cuda']}." in args["BASE_IMAGE"]
    for compose in ("compose.gpu.yml", "compose.multi-gpu.yml"):
        assert args["BASE_IMAGE"] in (deploy / compose).read_text()


def test_a_provider_that_fails_at_session_start_is_caught(models_dir: Path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """Defect 1, the silent case: onnxruntime-gpu on a host without a working driver lists the
    CUDA provider as available, then starts the session without it. Here the listing is made to
    include CUDA; onnxruntime itself then drops it when the session starts, as it does there."""
    import logging

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: the failure cannot be provoked here")
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    path = ModelStore(models_dir).ensure("w600k_mbf")[0]
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(BackendUnavailable, match="asked for CUDAExecutionProvider but would run on CPU"):
        OnnxSession(path, providers=wanted, model_name="w600k_mbf", require_gpu=True)
    with caplog.at_level(logging.WARNING, logger="facerest.runtime.onnx"):
        session = OnnxSession(path, providers=wanted, model_name="w600k_mbf")
    assert session.backend == "onnxruntime:CPUExecutionProvider"  # what /info and /metrics show
    assert "providers that failed to start: ['CUDAExecutionProvider']" in caplog.text


def test_gpu_groups_without_a_gpu_runtime_stop_with_one_error_line(models_dir: Path, tmp_path: Path) -> None:
    """FACEREST_GPUS=0 with the CPU runtime: REQUIRE_GPU is on by default, the GPU's process
    group refuses to start and the supervisor exits non-zero, saying why in one line."""
    status, output = serve_until_exit(
        {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_GPUS": "0", "FACEREST_PORT": "0"}, tmp_path
    )
    assert status != 0
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert errors[0].startswith("error: GPU 0: FACEREST_REQUIRE_GPU is on but FACEREST_RUNTIME=auto")
    assert "Traceback" not in output


def test_io_binding_path_gives_the_plain_outputs(models_dir: Path) -> None:
    """Defect 12: GPU providers run through I/O binding (pinned staging on CUDA); the binding
    path itself runs here on the CPU provider and must answer exactly as plain run() does,
    dynamic output shapes included."""
    import numpy as np

    store = ModelStore(models_dir)
    rng = np.random.default_rng(0)
    for name, shape in (("scrfd_500m_bnkps", (1, 3, 320, 416)), ("w600k_mbf", (5, 3, 112, 112))):
        path = store.ensure(name)[0]
        plain = OnnxSession(path, model_name=name)
        bound = OnnxSession(path, model_name=name, io_binding=True)
        assert plain._binding is False and bound._binding is True
        for _ in range(2):  # the binding is made afresh each call
            feeds = {plain.inputs[0].name: rng.random(shape, dtype=np.float32)}
            want, got = plain.run(feeds), bound.run(feeds)
            assert list(got) == list(want)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])


def test_gpu_preparation_runs_in_a_child_not_in_the_supervisor(models_dir: Path) -> None:
    """Defect 11: the process that goes on to supervise workers never loads the GPU runtime (its
    CUDA context would hold 300-500 MB per GPU): the check and engine builds run in a spawned
    child, whose one-line failure comes back as the parent's error."""
    code = (
        "import sys\n"
        "from facerest.config import Settings\n"
        "from facerest.errors import BackendUnavailable\n"
        "from facerest.preparation import prepare_runtime_apart\n"
        f"settings = Settings(models_dir={str(models_dir)!r}, runtime='trt', require_gpu=True)\n"
        "try:\n"
        "    prepare_runtime_apart(settings)\n"
        "except BackendUnavailable as exc:\n"
        "    print('error:', exc.detail)\n"
        "gpu_modules = ('tensorrt', 'facerest.runtime.tensorrt')\n"
        "print('loaded here:', sorted(m for m in gpu_modules if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert any(line.startswith("error: FACEREST_REQUIRE_GPU") for line in lines), done.stdout + done.stderr
    assert "loaded here: []" in lines, done.stdout
