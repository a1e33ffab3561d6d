"""Models served by a Triton Inference Server, over gRPC or HTTP (tritonclient).

The session only moves tensors: it asks Triton for the model's inputs and outputs once, then
sends the feeds and reads every output back. Triton's dynamic batcher may merge our batches
with other clients' requests; the answer is the same.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from facerest.errors import BackendUnavailable, InferenceBackendError
from facerest.runtime.base import TensorSpec

if TYPE_CHECKING:
    from facerest.config import Settings

log = logging.getLogger(__name__)

_NUMPY_TYPES = {"FP32": "float32", "FP16": "float16", "UINT8": "uint8", "INT64": "int64", "INT32": "int32"}


def parse_uri(uri: str) -> tuple[str, str]:
    """("grpc" | "http", "host:port"); a bare host:port means gRPC, Triton's fast path."""
    parts = urlsplit(uri if "://" in uri else f"grpc://{uri}")
    if parts.scheme not in ("grpc", "http") or not parts.netloc:
        raise BackendUnavailable(f"FACEREST_TRITON_URI={uri!r} is not grpc://host:port or http://host:port")
    default_port = 8001 if parts.scheme == "grpc" else 8000
    return parts.scheme, parts.netloc if parts.port else f"{parts.netloc}:{default_port}"


class TritonSession:
    def __init__(self, model_name: str, settings: Settings, *, wait_ready_s: float | None = None) -> None:
        self.protocol, self.address = parse_uri(settings.triton_uri)
        self.model_name = model_name
        self.timeout_s = settings.triton_timeout_s
        if self.protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self._module = client_module
        # the HTTP client runs on gevent and may only be used by the thread that made it
        self._local = threading.local()
        self._wait_ready(settings.triton_timeout_s if wait_ready_s is None else wait_ready_s)
        config = self._config()
        self.max_batch_size = int(config.get("max_batch_size", 0))
        batched = self.max_batch_size > 0
        self.inputs = [self._spec(t, batched) for t in config.get("input", [])]
        self.outputs = [self._spec(t, batched) for t in config.get("output", [])]
        self._input_types = {t["name"]: t["data_type"].removeprefix("TYPE_") for t in config["input"]}
        self.backend = f"triton:{self.protocol}://{self.address}/{model_name}"
        log.info("%s runs on Triton at %s (%s)", model_name, self.address, self.protocol)

    @property
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(self.address)
            else:
                client = self._module.InferenceServerClient(
                    self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
        return client

    def _wait_ready(self, patience_s: float) -> None:
        """Triton may still be loading (compose starts both at once): wait for it, bounded."""
        deadline = time.monotonic() + patience_s
        last: Exception | None = None
        while True:
            try:
                if self._client.is_model_ready(self.model_name):
                    return
            except Exception as exc:  # connection refused, DNS: the server is not up yet
                last = exc
            if time.monotonic() >= deadline:
                reason = f": {last}" if last else " (the server answers, the model is not loaded)"
                raise BackendUnavailable(
                    f"Triton model {self.model_name!r} is not ready at {self.protocol}://{self.address}"
                    f"{reason}; export it with `facerest triton export DIR` and start Triton on DIR"
                )
            time.sleep(0.5)

    def _config(self) -> dict[str, Any]:
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            reply = self._client.get_model_config(self.model_name).config
            return MessageToDict(reply, preserving_proto_field_name=True)
        return self._client.get_model_config(self.model_name)

    @staticmethod
    def _spec(tensor: dict[str, Any], batched: bool) -> TensorSpec:
        dims: tuple[int | None, ...] = tuple(None if int(d) < 0 else int(d) for d in tensor.get("dims", []))
        if batched:
            dims = (None, *dims)
        kind = tensor.get("data_type", "TYPE_FP32").removeprefix("TYPE_")
        return TensorSpec(tensor["name"], dims, _NUMPY_TYPES.get(kind, kind.lower()))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(feeds.values())))
        limit = self.max_batch_size
        if limit <= 0 or rows <= limit:
            return self._infer(feeds)
        # Triton refuses a request above the model's max_batch_size: send it in slices
        parts = [self._infer({k: v[i : i + limit] for k, v in feeds.items()}) for i in range(0, rows, limit)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = []
        for name, array in feeds.items():
            kind = self._input_types.get(name, "FP32")
            data = np.ascontiguousarray(array, dtype=_NUMPY_TYPES.get(kind, array.dtype))
            tensor = self._module.InferInput(name, list(data.shape), kind)
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        wanted = [self._module.InferRequestedOutput(o.name) for o in self.outputs]
        try:
            if self.protocol == "grpc":
                reply = self._client.infer(
                    self.model_name, inputs, outputs=wanted, client_timeout=self.timeout_s
                )
            else:
                reply = self._client.infer(self.model_name, inputs, outputs=wanted)
        except Exception as exc:  # tritonclient raises its own exception types per protocol
            raise InferenceBackendError(
                f"Triton at {self.address} failed on {self.model_name}: {exc}"
            ) from exc
        return {o.name: reply.as_numpy(o.name) for o in self.outputs}

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
