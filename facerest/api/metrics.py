"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.responses import PlainTextResponse, Response

from facerest.api.access import allow
from facerest.events import EventBus
from facerest.models.faces import ImageResult
from facerest.pipeline.scheduler import SchedulerStats


class InferenceCollector(Collector):
    """Model runs and the inputs they carried, per model, read from the scheduler when scraped:
    inputs / batches is the batch size dynamic batching achieves, and a detector that ran more
    inputs than images arrived shows the close-up pass at work."""

    def __init__(self, stats: SchedulerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        batches = CounterMetricFamily(
            "facerest_inference_batches", "Model runs (one batch each)", labels=["model"]
        )
        inputs = CounterMetricFamily(
            "facerest_inference_inputs", "Inputs run through the model (images or faces)", labels=["model"]
        )
        # dict() copies in one step under the GIL while the inference thread adds to it
        for model, (runs, items) in sorted(dict(self.stats.by_model).items()):
            batches.add_metric([model], runs)
            inputs.add_metric([model], items)
        yield batches
        yield inputs


class EventsCollector(Collector):
    """Per listener of the event stream, the events it got and those it missed (its queue full)."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def collect(self) -> Iterator[CounterMetricFamily]:
        delivered = CounterMetricFamily(
            "facerest_events_delivered", "Events queued for a listener", labels=["listener"]
        )
        dropped = CounterMetricFamily(
            "facerest_events_dropped", "Events a listener missed (its queue was full)", labels=["listener"]
        )
        for subscription in self.bus.subscriptions():
            delivered.add_metric([subscription.name], subscription.delivered)
            dropped.add_metric([subscription.name], subscription.dropped)
        yield delivered
        yield dropped


class Metrics:
    def __init__(
        self,
        inference: SchedulerStats,
        backends: dict[str, str] | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        # what really runs each model ("onnxruntime:CPUExecutionProvider" -> runtime, provider):
        # a GPU provider that did not start shows here, not only in the log
        self.backend = Gauge(
            "facerest_model_backend",
            "1 for the runtime and provider running each model",
            ["model", "runtime", "provider"],
            registry=self.registry,
        )
        for model, backend in (backends or {}).items():
            runtime, _, provider = backend.partition(":")
            self.backend.labels(model, runtime, provider or runtime).set(1)
        self.requests = Counter(
            "facerest_requests",
            "HTTP requests answered",
            ["method", "path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "facerest_request_seconds",
            "HTTP request latency",
            ["path"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.errors = Counter("facerest_errors", "Error answers by code", ["code"], registry=self.registry)
        self.images = Counter("facerest_images", "Images processed", ["status"], registry=self.registry)
        self.faces = Counter("facerest_faces", "Faces returned", registry=self.registry)
        self.queue_depth = Gauge(
            "facerest_queue_depth", "Inputs waiting for inference", registry=self.registry
        )
        self.in_flight = Gauge(
            "facerest_requests_in_flight", "Requests inside the pipeline", registry=self.registry
        )
        self.registry.register(InferenceCollector(inference))
        if events is not None:
            self.registry.register(EventsCollector(events))

    def record_results(self, results: list[ImageResult]) -> None:
        for result in results:
            self.images.labels("ok" if result.ok else "failed").inc()
            self.faces.inc(len(result.faces))


router = APIRouter()


@router.get(
    "/metrics",
    dependencies=[Depends(allow("metrics"))],
    summary="Prometheus metrics: requests, latencies, faces, queue depth, errors by code",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    state = request.app.state.facerest
    analyzer = state.analyzer
    # sampled when scraped: the scheduler's queue and the admission counter are the truth
    state.metrics.queue_depth.set(analyzer.scheduler.depth())
    state.metrics.in_flight.set(analyzer.admission.inside)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
