"""MXNet checkpoints -> ONNX: a small network shaped like the InsightFace families, built and run by
real MXNet in its own virtualenv, converted, and run by ONNX Runtime with the same outputs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import ROOT

from facerest.config import Settings
from facerest.tools.mxnet_convert import (
    CONVERTED_MARKER,
    ConversionError,
    convert,
    convert_dropped_models,
    ensure_env,
)

ENV = ROOT / ".venv-mxnet"  # what `make test` creates (`make mxnet-env`)
EPOCH = 7

#: conv, BatchNorm with fix_gamma (MXNet's default) and a gamma drifted from 1, PReLU, pooling, FC,
#: and InsightFace's fc1 BatchNorm: every part the exporter gets wrong for those models
BUILD = textwrap.dedent(
    """
    import sys
    import mxnet as mx
    import numpy as np

    prefix, epoch, check = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    data = mx.sym.Variable("data")
    x = (data - 127.5) * 0.0078125
    x = mx.sym.Convolution(x, num_filter=8, kernel=(3, 3), stride=(2, 2), pad=(1, 1), no_bias=True,
                           name="conv0")
    x = mx.sym.BatchNorm(x, fix_gamma=True, eps=2e-5, momentum=0.9, name="bn0")
    x = mx.sym.LeakyReLU(x, act_type="prelu", name="relu0")
    x = mx.sym.Convolution(x, num_filter=16, kernel=(3, 3), stride=(2, 2), pad=(1, 1), name="conv1")
    x = mx.sym.BatchNorm(x, fix_gamma=False, eps=2e-5, name="bn1")
    x = mx.sym.LeakyReLU(x, act_type="prelu", name="relu1")
    x = mx.sym.Pooling(x, kernel=(4, 4), stride=(4, 4), pool_type="avg", name="pool1")
    x = mx.sym.FullyConnected(mx.sym.Flatten(x), num_hidden=128, name="pre_fc1")
    symbol = mx.sym.BatchNorm(x, fix_gamma=True, eps=2e-5, name="fc1")

    shape = (1, 3, 112, 112)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=shape)
    rng = np.random.default_rng(0)
    args = {
        n: mx.nd.array(rng.normal(0.3, 0.2, s).astype("float32"))
        for n, s in zip(symbol.list_arguments(), arg_shapes) if n != "data"
    }
    aux = {
        n: mx.nd.array(rng.uniform(0.1, 1.0, s).astype("float32"))
        for n, s in zip(symbol.list_auxiliary_states(), aux_shapes)
    }
    module = mx.mod.Module(symbol, data_names=["data"], label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", shape)], for_training=False)
    module.set_params(args, aux)
    module.save_checkpoint(prefix, epoch)

    # MXNet's own answer for three images (the converted graph must take any batch)
    batch = np.random.default_rng(1).uniform(0, 255, (3, 3, 112, 112)).astype("float32")
    module = mx.mod.Module(symbol, data_names=["data"], label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", batch.shape)], for_training=False)
    module.set_params(args, aux)
    module.forward(mx.io.DataBatch([mx.nd.array(batch)]), is_train=False)
    np.savez(check, input=batch, output=module.get_outputs()[0].asnumpy())
    """
)


@pytest.fixture(scope="module")
def mxnet_env() -> Path:
    try:
        ensure_env(ENV, create=True)
    except ConversionError as exc:
        pytest.skip(f"no MXNet environment ({exc.detail})")
    return ENV


@pytest.fixture(scope="module")
def checkpoint(mxnet_env: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(prefix, reference .npz): a checkpoint saved by MXNet and MXNet's outputs on a fixed batch."""
    folder = tmp_path_factory.mktemp("mxnet_checkpoint")
    script, prefix, check = folder / "build.py", folder / "tinyface", folder / "mxnet_outputs.npz"
    script.write_text(BUILD)
    python = mxnet_env / "bin" / "python"
    done = subprocess.run(
        [str(python), str(script), str(prefix), str(EPOCH), str(check)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert Path(f"{prefix}-symbol.json").is_file() and Path(f"{prefix}-{EPOCH:04d}.params").is_file()
    return prefix, check


def test_converted_model_gives_mxnet_outputs(checkpoint, mxnet_env, tmp_path):
    prefix, check = checkpoint
    models = tmp_path / "models"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    env.update({"FACEREST_MODELS_DIR": str(models), "FACEREST_MXNET_ENV": str(mxnet_env)})
    command = [sys.executable, "-m", "facerest.cli", "models", "convert-mxnet", str(prefix), str(EPOCH)]
    command += ["--out", "tiny_arcface.onnx", "--task", "recognition", "--family", "arcface"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    print("\n" + done.stdout.strip())
    for repair in ("PReLU slope relu0_gamma -> [8, 1, 1]", "bn0_gamma fix_gamma", "fc1_gamma fix_gamma"):
        assert repair in done.stdout
    assert "dynamic batch on data" in done.stdout

    # registered by name: an override entry with the md5 of the file, and the file where the store looks
    from facerest.models.store import ModelStore
    from facerest.preparation import load_face_model

    store = ModelStore(models)
    entry = store.entry("tiny_arcface")
    [path] = store.ensure("tiny_arcface")
    assert path == models / "tiny_arcface" / "tiny_arcface.onnx"
    assert (entry.task, entry.family, entry.input_shape) == ("recognition", "arcface", [1, 3, 112, 112])

    # the same outputs from ONNX Runtime (service environment) as from MXNet, on a batch of three
    reference = np.load(check)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [ours] = session.run(None, {"data": reference["input"]})
    expected = reference["output"]
    diff = float(np.abs(ours - expected).max())
    scale = float(np.abs(expected).max())
    print(f"ONNX Runtime vs MXNet on (3, 3, 112, 112): max abs diff {diff:.3g} (outputs up to {scale:.3g})")
    assert ours.shape == expected.shape == (3, 128)
    assert diff <= 1e-4 * max(1.0, scale)

    # and the service loads it like any recognizer: its normalisation is found inside the graph
    recognizer = load_face_model(entry, [path], Settings(models_dir=models, threads=1))
    crops = np.random.default_rng(2).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    rows = recognizer.infer(recognizer.prepare(crops))
    assert np.asarray(rows).shape[0] == 2 and np.isfinite(rows).all()


def test_checkpoint_dropped_in_models_folder_is_converted_at_start(checkpoint, mxnet_env, tmp_path):
    from facerest.preparation import prepare_models

    prefix, _ = checkpoint
    drop = tmp_path / "mxnet" / "tiny_dropped"
    drop.mkdir(parents=True)
    for suffix in ("-symbol.json", f"-{EPOCH:04d}.params"):
        shutil.copy(f"{prefix}{suffix}", drop / f"model{suffix}")
    settings = Settings(models_dir=tmp_path, mxnet_env=mxnet_env, rec_name="", ga_name="", threads=1)
    prepare_models(settings)
    converted = tmp_path / "custom" / "tiny_dropped.onnx"
    assert converted.is_file() and (drop / CONVERTED_MARKER).is_file()
    session = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    stamp = converted.stat().st_mtime_ns
    assert convert_dropped_models(tmp_path, mxnet_env) == []  # converted once, not at every start
    assert converted.stat().st_mtime_ns == stamp


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConversionError, match=re.escape("nothing-symbol.json does not exist")):
        convert(tmp_path / "nothing", 0, "x", tmp_path, tmp_path / "no-env", create_env=False)


def test_without_the_environment_checkpoints_are_left_alone(tmp_path):
    (tmp_path / "mxnet" / "model").mkdir(parents=True)
    assert convert_dropped_models(tmp_path, tmp_path / "no-env") == []
    assert not (tmp_path / "custom").exists()
