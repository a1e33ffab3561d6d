"""A request past its time limit answers at once and withdraws the inference it queued."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import package_photo, read_bgr

from facerest.errors import RequestTimeout
from facerest.pipeline import ExtractOptions


def test_timed_out_request_withdraws_its_queued_work(analyzer):
    image = read_bgr(package_photo("players.jpg"))
    detector = analyzer.models.detector.name
    release = threading.Event()

    def hold(batch: np.ndarray) -> np.ndarray:  # keeps the inference thread busy
        release.wait(10)
        return batch

    blocker = analyzer.scheduler.submit("hold", hold, np.zeros((1, 1), np.float32), 1)
    before = analyzer.scheduler.stats.by_model.get(detector, [0, 0])[1]
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        analyzer.process([image, image], ExtractOptions(), deadline=time.monotonic() + 0.2)
    assert time.monotonic() - started < 2
    release.set()
    blocker.result(10)
    # the two detector jobs queued behind the blocker never ran
    analyzer.scheduler.submit("hold", hold, np.zeros((1, 1), np.float32), 1).result(10)
    assert analyzer.scheduler.stats.by_model.get(detector, [0, 0])[1] == before
    # and the analyzer still answers the next request
    [result] = analyzer.process([image], ExtractOptions(extract_embedding=False))
    assert len(result.faces) > 5
