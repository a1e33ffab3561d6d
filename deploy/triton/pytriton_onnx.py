"""Serve an exported facerest model repository through Triton on a machine without Triton's ONNX backend.

`facerest triton export DIR` writes configs for Triton's onnxruntime backend. The tritonserver
bundled in nvidia-pytriton only has the Python backend, so this script reads the same
config.pbtxt files and binds each model to a function that runs its model.onnx with onnxruntime
inside Triton (names, shapes, max batch size and dynamic batching as exported). It is what the
Triton tests run on CPU, and a way to try the Triton route on a laptop.

It needs its own environment (pytriton pins numpy<2, facerest numpy 2):
    python3.11 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton==0.7.0 onnxruntime==1.24.1
    LD_LIBRARY_PATH=$(python3.11 -c 'import sysconfig;print(sysconfig.get_config_var("LIBDIR"))') \
        .venv-triton/bin/python deploy/triton/pytriton_onnx.py DIR --grpc-port 8001 --http-port 8000
Stop it with SIGTERM or Ctrl-C. It imports nothing from facerest on purpose.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import signal
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from tritonclient.grpc import model_config_pb2

_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_UINT8": np.uint8, "TYPE_INT64": np.int64}


def _runner(session: ort.InferenceSession, output_names: list[str]):  # type: ignore[no-untyped-def]
    input_names = [i.name for i in session.get_inputs()]

    @batch
    def infer(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        results = session.run(output_names, {name: feeds[name] for name in input_names})
        return dict(zip(output_names, results, strict=True))

    def unbatched(requests):  # type: ignore[no-untyped-def]
        # max_batch_size 0: each request's tensors go to the graph as they are
        answers = []
        for request in requests:
            results = session.run(output_names, {name: request[name] for name in input_names})
            answers.append(dict(zip(output_names, results, strict=True)))
        return answers

    return infer, unbatched


def bind_repository(triton: Triton, repository: pathlib.Path, threads: int) -> list[str]:
    names = []
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(config_path.parent / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        output_names = [o.name for o in config.output]
        batched_fn, unbatched_fn = _runner(session, output_names)
        batcher = (
            DynamicBatcher(max_queue_delay_microseconds=config.dynamic_batching.max_queue_delay_microseconds)
            if config.HasField("dynamic_batching")
            else None
        )
        triton.bind(
            model_name=config.name,
            infer_func=batched_fn if config.max_batch_size > 0 else unbatched_fn,
            inputs=[Tensor(name=t.name, dtype=_DTYPES[model_config_pb2.DataType.Name(t.data_type)],
                           shape=tuple(t.dims)) for t in config.input],
            outputs=[Tensor(name=t.name, dtype=_DTYPES[model_config_pb2.DataType.Name(t.data_type)],
                            shape=tuple(t.dims)) for t in config.output],
            config=ModelConfig(max_batch_size=config.max_batch_size, batching=config.max_batch_size > 0,
                               batcher=batcher or DynamicBatcher()),
            strict=True,
        )
        names.append(config.name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=pathlib.Path)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per model")
    parser.add_argument("--workspace", type=pathlib.Path, default=None,
                        help="a folder that does not exist yet (default: a fresh temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    workspace = args.workspace or pathlib.Path(tempfile.mkdtemp(prefix="pytriton-")) / "workspace"
    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, grpc_address="127.0.0.1", http_address="127.0.0.1")
    with Triton(config=config, workspace=workspace) as triton:
        names = bind_repository(triton, args.repository, args.threads)
        if not names:
            sys.exit(f"no */config.pbtxt under {args.repository}")
        # SIGTERM ends serve() like Ctrl-C does, so the context manager stops tritonserver
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        logging.getLogger("pytriton_onnx").info("serving %s", ", ".join(names))
        try:
            triton.serve()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
