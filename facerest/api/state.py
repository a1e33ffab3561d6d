"""What the app holds while it runs: settings, the analyzer, the worker-thread limiter, metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread

from facerest.api.metrics import Metrics
from facerest.config import Settings
from facerest.events import EventBus
from facerest.pipeline import FaceAnalyzer

if TYPE_CHECKING:
    from facerest.gallery.service import GalleryService

T = TypeVar("T")


@dataclass
class AppState:
    settings: Settings
    analyzer: FaceAnalyzer
    metrics: Metrics
    limiter: anyio.CapacityLimiter
    gallery: GalleryService | None = None  # set by the gallery router's lifespan (issue 6)
    #: what the rooms did, for whoever listens (the review queue; later MQTT, webhooks)
    events: EventBus = field(default_factory=EventBus)

    async def run(self, work: Callable[[], T]) -> T:
        """Run blocking work in a worker thread, admitted by the pipeline's bounded queue."""
        with self.analyzer.admission.admit():
            self.metrics.in_flight.set(self.analyzer.admission.inside)
            return await anyio.to_thread.run_sync(work, limiter=self.limiter)
