"""The inference scheduler batches jobs across callers, keeps rows in order, and reports failures to all."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

from facerest.pipeline.scheduler import InferenceScheduler


class GatedRunner:
    """Doubles its input; the first call waits for a gate so that later jobs queue up behind it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batch_sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.started.set()
        if not self.batch_sizes:
            self.gate.wait(10)
        self.batch_sizes.append(len(batch))
        return batch * 2


def test_jobs_queued_together_run_as_one_batch_in_order():
    scheduler = InferenceScheduler()
    runner = GatedRunner()
    try:
        first = scheduler.submit("m", runner, np.zeros((1, 3), np.float32), max_batch=8)
        assert runner.started.wait(10)
        jobs = [np.full((n, 3), n, np.float32) for n in (1, 2, 3)]
        futures = [scheduler.submit("m", runner, job, max_batch=8) for job in jobs]
        runner.gate.set()
        assert first.result(10).shape == (1, 3)
        for job, future in zip(jobs, futures, strict=True):
            np.testing.assert_array_equal(future.result(10), job * 2)
        assert runner.batch_sizes == [1, 6]  # the three queued jobs ran as one call
        assert scheduler.stats.by_model["m"] == [2, 7]
    finally:
        scheduler.close()


def test_max_batch_splits_large_jobs_and_keeps_shapes_apart():
    scheduler = InferenceScheduler()
    runner = GatedRunner()
    runner.gate.set()
    try:
        big = scheduler.submit("m", runner, np.ones((10, 3), np.float32), max_batch=4)
        other_shape = scheduler.submit("m", runner, np.ones((2, 5), np.float32), max_batch=4)
        assert big.result(10).shape == (10, 3)
        assert other_shape.result(10).shape == (2, 5)
        assert max(runner.batch_sizes) <= 4
    finally:
        scheduler.close()


def test_a_failing_batch_fails_every_job_in_it():
    scheduler = InferenceScheduler()
    gate = threading.Event()

    def broken(batch: np.ndarray) -> np.ndarray:
        gate.wait(10)
        raise ValueError("model exploded")

    try:
        futures = [scheduler.submit("m", broken, np.ones((1, 2), np.float32), 8) for _ in range(3)]
        gate.set()
        for future in futures:
            with pytest.raises(ValueError, match="exploded"):
                future.result(10)
        # the thread survives: the next job runs
        assert scheduler.submit("n", lambda b: b + 1, np.zeros((1, 2), np.float32), 8).result(10)[0, 0] == 1
    finally:
        scheduler.close()


def test_batch_wait_only_when_another_request_can_join():
    """A lone request's job runs at once, not after the batch wait; with a second request in the
    pipeline that has nothing queued yet, the job waits for it and both run as one batch."""
    scheduler = InferenceScheduler(batch_wait_s=5.0)  # long: either outcome is unmistakable
    runner = GatedRunner()
    runner.gate.set()
    try:
        with scheduler.request():
            started = time.monotonic()
            scheduler.submit("m", runner, np.ones((1, 3), np.float32), max_batch=8).result(10)
            assert time.monotonic() - started < 2.5
        assert runner.batch_sizes == [1]

        with scheduler.request(), scheduler.request():
            first = scheduler.submit("m", runner, np.ones((1, 3), np.float32), max_batch=8)
            time.sleep(0.2)  # the first job is now waiting for the second request's
            assert not first.done()
            second = scheduler.submit("m", runner, np.ones((1, 3), np.float32), max_batch=8)
            first.result(10), second.result(10)
        assert runner.batch_sizes == [1, 2]
    finally:
        scheduler.close()


def test_a_small_request_goes_ahead_of_a_big_one_queued_before_it():
    """Issue 14: jobs are taken per request, the least served first, not in arrival order."""
    scheduler = InferenceScheduler()
    runner = GatedRunner()
    try:
        scheduler.submit("m", runner, np.zeros((8, 3), np.float32), max_batch=8, owner="big")
        assert runner.started.wait(10)
        big = [
            scheduler.submit("m", runner, np.ones((8, 3), np.float32), max_batch=8, owner="big")
            for _ in range(20)
        ]
        small = scheduler.submit("m", runner, np.ones((1, 3), np.float32), max_batch=8, owner="small")
        runner.gate.set()
        small.result(10)
        for future in big:
            future.result(10)
        # the batch running when it came, then its own: the big request's 20 batches wait
        assert runner.batch_sizes == [8, 1] + [8] * 20
    finally:
        scheduler.close()


def test_service_is_counted_in_seconds_of_inference_not_in_inputs():
    """Issue 28: a request whose one input took long (a detector pass over a 2048x2048 canvas)
    has been served more than one whose input was quick, so the quick request's next job goes
    first; counting inputs, both had one and the older job (the slow request's) went first."""
    scheduler = InferenceScheduler()
    order: list[str] = []
    gate = threading.Event()

    def slow(batch: np.ndarray) -> np.ndarray:
        if not order:
            gate.wait(10)
        time.sleep(0.05)
        order.append(f"slow{int(batch[0, 0])}")
        return batch

    def quick(batch: np.ndarray) -> np.ndarray:
        order.append(f"quick{int(batch[0, 0])}")
        return batch

    def job(runner, model: str, owner: str, number: int):  # type: ignore[no-untyped-def]
        return scheduler.submit(model, runner, np.full((1, 2), number, np.float32), max_batch=1, owner=owner)

    try:
        futures = [job(slow, "canvas", "big", 1)]
        while scheduler.depth():  # the slow request's first job is running (held at the gate)
            time.sleep(0.005)
        futures += [
            job(slow, "canvas", "big", 2),
            job(quick, "face", "small", 1),
            job(quick, "face", "small", 2),
        ]
        gate.set()
        for future in futures:
            future.result(10)
        assert order == ["slow1", "quick1", "quick2", "slow2"]
    finally:
        scheduler.close()


def test_jobs_past_their_deadline_are_withdrawn_unrun():
    scheduler = InferenceScheduler()
    runner = GatedRunner()
    try:
        first = scheduler.submit("m", runner, np.zeros((8, 3), np.float32), max_batch=8)
        assert runner.started.wait(10)
        soon = time.monotonic() + 0.05
        late = [
            scheduler.submit("m", runner, np.ones((8, 3), np.float32), max_batch=8, owner="r", expires=soon)
            for _ in range(5)
        ]
        time.sleep(0.1)
        runner.gate.set()
        first.result(10)
        for future in late:
            with pytest.raises(CancelledError):
                future.result(10)
        assert runner.batch_sizes == [8]  # only the batch that was running
    finally:
        scheduler.close()
