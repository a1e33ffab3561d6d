"""One inference thread that forms batches across requests.

Request threads submit jobs (a stack of inputs for one model and input shape); the inference
thread runs one model at a time on a batch of jobs from several requests, so 8 concurrent
one-face requests become one batch of 8 instead of 8 calls. One thread, one session per model:
the cores go to the model's own intra-op threads and never oversubscribe.

Requests are served in turn (issue 14): the next batch is for the request (`owner`) served
least so far, across all models, and is filled with one job per request in that order, so a
request with 100 batches queued delays a one-face request by the batch already running, not by
100. Service is counted in seconds of inference (issue 28), each queue's (model and input shape)
measured per input as its batches run: a detector pass over a 2048x2048 canvas costs ten of a
640x640 one, and a request that had one has been served that much, where counting inputs would
rank it with a request that had one face embedded. A job past its deadline (`expires`) is
withdrawn when the next batch is formed, even if its request has not yet noticed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray | dict[str, np.ndarray]]


@dataclass(slots=True)
class _Job:
    items: np.ndarray
    future: Future
    owner: Hashable
    expires: float = float("inf")
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Queue:
    runner: Runner
    max_batch: int
    # per owner (a request), its jobs in order; owners in the order they are next served
    owners: dict[Hashable, deque[_Job]] = field(default_factory=dict)
    # seconds of inference run per owner, shared by every queue of the scheduler: a request's
    # detector work counts when its recognizer work is ordered against other requests'
    served: dict[Hashable, float] = field(default_factory=dict)
    # what one input of this queue costs, from its batches so far (a moving average)
    seconds_per_input: float = 0.0

    def items(self) -> int:
        return sum(len(j.items) for jobs in self.owners.values() for j in jobs)

    def first(self) -> tuple[float, float] | None:
        """(seconds served, time queued) of the job this queue would run first: the job of the
        owner served least, oldest first; None when empty."""
        return min(
            ((self.served.get(o, 0), jobs[0].enqueued) for o, jobs in self.owners.items()), default=None
        )

    def withdraw_expired(self, now: float) -> None:
        for owner in list(self.owners):
            jobs = self.owners[owner]
            kept = deque(j for j in jobs if j.expires > now or not j.future.cancel())
            if kept:
                self.owners[owner] = kept
            else:
                del self.owners[owner]

    def cost(self, inputs: int) -> float:
        """Seconds `inputs` of this queue are expected to take; before its first batch, a token
        that still takes the owners of one batch in turn."""
        return inputs * (self.seconds_per_input or 1e-6)

    def charge(self, jobs: list[_Job], seconds: float) -> None:
        """Correct the owners' service from what was expected when the batch was formed to what
        its run took, and learn this queue's cost per input from it."""
        inputs = sum(len(j.items) for j in jobs)
        per_input = seconds / inputs
        for job in jobs:
            if job.owner in self.served:
                self.served[job.owner] += len(job.items) * per_input - self.cost(len(job.items))
        known = self.seconds_per_input
        self.seconds_per_input = per_input if known == 0.0 else 0.8 * known + 0.2 * per_input

    def take(self) -> list[_Job]:
        """One batch: a job from each owner in turn while they fit, the owner served least so far
        first, so a new one-face request goes ahead of requests with 100 batches."""
        jobs: list[_Job] = []
        count = 0
        progressed = True
        while self.owners and count < self.max_batch and progressed:
            progressed = False
            for owner in sorted(self.owners, key=lambda o: self.served.get(o, 0)):
                queue = self.owners[owner]
                if jobs and count + len(queue[0].items) > self.max_batch:
                    continue
                job = queue.popleft()
                jobs.append(job)
                count += len(job.items)
                self.served[owner] = self.served.get(owner, 0.0) + self.cost(len(job.items))
                progressed = True
                if not queue:
                    del self.owners[owner]
                if count >= self.max_batch:
                    break
        return jobs


@dataclass(slots=True)
class SchedulerStats:
    batches: int = 0
    items: int = 0
    by_model: dict[str, list[int]] = field(default_factory=dict)  # model -> [batches, items]


def _slice(out: np.ndarray | dict[str, np.ndarray], start: int, stop: int) -> Any:
    if isinstance(out, dict):
        return {k: v[start:stop] for k, v in out.items()}
    return out[start:stop]


def _concat(outs: list[Any]) -> Any:
    if len(outs) == 1:
        return outs[0]
    if isinstance(outs[0], dict):
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return np.concatenate(outs)


class InferenceScheduler:
    def __init__(self, batch_wait_s: float = 0.0) -> None:
        self.batch_wait_s = batch_wait_s
        self.stats = SchedulerStats()
        self._cond = threading.Condition()
        self._queues: dict[Hashable, _Queue] = {}
        self._requests = 0  # requests inside the pipeline, see `request`
        self._served: dict[Hashable, float] = {}  # seconds run per owner, see `_Queue.take`
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="facerest-inference", daemon=True)
        self._thread.start()

    def submit(
        self,
        model: str,
        runner: Runner,
        items: np.ndarray,
        max_batch: int,
        owner: Hashable | None = None,
        expires: float = float("inf"),
    ) -> Future:
        """Queue `items` (N, ...) for `runner`; the future gets the N output rows.

        `owner` (the request) is who the job is served for in turn; past `expires`
        (time.monotonic()) a job not yet run is cancelled."""
        future: Future = Future()
        if len(items) == 0:
            future.set_result(np.zeros((0,), np.float32))
            return future
        key = (model, items.shape[1:], items.dtype.str)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the inference scheduler is stopped")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(runner, max(1, max_batch), served=self._served)
            owner = future if owner is None else owner
            queue.owners.setdefault(owner, deque()).append(_Job(items, future, owner, expires))
            self._cond.notify()
        return future

    @contextmanager
    def request(self) -> Iterator[None]:
        """Held by a request while it is in the pipeline: tells the batcher whether waiting for
        more work can pay (see `_worth_waiting`)."""
        with self._cond:
            self._requests += 1
        try:
            yield
        finally:
            with self._cond:
                self._requests -= 1

    def _worth_waiting(self, queue: _Queue) -> bool:
        """Whether another request may add to `queue` within the batch wait. Only one between two
        steps can (cropping faces before the recognizer, say): a request with a job queued waits
        for it, and one in detection waits for this very thread. With every request accounted for
        by a queued job, e.g. a single client, the wait would only add latency."""
        if self.batch_wait_s <= 0 or queue.items() >= queue.max_batch:
            return False
        queued = {owner for q in self._queues.values() for owner in q.owners}
        return self._requests > len(queued)

    def release(self, model: str) -> None:
        """Forget the queues of `model` once they are empty: they hold its runner, hence its
        session (a model loaded for a while, as a gallery's re-embedding loads its target)."""
        with self._cond:
            for key in [k for k, q in self._queues.items() if k[0] == model and not q.owners]:
                del self._queues[key]

    def depth(self) -> int:
        with self._cond:
            return sum(q.items() for q in self._queues.values())

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued work, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take(self) -> tuple[Hashable, _Queue, list[_Job]] | None:
        with self._cond:
            while True:
                now = time.monotonic()
                for q in self._queues.values():
                    q.withdraw_expired(now)
                waiting = [(t, k) for k, q in self._queues.items() if (t := q.first()) is not None]
                if waiting:
                    break
                if self._stopping:
                    return None
                self._cond.wait()
            # the model whose next job is for the request served least (then the oldest job)
            key = min(waiting, key=lambda pair: pair[0])[1]
            queue = self._queues[key]
            owners = {o for q in self._queues.values() for o in q.owners}
            if len(self._served) > 4 * len(owners) + 256:
                # owners that queue in bursts keep their count between bursts; the gone are forgotten
                for owner in [o for o in self._served if o not in owners]:
                    del self._served[owner]
            if self._worth_waiting(queue):
                self._cond.wait(self.batch_wait_s)
            return key, queue, queue.take()

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            key, queue, jobs = taken
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            try:
                started = time.perf_counter()
                batch = jobs[0].items if len(jobs) == 1 else np.concatenate([j.items for j in jobs])
                outs = [
                    queue.runner(batch[i : i + queue.max_batch])
                    for i in range(0, len(batch), queue.max_batch)
                ]
                out = _concat(outs)
                with self._cond:
                    queue.charge(jobs, time.perf_counter() - started)
            except BaseException as exc:  # every waiting request must hear of the failure
                log.exception("inference failed for %s", key[0])
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            count = sum(len(job.items) for job in jobs)
            # counted before anyone hears back, so a caller reading the stats sees its own batch
            stats = self.stats
            stats.batches += 1
            stats.items += count
            per = stats.by_model.setdefault(str(key[0]), [0, 0])
            per[0] += 1
            per[1] += count
            offset = 0
            for job in jobs:
                job.future.set_result(_slice(out, offset, offset + len(job.items)))
                offset += len(job.items)
