"""FaceAnalyzer: detect -> filter -> align -> embed / gender-age / mask, batched across requests."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from facerest.config import Settings
from facerest.errors import FaceRestError, FeatureUnavailable, Overloaded, RequestTimeout
from facerest.imaging.marks import (
    MIN_OVERLAP,
    BadMark,
    FaceMark,
    box_of_landmarks,
    check_mark,
    iou,
    search_region,
)
from facerest.imaging.quality import assess
from facerest.imaging.resize import DetectorInput, letterbox, plan_closeup
from facerest.models import LoadedModels
from facerest.models.align import norm_crop
from facerest.models.base import FaceModel, box_crop
from facerest.models.detection.base import Detections
from facerest.models.detection.nms import nms
from facerest.models.faces import Face, ImageResult
from facerest.pipeline.scale import ScalePlan, ScalePolicy, plan_refine, plan_scale
from facerest.pipeline.scheduler import InferenceScheduler

log = logging.getLogger(__name__)


#: face-model batches a request keeps queued at once (crops are made as they are needed)
FACE_JOBS_IN_FLIGHT = 4


#: with the `single_face` hint, a face this sure is still taken when none clears the threshold
SINGLE_FACE_THRESHOLD = 0.3
#: a marked face narrower than this at the detector's input gets its landmarks from its box enlarged
FINE_LANDMARKS_PX = 16


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
    # per input, the faces the client marked (None: detect them); see facerest/imaging/marks.py
    marks: list[list[FaceMark] | None] | None = None
    return_quality: bool = False


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
        # only futures still to run are kept: a done one holds its outputs (a detector pass's
        # ~0.3 MB), and a request of 10,000 marked boxes kept 3 GB of them until it ended
        self.pending = [f for f in self.pending if not f.done()]
        self.pending.append(future)
        return future

    def expire(self) -> None:
        for future in self.pending:
            future.cancel()  # a job already running finishes; queued ones are skipped


def best_overlap(box: np.ndarray, candidates: list[Face], shift: np.ndarray) -> Face | None:
    """The candidate (coordinates + `shift` = image's) that overlaps a marked box most, if enough."""
    candidates = [c for c in candidates if c.landmarks is not None]
    if not candidates:
        return None
    boxes = np.stack([c.bbox for c in candidates]) + np.tile(shift, 2)
    overlap = iou(np.asarray(box, np.float32), boxes)
    best = int(np.argmax(overlap))
    if overlap[best] < MIN_OVERLAP:
        return None
    found = candidates[best]
    return Face(boxes[best], found.score, found.landmarks + shift, 0)  # type: ignore[operator]


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
        # an image keeps at most MAX_FACES_PER_IMAGE faces (the largest): NMS can stop once it
        # has twice that many, the most confident, to choose from (ordinary images have far fewer)
        models.detector.max_detections = 2 * settings.max_faces_per_image

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
            marks = options.marks or []
            marked = {i: marks[i] for i in ok if i < len(marks) and marks[i] is not None}
            found = self.detect({i: p for i, p in pixels.items() if i not in marked}, options, limit)
            for i, faces in found.items():
                if options.single_face:
                    faces = faces[:1] if faces else [self._whole_image_face(pixels[i])]
                results[i].faces = faces
            for i, faces_or_error in self._marked_faces(pixels, marked, options, limit).items():
                if isinstance(faces_or_error, str):
                    results[i].error, results[i].error_code = faces_or_error, "bad_face_mark"
                else:
                    results[i].faces = faces_or_error
            timings.detect_ms += (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        self._run_face_models(pixels, results, options, limit)
        if options.return_quality:
            self._assess(pixels, results)
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
        detector = self.models.detector
        # canvases are made just in time: a request keeps at most `window` detector inputs
        # queued, not one per image (64 images x a large canvas would be gigabytes)
        window = max(2, min(detector.max_batch, self.settings.det_batch_size))
        fallback = options.single_face and options.threshold > SINGLE_FACE_THRESHOLD
        plans: dict[int, ScalePlan] = {}
        found: dict[int, Detections] = {}
        candidates: dict[int, Detections] = {}  # at SINGLE_FACE_THRESHOLD, for `single_face`
        last_scale: dict[int, float] = {}  # the scale of the pass whose faces are kept
        closeups: set[int] = set()
        todo = iter(pixels.items())
        queued: deque[tuple[int, DetectorInput, Future, str]] = deque()

        def refill() -> None:
            while len(queued) < window:
                entry = next(todo, None)
                if entry is None:
                    return
                i, image = entry
                plans[i] = self._plan(image, options)
                queued.append((i, *self._submit(image, plans[i].first, deadline), "first"))

        def closeup(i: int) -> None:
            closeups.add(i)
            queued.append((i, *self._submit_closeup(pixels[i], deadline), "closeup"))

        refill()
        while queued:
            i, plan, future, stage = queued.popleft()
            outputs = self._wait(future, deadline)
            self._check(deadline)  # decoding (NMS over every anchor at threshold 0) costs too
            dets = self._decode(outputs, plan, options.threshold)
            if fallback:  # every pass's candidates: the client says there is a face
                low = self._decode(outputs, plan, SINGLE_FACE_THRESHOLD)
                candidates[i] = self._merge(candidates[i], low) if i in candidates else low
            del outputs
            reference = plans[i].reference
            if stage == "closeup":
                # at the reference scale a face filling the frame is beyond the first pass's
                # anchors and the passes are merged by score, as they always were; a pass below
                # that scale finds it in reach but cut by the edge, where the close-up's view
                # (context all round) wins
                found[i] = self._merge(found[i], dets, prefer_second=last_scale[i] < reference.scale)
            else:
                found[i], last_scale[i] = dets, plan.scale  # a reference pass replaces the first
                if stage == "first" and plans[i].needs_reference_pass(dets):
                    queued.append((i, *self._submit(pixels[i], reference, deadline), "reference"))
                elif self.settings.closeup_pass and self._doubtful(
                    dets, pixels[i], stage == "first" and plan.scale < reference.scale
                ):
                    closeup(i)
            refill()
        if self.settings.detect_refine:
            below = [i for i in found if i not in closeups and last_scale[i] < plans[i].reference.scale]
            self._refine({i: pixels[i] for i in below}, found, plans, options, deadline)
        if fallback:
            # the client says there is a face: take the best candidate the passes saw, if any
            for i, dets in found.items():
                if len(dets) == 0:
                    found[i] = candidates[i]
        # faces per request are bounded as well as per image: images in request order, each
        # keeping its largest faces, until the request's budget is spent
        budget = self.settings.max_faces_per_request
        selected = {}
        for i in pixels:
            selected[i] = self._select(found[i], options, budget)
            budget -= len(selected[i])
        return selected

    def _marked_faces(
        self,
        pixels: dict[int, np.ndarray],
        marked: dict[int, list[FaceMark]],
        options: ExtractOptions,
        deadline: Deadline,
    ) -> dict[int, list[Face] | str]:
        """The faces the client marked, per image, or why the image's marks name no face.

        Landmarks are taken as given; a box alone gets the landmarks of the face the detector finds
        in and around it (the one overlapping it most), or none (its box is then resized)."""
        out: dict[int, list[Face] | str] = {}
        # (image, face, box, region) of each box marked without landmarks
        searches: list[tuple[int, int, np.ndarray, tuple[int, int, int, int]]] = []
        for i, marks in marked.items():
            h, w = pixels[i].shape[:2]
            faces = []
            try:
                for n, mark in enumerate(marks):
                    check_mark(mark, w, h, n)
                    if mark.landmarks is not None:
                        box = mark.bbox if mark.bbox is not None else box_of_landmarks(mark.landmarks)
                        faces.append(
                            Face(np.asarray(box, np.float32), 1.0, mark.landmarks, n, marked="landmarks")
                        )
                    else:
                        assert mark.bbox is not None
                        faces.append(Face(np.asarray(mark.bbox, np.float32), 0.0, None, n, marked="box only"))
                        searches.append((i, n, mark.bbox, search_region(mark.bbox, w, h)))
            except BadMark as exc:
                out[i] = str(exc)
                continue
            out[i] = faces
        # a box is first matched to the faces a detection of the whole image finds (at a low score
        # threshold): those landmarks are the ones an unmarked request would embed
        wide = ExtractOptions(
            threshold=min(options.threshold, SINGLE_FACE_THRESHOLD), detect_scale=options.detect_scale
        )
        at_scale = ExtractOptions(
            threshold=wide.threshold, max_size=options.max_size, detect_scale=options.detect_scale
        )
        images = {i for i, _, _, _ in searches if not isinstance(out[i], str)}
        whole = self.detect({i: pixels[i] for i in images}, at_scale, deadline) if images else {}
        for i, n, box, region in searches:
            faces = out[i]
            if isinstance(faces, str):
                continue
            found = best_overlap(box, whole[i], np.zeros(2, np.float32))
            scale = self._plan(pixels[i], options).first.scale
            if found is None or found.width * scale < FINE_LANDMARKS_PX:
                # missed at the image's scale, or too small there for exact landmarks: the box, enlarged
                crop = np.ascontiguousarray(pixels[i][region[1] : region[3], region[0] : region[2]])
                shift = np.array(region[:2], np.float32)
                found = best_overlap(box, self.detect({0: crop}, wide, deadline)[0], shift) or found
            if found is not None:
                faces[n].landmarks, faces[n].score, faces[n].marked = found.landmarks, found.score, "box"
        return out

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
            overlap = iou(found[i].boxes[k], boxes)
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
        future = self.scheduler.submit(
            detector.name, detector.infer, tensor[None], max_batch, owner=deadline, expires=deadline.at
        )
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
            max_pixels=self.settings.max_detector_pixels,
        )

    def _select(self, dets: Detections, options: ExtractOptions, budget: int = 1 << 30) -> list[Face]:
        widths = dets.boxes[:, 2] - dets.boxes[:, 0]
        keep = (
            np.flatnonzero(widths >= options.min_face_size)
            if options.min_face_size > 0
            else np.arange(len(dets))
        )
        dets = dets.take(keep)
        limit = min(
            options.limit_faces or self.settings.max_faces_per_image,
            self.settings.max_faces_per_image,
            max(0, budget),
        )
        if options.single_face:
            limit = min(1, max(0, budget))
        if len(dets) > limit:
            # the largest faces, largest first, as InsightFace-REST's sort_boxes leaves them: its
            # clients take faces[0] of a limited answer as the main face
            areas = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
            dets = dets.take(np.argsort(-areas, kind="stable")[:limit])
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
        # one job per batch of faces, made just in time: the scheduler serves requests in turn
        # between batches, and a request past its deadline withdraws the batches not yet run
        chunks: list[tuple[FaceModel, list[tuple[int, Face]], bool, int]] = []
        for model in self._face_models(options):
            run = model is not self.models.recognizer or options.extract_embedding or options.embed_only
            max_batch = model.max_batch
            if model is self.models.recognizer:
                max_batch = min(max_batch, self.settings.rec_batch_size)
            max_batch = max(1, max_batch)
            for start in range(0, len(owners), max_batch):
                chunks.append((model, owners[start : start + max_batch], run, max_batch))
        todo = iter(chunks)
        in_flight: deque[tuple[FaceModel, list[tuple[int, Face]], Future | None]] = deque()

        def refill() -> None:
            while len(in_flight) < FACE_JOBS_IN_FLIGHT:
                chunk = next(todo, None)
                if chunk is None:
                    return
                model, part, run, max_batch = chunk
                self._check(deadline)
                crops = np.stack([model.crop(pixels[i], face) for i, face in part])
                if model is self.models.recognizer and options.return_face_data:
                    for (_, face), crop in zip(part, crops, strict=True):
                        face.crop = crop
                future = None
                if run:
                    future = deadline.track(
                        self.scheduler.submit(
                            model.name,
                            model.infer,
                            model.prepare(crops),
                            max_batch,
                            owner=deadline,
                            expires=deadline.at,
                        )
                    )
                in_flight.append((model, part, future))

        refill()
        while in_flight:
            model, part, future = in_flight.popleft()
            if future is not None:
                rows = self._wait(future, deadline)
                for (_, face), row in zip(part, rows, strict=True):
                    model.apply(face, row)
            refill()

    def _check(self, deadline: Deadline) -> None:
        """Between steps: past the deadline, withdraw what is queued and answer 504."""
        if time.monotonic() > deadline.at:
            deadline.expire()
            raise RequestTimeout(f"the request took longer than {self.timeout_s} s")

    @staticmethod
    def _assess(pixels: dict[int, np.ndarray], results: list[ImageResult]) -> None:
        """Each face's quality, measured on the crop the recognizer sees (facerest/imaging/quality.py)."""
        for i, result in enumerate(results):
            if not result.ok:
                continue
            image = pixels[i]
            h, w = image.shape[:2]
            for face in result.faces:
                crop = (
                    norm_crop(image, face.landmarks, 112)
                    if face.landmarks is not None
                    else box_crop(image, face.bbox, 112)
                )
                face.quality = assess(crop, face.bbox, face.landmarks, face.score, w, h)

    def _wait(self, future: Future, deadline: Deadline):  # type: ignore[no-untyped-def]
        try:
            return future.result(timeout=max(0.0, deadline.at - time.monotonic()))
        except (FutureTimeout, CancelledError) as exc:  # cancelled: the scheduler saw it expire
            deadline.expire()
            raise RequestTimeout(f"the request took longer than {self.timeout_s} s") from exc
