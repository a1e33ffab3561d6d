"""FaceAnalyzer: detect -> filter -> align -> embed / gender-age / mask, batched across requests."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from facerest.config import Settings
from facerest.errors import FaceRestError, FeatureUnavailable, Overloaded, RequestTimeout
from facerest.imaging.resize import DetectorInput, letterbox, plan_closeup
from facerest.models import LoadedModels
from facerest.models.base import FaceModel
from facerest.models.detection.base import Detections
from facerest.models.detection.nms import nms
from facerest.models.faces import Face, ImageResult
from facerest.pipeline.scale import ScalePlan, ScalePolicy, plan_refine, plan_scale
from facerest.pipeline.scheduler import InferenceScheduler

log = logging.getLogger(__name__)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / ((box[2] - box[0]) * (box[3] - box[1]) + areas - inter)


#: with the `single_face` hint, a face this sure is still taken when none clears the threshold
SINGLE_FACE_THRESHOLD = 0.3


@dataclass(slots=True)
class ExtractOptions:
    threshold: float = 0.6
    embed_only: bool = False
    return_face_data: bool = False
    return_landmarks: bool = False
    extract_embedding: bool = True
    extract_ga: bool = False
    detect_masks: bool = False
    dense_landmarks: bool = False
    limit_faces: int = 0
    min_face_size: float = 0
    max_size: tuple[int, int] | None = None  # None: the server's; (0, 0): no resize
    single_face: bool = False
    detect_scale: ScalePolicy | None = None  # None: the server's FACEREST_DETECT_SCALE


@dataclass(slots=True)
class Timings:
    detect_ms: float = 0.0
    faces_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


ImageInput = np.ndarray | FaceRestError


class Deadline:
    """When a request must be done, and the inference it queued: on timeout all of it is
    withdrawn, so a request that already answered 504 costs the others nothing more."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.pending: list[Future] = []

    def track(self, future: Future) -> Future:
        self.pending.append(future)
        return future

    def expire(self) -> None:
        for future in self.pending:
            future.cancel()  # a job already running finishes; queued ones are skipped


class Admission:
    """Bounds the requests inside the pipeline; the next one is told to come back later."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._inside = 0
        self._lock = threading.Lock()

    @property
    def inside(self) -> int:
        return self._inside

    @contextmanager
    def admit(self) -> Iterator[None]:
        with self._lock:
            if self._inside >= self.limit:
                raise Overloaded(
                    f"the server is at its limit of {self.limit} requests in progress; retry shortly"
                )
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1


class FaceAnalyzer:
    def __init__(self, models: LoadedModels, settings: Settings) -> None:
        self.models = models
        self.settings = settings
        self.scheduler = InferenceScheduler(settings.batch_wait_ms / 1000.0)
        self.admission = Admission(settings.queue_size)
        self.timeout_s = settings.request_timeout_s

    # --- public entry points (blocking; call from a worker thread, never the event loop) ---

    def process(
        self,
        images: list[ImageInput],
        options: ExtractOptions,
        timings: Timings | None = None,
        deadline: float | None = None,
    ) -> list[ImageResult]:
        """One ImageResult per input, in order; an input that is an error fails alone.

        `deadline` (time.monotonic()) is when the request must be done, counted by the caller from
        the request's arrival; default: FACEREST_REQUEST_TIMEOUT_S from now."""
        with self.scheduler.request():
            return self._process(images, options, timings or Timings(), deadline)

    def _process(
        self, images: list[ImageInput], options: ExtractOptions, timings: Timings, deadline: float | None
    ) -> list[ImageResult]:
        self._check_features(options)
        limit = Deadline(deadline if deadline is not None else time.monotonic() + self.timeout_s)
        started = time.perf_counter()
        results = [ImageResult() for _ in images]
        for result, image in zip(results, images, strict=True):
            if isinstance(image, FaceRestError):
                result.error, result.error_code = image.detail, image.code
            else:
                result.height, result.width = image.shape[:2]
        ok = [i for i, img in enumerate(images) if not isinstance(img, FaceRestError)]
        pixels = {i: images[i] for i in ok}
        if options.embed_only:
            for i in ok:
                h, w = pixels[i].shape[:2]
                results[i].faces = [Face(np.array([0, 0, w, h], np.float32), 1.0, None, 0)]
        else:
            t0 = time.perf_counter()
            found = self.detect(pixels, options, limit)
            timings.detect_ms += (time.perf_counter() - t0) * 1000
            for i, faces in found.items():
                if options.single_face:
                    faces = faces[:1] if faces else [self._whole_image_face(pixels[i])]
                results[i].faces = faces
        t0 = time.perf_counter()
        self._run_face_models(pixels, results, options, limit)
        timings.faces_ms += (time.perf_counter() - t0) * 1000
        total = (time.perf_counter() - started) * 1000
        for result in results:
            result.took_ms = total
        return results

    def detect(
        self, pixels: dict[int, np.ndarray], options: ExtractOptions, deadline: Deadline
    ) -> dict[int, list[Face]]:
        """Faces per image: one detector pass at the scale policy's scale (pipeline/scale.py); under
        `adaptive`, where that pass saw nothing or faces near the detector's smallest reliable size
        and the reference would enlarge the image, a pass at the reference scale that replaces it;
        then for images where the passes have reason to doubt (nothing found, or a large face cut
        by the image's edge) a pass on a small, centred, padded canvas where faces that fill the
        frame fall in the detector's trained range, merged with NMS."""
        plans = {i: self._plan(image, options) for i, image in pixels.items()}
        first = {i: self._submit(pixels[i], plan.first, deadline) for i, plan in plans.items()}
        passes: dict[int, list[tuple[DetectorInput, dict[str, np.ndarray]]]] = {}
        found: dict[int, Detections] = {}
        enlarged: dict[int, tuple[DetectorInput, Future]] = {}
        closeups: dict[int, tuple[DetectorInput, Future]] = {}
        for i, (plan, future) in first.items():
            outputs = self._wait(future, deadline)
            passes[i] = [(plan, outputs)]
            found[i] = self._decode(outputs, plan, options.threshold)
            if plans[i].needs_reference_pass(found[i]):
                enlarged[i] = self._submit(pixels[i], plans[i].reference, deadline)
            elif self.settings.closeup_pass and self._doubtful(
                found[i], pixels[i], plan.scale < plans[i].reference.scale
            ):
                closeups[i] = self._submit_closeup(pixels[i], deadline)
        for i, (plan, future) in enlarged.items():
            outputs = self._wait(future, deadline)
            passes[i].append((plan, outputs))
            found[i] = self._decode(outputs, plan, options.threshold)
            if self.settings.closeup_pass and self._doubtful(found[i], pixels[i]):
                closeups[i] = self._submit_closeup(pixels[i], deadline)
        for i, (plan, future) in closeups.items():
            outputs = self._wait(future, deadline)
            # at the reference scale a face filling the frame is beyond the first pass's anchors and
            # the passes are merged by score, as they always were; a pass below that scale finds it
            # in reach but cut by the edge, where the close-up's view (context all round) wins
            native = passes[i][-1][0].scale < plans[i].reference.scale
            passes[i].append((plan, outputs))
            closeup = self._decode(outputs, plan, options.threshold)
            found[i] = self._merge(found[i], closeup, prefer_second=native)
        if self.settings.detect_refine:
            below = [
                i for i in found if i not in closeups and passes[i][-1][0].scale < plans[i].reference.scale
            ]
            self._refine({i: pixels[i] for i in below}, found, plans, options, deadline)
        if options.single_face and options.threshold > SINGLE_FACE_THRESHOLD:
            # the client says there is a face: take the best candidate the passes saw, if any
            for i, dets in found.items():
                if len(dets) == 0:
                    for plan, outputs in passes[i]:
                        dets = self._merge(dets, self._decode(outputs, plan, SINGLE_FACE_THRESHOLD))
                    found[i] = dets
        return {i: self._select(dets, options) for i, dets in found.items()}

    def _refine(
        self,
        pixels: dict[int, np.ndarray],
        found: dict[int, Detections],
        plans: dict[int, ScalePlan],
        options: ExtractOptions,
        deadline: Deadline,
    ) -> None:
        """Each face's box and landmarks from a crop around it at the reference scale, where one is
        found there (IoU > 0.5 with the face); in place."""
        detector = self.models.detector
        jobs = []
        for i, image in pixels.items():
            h, w = image.shape[:2]
            for k, box in enumerate(found[i].boxes):
                crop = plan_refine(box, w, h, plans[i].reference.scale, detector.stride)
                (x0, y0), (cw, ch) = crop.origin, crop.size
                jobs.append(
                    (i, k, crop, self._submit(image[y0 : y0 + ch, x0 : x0 + cw], crop.plan, deadline))
                )
        for i, k, crop, (plan, future) in jobs:
            dets = self._decode(
                self._wait(future, deadline), plan, min(options.threshold, SINGLE_FACE_THRESHOLD)
            )
            if len(dets) == 0 or found[i].landmarks is None or dets.landmarks is None:
                continue
            origin = np.asarray(crop.origin, np.float32)
            boxes = dets.boxes + np.tile(origin, 2)
            overlap = _iou(found[i].boxes[k], boxes)
            best = int(np.argmax(overlap))
            if overlap[best] > 0.5:
                found[i].boxes[k] = boxes[best]
                found[i].landmarks[k] = dets.landmarks[best] + origin

    def _submit_closeup(self, image: np.ndarray, deadline: Deadline) -> tuple[DetectorInput, Future]:
        detector = self.models.detector
        h, w = image.shape[:2]
        plan = plan_closeup(w, h, fixed=detector.fixed_input, stride=detector.stride)
        return self._submit(image, plan, deadline)

    def _submit(
        self, image: np.ndarray, plan: DetectorInput, deadline: Deadline
    ) -> tuple[DetectorInput, Future]:
        detector = self.models.detector
        tensor = detector.prepare(letterbox(image, plan))
        max_batch = min(detector.max_batch, self.settings.det_batch_size)
        future = self.scheduler.submit(detector.name, detector.infer, tensor[None], max_batch)
        return plan, deadline.track(future)

    def _decode(self, outputs: dict[str, np.ndarray], plan: DetectorInput, threshold: float) -> Detections:
        """One image's raw detector outputs -> Detections in original image coordinates."""
        one = {k: v[0] for k, v in outputs.items()}
        dets = self.models.detector.decode(one, (plan.canvas[1], plan.canvas[0]), threshold)
        return Detections(
            plan.to_image(dets.boxes.reshape(-1, 2, 2)).reshape(-1, 4),
            dets.scores,
            None if dets.landmarks is None else plan.to_image(dets.landmarks),
            dets.extra,
        )

    @staticmethod
    def _doubtful(dets: Detections, image: np.ndarray, below_reference: bool = False) -> bool:
        """Nothing found, or a face as big as half the image reaching past its edge; from a pass below
        the reference scale, also one that reaches its edge (a tight crop: found there, but with no
        context above or left, so its landmarks are the close-up's to give)."""
        if len(dets) == 0:
            return True
        h, w = image.shape[:2]
        boxes = dets.boxes
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        large = np.maximum(bw / w, bh / h) >= 0.5
        reach = 0.05 if below_reference else -0.05  # how far inside the edge counts as cut
        cut = (
            (boxes[:, 0] < reach * bw)
            | (boxes[:, 1] < reach * bh)
            | (boxes[:, 2] > w - reach * bw)
            | (boxes[:, 3] > h - reach * bh)
        )
        return bool((large & cut).any())

    def _merge(self, a: Detections, b: Detections, *, prefer_second: bool = False) -> Detections:
        """Both passes' faces, overlapping ones reduced by NMS: the higher score wins, or with
        `prefer_second` any face of `b` wins over the faces of `a` it overlaps."""
        if len(a) == 0:
            return b
        if len(b) == 0:
            return a
        landmarks = (
            None if a.landmarks is None or b.landmarks is None else np.concatenate([a.landmarks, b.landmarks])
        )
        both = Detections(
            np.concatenate([a.boxes, b.boxes]),
            np.concatenate([a.scores, b.scores]),
            landmarks,
            {k: np.concatenate([a.extra[k], b.extra[k]]) for k in a.extra.keys() & b.extra.keys()},
        )
        order = both.scores
        if prefer_second:  # above every score of `a`, in the same order among themselves
            order = np.concatenate([a.scores, b.scores + 2.0])
        keep = nms(both.boxes, order, self.models.detector.nms_threshold)
        return both.take(keep[np.argsort(-both.scores[keep], kind="stable")])

    def warmup(self, image: np.ndarray) -> list[ImageResult]:
        options = ExtractOptions(
            threshold=0.3,
            extract_ga=self.models.genderage is not None,
            detect_masks=self.models.mask is not None,
            dense_landmarks=self.models.landmarks is not None,
            extract_embedding=self.models.recognizer is not None,
        )
        return self.process([image], options)

    def close(self) -> None:
        self.scheduler.close()

    # --- steps ---

    def _check_features(self, options: ExtractOptions) -> None:
        wanted = {
            "extract_embedding / embed_only": (
                options.extract_embedding or options.embed_only,
                self.models.recognizer,
                "FACEREST_REC_NAME",
            ),
            "extract_ga": (options.extract_ga, self.models.genderage, "FACEREST_GA_NAME"),
            "detect_masks": (options.detect_masks, self.models.mask, "FACEREST_MASK_NAME"),
            "dense landmarks": (options.dense_landmarks, self.models.landmarks, "FACEREST_LANDMARKS_NAME"),
        }
        for feature, (asked, model, setting) in wanted.items():
            if asked and model is None:
                raise FeatureUnavailable(
                    f"{feature} needs a model this server was not started with (set {setting})"
                )

    def _plan(self, image: np.ndarray, options: ExtractOptions) -> ScalePlan:
        detector = self.models.detector
        h, w = image.shape[:2]
        max_size = options.max_size or tuple(self.settings.max_size)
        return plan_scale(
            w,
            h,
            max_size,
            policy=options.detect_scale or self.settings.detect_scale,
            fixed=detector.fixed_input,
            stride=detector.stride,
            family=detector.entry.family,
            max_upscale=self.settings.max_upscale,
        )

    def _select(self, dets: Detections, options: ExtractOptions) -> list[Face]:
        widths = dets.boxes[:, 2] - dets.boxes[:, 0]
        keep = (
            np.flatnonzero(widths >= options.min_face_size)
            if options.min_face_size > 0
            else np.arange(len(dets))
        )
        dets = dets.take(keep)
        limit = min(
            options.limit_faces or self.settings.max_faces_per_image, self.settings.max_faces_per_image
        )
        if options.single_face:
            limit = 1
        if len(dets) > limit:
            areas = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
            largest = np.sort(np.argsort(-areas, kind="stable")[:limit])
            dets = dets.take(largest)
        faces = []
        for n in range(len(dets)):
            face = Face(
                bbox=dets.boxes[n],
                score=float(dets.scores[n]),
                landmarks=None if dets.landmarks is None else dets.landmarks[n],
                index=n,
            )
            if "mask" in dets.extra:
                mask = float(dets.extra["mask"][n])
                face.mask_probs = {"mask": mask, "no_mask": 1.0 - mask}
                face.mask = mask >= 0.2
            faces.append(face)
        return faces

    @staticmethod
    def _whole_image_face(image: np.ndarray) -> Face:
        h, w = image.shape[:2]
        return Face(np.array([0, 0, w, h], np.float32), 0.0, None, 0, whole_image=True)

    def _face_models(self, options: ExtractOptions) -> list[FaceModel]:
        chosen = []
        wants_crops = options.extract_embedding or options.embed_only or options.return_face_data
        if wants_crops and self.models.recognizer is not None:
            chosen.append(self.models.recognizer)
        for asked, model in (
            (options.extract_ga, self.models.genderage),
            (options.detect_masks, self.models.mask),
            (options.dense_landmarks, self.models.landmarks),
        ):
            if asked and model is not None:
                chosen.append(model)
        return chosen

    def _run_face_models(
        self,
        pixels: dict[int, np.ndarray],
        results: list[ImageResult],
        options: ExtractOptions,
        deadline: Deadline,
    ) -> None:
        owners = [(i, face) for i, r in enumerate(results) if r.ok for face in r.faces]
        if not owners:
            return
        submitted: list[tuple[FaceModel, Future]] = []
        for model in self._face_models(options):
            crops = np.stack([model.crop(pixels[i], face) for i, face in owners])
            if model is self.models.recognizer and options.return_face_data:
                for (_, face), crop in zip(owners, crops, strict=True):
                    face.crop = crop
            run = model is not self.models.recognizer or options.extract_embedding or options.embed_only
            if run:
                max_batch = model.max_batch
                if model is self.models.recognizer:
                    max_batch = min(max_batch, self.settings.rec_batch_size)
                future = self.scheduler.submit(model.name, model.infer, model.prepare(crops), max_batch)
                submitted.append((model, deadline.track(future)))
        for model, future in submitted:
            rows = self._wait(future, deadline)
            for (_, face), row in zip(owners, rows, strict=True):
                model.apply(face, row)

    def _wait(self, future: Future, deadline: Deadline):  # type: ignore[no-untyped-def]
        try:
            return future.result(timeout=max(0.0, deadline.at - time.monotonic()))
        except FutureTimeout as exc:
            deadline.expire()
            raise RequestTimeout(f"the request took longer than {self.timeout_s} s") from exc
