"""Unlabelled faces grouped into people, at the calibrated decision point.

The method is average-linkage agglomerative clustering (scipy): two groups are one person when
their faces are, on average, at least as similar as the decision threshold (the similarity at the
calibrated FMR). Average linkage does not chain strangers together through one look-alike the
way single linkage (the threshold graph's connected components) does, and needs no minimum
cluster size as HDBSCAN does (a person seen once is a cluster of one, not noise); the three are
measured side by side in tests/test_clustering.py.

Feedback: "these two faces are different people" is a cannot-link constraint: the distance of
that pair is made so large that no group holding both can form under average linkage.

Incremental: a new face joins the existing cluster it is, on average, most similar to when that
reaches the threshold (and no constraint forbids it); the faces that join none are clustered
among themselves.

Large groupings run in a worker process of lower priority (issue 28): scipy's linkage holds the
GIL for its whole run (about 1 s at 5,000 faces, when no request thread and not the event loop
can run) and the distance matrix takes every core, which the requests being served need first.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Literal

import numpy as np

from facerest.errors import FeatureUnavailable

log = logging.getLogger(__name__)

Method = Literal["average", "single", "hdbscan"]
#: the distance given to a pair known to be different people (forbids any merge holding both)
APART = 1e9
#: groupings of at least this many faces run in the worker process (below it the hop costs more
#: than the GIL is held: 1,000 faces link in ~40 ms)
WORKER_FROM = 1000
#: the worker's niceness: the server's threads get the cores first
WORKER_NICENESS = 10

_worker: ProcessPoolExecutor | None = None
_worker_failed = False  # once it could not run, groupings stay in this process
_worker_lock = threading.Lock()
REPRESENTATIVES = 3


@dataclass(slots=True)
class Cluster:
    label: int  # as `cluster` / `assign` gave it (kept across incremental updates)
    members: list[int]  # indices into the clustered faces
    representatives: list[int]  # the most central members, best first

    @property
    def size(self) -> int:
        return len(self.members)


def cluster(
    embeddings: np.ndarray,
    threshold: float,
    cannot_link: Iterable[tuple[int, int]] = (),
    method: Method = "average",
) -> np.ndarray:
    """A cluster label (0..k-1, in order of first appearance) per row of unit `embeddings`."""
    count = len(embeddings)
    if count == 0:
        return np.zeros(0, np.int64)
    if count == 1:
        return np.zeros(1, np.int64)
    if count >= WORKER_FROM and method != "hdbscan" and not _worker_failed:
        try:
            job = worker().submit(_linked, np.asarray(embeddings), threshold, list(cannot_link), method)
            return job.result()
        except (BrokenProcessPool, OSError) as exc:  # it died or could not start: here, then
            _give_up_worker(exc)
    return _linked(embeddings, threshold, cannot_link, method)


def worker() -> ProcessPoolExecutor:
    """The one worker process large groupings run in, started on first use and kept."""
    global _worker
    with _worker_lock:
        if _worker is None:
            # spawn, not fork: the server's threads (the inference thread, the thread pool) hold
            # locks a forked child would inherit taken
            context = multiprocessing.get_context("spawn")
            _worker = ProcessPoolExecutor(1, mp_context=context, initializer=_lower_priority)
        return _worker


def _give_up_worker(reason: BaseException) -> None:
    global _worker, _worker_failed
    log.warning("clustering runs in the server's own process from now on: its worker failed (%s)", reason)
    with _worker_lock:
        if _worker is not None:
            _worker.shutdown(wait=False, cancel_futures=True)
        _worker, _worker_failed = None, True


def _lower_priority() -> None:
    with contextlib.suppress(OSError):  # a platform without it still groups, at the same priority
        os.nice(WORKER_NICENESS)


def _linked(
    embeddings: np.ndarray, threshold: float, cannot_link: Iterable[tuple[int, int]], method: Method
) -> np.ndarray:
    vectors = np.asarray(embeddings, np.float64)
    if method == "hdbscan":
        labels = _hdbscan(vectors, threshold)
    else:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform

        distance = np.clip(1.0 - vectors @ vectors.T, 0.0, 2.0)
        for a, b in cannot_link:
            distance[a, b] = distance[b, a] = APART
        np.fill_diagonal(distance, 0.0)
        tree = linkage(squareform(distance, checks=False), method=method)
        labels = fcluster(tree, t=1.0 - threshold, criterion="distance")
    return _renumber(labels)


def _hdbscan(vectors: np.ndarray, threshold: float) -> np.ndarray:
    try:
        from sklearn.cluster import HDBSCAN
    except ImportError as exc:
        raise FeatureUnavailable(
            "method hdbscan needs scikit-learn: pip install 'facerest[hdbscan]'"
        ) from exc

    # HDBSCAN picks its own density levels: the threshold does not enter (its epsilon option fails
    # in scikit-learn 1.9.1's tree search); measured beside the threshold methods
    found = HDBSCAN(min_cluster_size=2, min_samples=1, copy=True).fit_predict(vectors)
    noise = found < 0
    found[noise] = found.max() + 1 + np.arange(int(noise.sum()))  # each unclustered face alone
    return found


def _renumber(labels: np.ndarray) -> np.ndarray:
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(v), len(order)) for v in labels], np.int64)


def groups(embeddings: np.ndarray, labels: np.ndarray) -> list[Cluster]:
    """Clusters, largest first, each with its most central faces (highest mean similarity)."""
    out = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        vectors = embeddings[members]
        centrality = (vectors @ vectors.T).mean(axis=1)
        ranked = members[np.argsort(-centrality, kind="stable")]
        out.append(Cluster(int(label), members.tolist(), ranked[:REPRESENTATIVES].tolist()))
    out.sort(key=lambda c: (-c.size, c.members[0]))
    return out


def assign(
    embeddings: np.ndarray,
    labels: np.ndarray,
    new: np.ndarray,
    threshold: float,
    cannot_link: Iterable[tuple[int, int]] = (),
) -> np.ndarray:
    """Labels for `new` faces given clustered `embeddings` (`labels`): the existing cluster each
    is on average most similar to, when that reaches `threshold`; the rest clustered among
    themselves under new labels. `cannot_link` indexes the faces old then new."""
    old_count = len(embeddings)
    forbidden: dict[int, set[int]] = {}
    for a, b in cannot_link:
        forbidden.setdefault(a, set()).add(b)
        forbidden.setdefault(b, set()).add(a)
    out = np.full(len(new), -1, np.int64)
    if old_count:
        clusters = np.unique(labels)
        similarity = np.asarray(new, np.float64) @ np.asarray(embeddings, np.float64).T
        means = np.stack([similarity[:, labels == c].mean(axis=1) for c in clusters], axis=1)
        for i in range(len(new)):
            banned = {int(labels[j]) for j in forbidden.get(old_count + i, ()) if j < old_count}
            for c in np.argsort(-means[i]):
                if means[i, c] < threshold:
                    break
                if int(clusters[c]) not in banned:
                    out[i] = clusters[c]
                    break
    rest = np.flatnonzero(out < 0)
    if len(rest):
        index = {int(n): k for k, n in enumerate(rest)}
        links = [
            (index[a - old_count], index[b - old_count])
            for a, b in cannot_link
            if a - old_count in index and b - old_count in index
        ]
        fresh = cluster(np.asarray(new)[rest], threshold, links)
        start = int(labels.max()) + 1 if old_count else 0
        out[rest] = start + fresh
    return out


# --- measures ---


def bcubed(labels: Sequence[int] | np.ndarray, truth: Sequence[str]) -> tuple[float, float, float]:
    """BCubed precision, recall and F of a clustering against the true identities."""
    labels = np.asarray(labels)
    truth_codes = np.unique(np.asarray(truth), return_inverse=True)[1]
    precision = recall = 0.0
    for i in range(len(labels)):
        same_cluster = labels == labels[i]
        same_person = truth_codes == truth_codes[i]
        both = float(np.sum(same_cluster & same_person))
        precision += both / float(np.sum(same_cluster))
        recall += both / float(np.sum(same_person))
    precision /= len(labels)
    recall /= len(labels)
    return precision, recall, 2 * precision * recall / (precision + recall)


def pairwise(labels: Sequence[int] | np.ndarray, truth: Sequence[str]) -> tuple[float, float]:
    """Pairwise precision and recall: of the pairs put together, how many are one person; of the
    pairs of one person, how many were put together."""
    labels = np.asarray(labels)
    codes = np.unique(np.asarray(truth), return_inverse=True)[1]
    upper = np.triu_indices(len(labels), k=1)
    together = labels[upper[0]] == labels[upper[1]]
    same = codes[upper[0]] == codes[upper[1]]
    precision = float((together & same).sum() / max(together.sum(), 1))
    recall = float((together & same).sum() / max(same.sum(), 1))
    return precision, recall
