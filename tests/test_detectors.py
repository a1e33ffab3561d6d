"""Every detector family's decoder.

SCRFD runs with its real weights. The other families (whose weights do not install here) run on
ONNX graphs built below with the family's exact input/output names and shapes: each graph picks,
per image of the batch, output tensors that encode known faces (written by an encoder that
follows the family's published output format, independent of the decoder under test). The
faces must come back where they were put, at every stride, for batches of 1 and of 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import package_photo, read_bgr
from onnx import TensorProto, helper, numpy_helper

from facerest.config import Settings
from facerest.imaging.resize import letterbox, plan_input
from facerest.models import DETECTOR_FAMILIES
from facerest.models.base import blob
from facerest.models.catalog import Catalog, CatalogEntry
from facerest.models.detection.base import Detector
from facerest.models.store import ModelStore
from facerest.preparation import load_detector

H, W = 256, 320  # detector input of the synthetic graphs: 8x10 cells at stride 32


@dataclass
class Face:
    stride: int
    anchor: int
    cell: tuple[int, int]  # (column, row) on that stride's grid
    box: tuple[float, float, float, float]
    score: float
    mask: float = 0.0

    @property
    def landmarks(self) -> np.ndarray:
        x1, y1, x2, y2 = self.box
        w, h = x2 - x1, y2 - y1
        rel = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
        return np.array([x1, y1]) + rel * np.array([w, h])


def face_at(
    stride: int, anchor: int, cell: tuple[int, int], size: float, score: float, mask: float = 0.0
) -> Face:
    """A face of `size` px centred near the centre of `cell` (slightly off, to test the offsets)."""
    cx = cell[0] * stride + stride / 2 + 1.25
    cy = cell[1] * stride + stride / 2 - 0.75
    return Face(
        stride, anchor, cell, (cx - size / 2, cy - size * 0.6, cx + size / 2, cy + size * 0.6), score, mask
    )


#: where each stride's face sits (its own band of the image, so that no two faces overlap)
CENTRES = {32: 75.0, 16: 190.0, 8: 270.0}


def scenes(strides: tuple[int, ...], anchors: int, sizes: dict[int, float]) -> list[list[Face]]:
    """Three images for a batch, each with one face at every stride of the family."""
    out = []
    for k in range(3):
        faces = []
        for j, stride in enumerate(strides):
            cell = (int(CENTRES[stride] // stride), int((100 + 20 * k) // stride))
            score = 0.95 - 0.1 * j - 0.02 * k
            faces.append(face_at(stride, (j + k) % anchors, cell, sizes[stride], score, 0.1 + 0.3 * j))
        out.append(faces)
    return out


def no_overlap(faces: list[Face]) -> bool:
    for i, a in enumerate(faces):
        for b in faces[i + 1 :]:
            if not (a.box[2] < b.box[0] or b.box[2] < a.box[0] or a.box[3] < b.box[1] or b.box[3] < a.box[1]):
                return False
    return True


def selector_graph(input_name: str, tensors: dict[str, np.ndarray], dynamic: bool = True) -> onnx.ModelProto:
    """A graph whose outputs are tensors[name][k] for an input image filled with the value k."""
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Cast", ["mean"], ["index"], to=TensorProto.INT64),
    ]
    inits, outputs = [], []
    for name, value in tensors.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"table_{name}"))
        nodes.append(helper.make_node("Gather", [f"table_{name}", "index"], [name], axis=0))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *value.shape[1:]]))
    batch: int | str = "batch" if dynamic else 1
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, H, W])],
        outputs,
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def build(tmp_path: Path, name: str, family: str, model: onnx.ModelProto, **entry: object) -> Detector:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    packaged = Catalog.load().get(name)
    fields = packaged.model_dump() if packaged else {"name": name, "task": "detection", "family": family}
    fields.update(files=[{"name": path.name}], **entry)
    return load_detector(CatalogEntry.model_validate(fields), [path], Settings(threads=1))


def run(detector: Detector, images: list[int], threshold: float = 0.5):  # type: ignore[no-untyped-def]
    batch = np.stack([np.full((3, H, W), float(k), np.float32) for k in images])
    outputs = detector.infer(batch)
    return [
        detector.decode({k: v[i] for k, v in outputs.items()}, (H, W), threshold) for i in range(len(images))
    ]


def check(found, faces: list[Face], *, landmarks: bool = True, mask: bool = False, tol: float = 1e-3) -> None:  # type: ignore[no-untyped-def]
    expected = sorted(faces, key=lambda f: -f.score)
    assert len(found) == len(expected), (len(found), [f.stride for f in expected])
    order = np.argsort(-found.scores)
    for n, face in zip(order, expected, strict=True):
        np.testing.assert_allclose(found.boxes[n], face.box, atol=tol, err_msg=f"stride {face.stride}")
        assert found.scores[n] == pytest.approx(face.score, abs=1e-5)
        if landmarks:
            np.testing.assert_allclose(
                found.landmarks[n], face.landmarks, atol=tol, err_msg=f"stride {face.stride}"
            )
        if mask:
            assert found.extra["mask"][n] == pytest.approx(face.mask, abs=1e-6)


# --- RetinaFace / RetinaFaceAntiCov ---------------------------------------------------------

RETINA_SCALES = {32: (32.0, 16.0), 16: (8.0, 4.0), 8: (2.0, 1.0)}


def encode_retinaface(faces: list[Face], landmark_std: float, masks: bool) -> dict[str, np.ndarray]:
    out = {}
    for stride in (32, 16, 8):
        h, w, a_n = H // stride, W // stride, 2
        cls = np.zeros((2 * a_n, h, w), np.float32)
        cls[:a_n] = 1.0  # background probability
        bbox = np.zeros((4 * a_n, h, w), np.float32)
        lmk = np.zeros((10 * a_n, h, w), np.float32)
        typ = np.zeros((3 * a_n, h, w), np.float32)
        for f in faces:
            if f.stride != stride:
                continue
            col, row = f.cell
            a = f.anchor
            size = 16 * RETINA_SCALES[stride][a]
            acx, acy = col * stride + 7.5, row * stride + 7.5
            x1, y1, x2, y2 = f.box
            cls[a_n + a, row, col], cls[a, row, col] = f.score, 1 - f.score
            bbox[a * 4 : a * 4 + 4, row, col] = [
                ((x1 + x2) / 2 - acx) / size,
                ((y1 + y2) / 2 - acy) / size,
                math.log((x2 - x1 + 1) / size),
                math.log((y2 - y1 + 1) / size),
            ]
            rel = (f.landmarks - [acx, acy]) / (size * landmark_std)
            lmk[a * 10 : a * 10 + 10, row, col] = rel.reshape(-1)
            typ[2 * a_n + a, row, col] = f.mask
        out[f"face_rpn_cls_prob_reshape_stride{stride}"] = cls
        out[f"face_rpn_bbox_pred_stride{stride}"] = bbox
        out[f"face_rpn_landmark_pred_stride{stride}"] = lmk
        if masks:
            out[f"face_rpn_type_prob_reshape_stride{stride}"] = typ
    return out


def stack(per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([p[k] for p in per_image]) for k in per_image[0]}


@pytest.mark.parametrize(
    ("name", "family", "std", "masks"),
    [
        ("retinaface_r50_v1", "retinaface", 1.0, False),
        ("retinaface_mnet025_v1", "retinaface", 1.0, False),
        ("retinaface_mnet025_v2", "retinaface", 0.2, False),
        ("mnet_cov2", "mnet_cov2", 0.2, True),
    ],
)
def test_retinaface_family(tmp_path: Path, name: str, family: str, std: float, masks: bool) -> None:
    entry = Catalog.load().get(name)
    assert entry is not None and entry.family == family and entry.decoder["landmark_std"] == std
    images = scenes((32, 16, 8), 2, {32: 120.0, 16: 44.0, 8: 14.0})
    assert all(no_overlap(f) for f in images)
    tensors = stack([encode_retinaface(f, std, masks) for f in images])
    detector = build(tmp_path, name, family, selector_graph("data", tensors))
    assert detector.max_batch > 1 or not entry.allow_batching
    for batch in ([1], [0, 1, 2]):
        for found, k in zip(run(detector, batch), batch, strict=True):
            check(found, images[k], mask=masks)


def test_retinaface_outputs_found_by_name_in_any_order(tmp_path: Path) -> None:
    images = scenes((32, 16, 8), 2, {32: 120.0, 16: 44.0, 8: 14.0})
    tensors = stack([encode_retinaface(f, 0.2, True) for f in images])
    shuffled = dict(sorted(tensors.items(), key=lambda kv: kv[0][::-1]))  # strides and kinds mixed
    assert list(shuffled) != list(tensors)
    detector = build(tmp_path, "mnet_cov2", "mnet_cov2", selector_graph("data", shuffled))
    check(run(detector, [2])[0], images[2], mask=True)


def test_mask_scores_reach_the_faces(tmp_path: Path) -> None:
    """mnet_cov2's mask score is carried to Face.mask / mask_probs by the pipeline."""
    from facerest.pipeline import ExtractOptions, FaceAnalyzer

    images = scenes((32, 16, 8), 2, {32: 120.0, 16: 44.0, 8: 14.0})
    tensors = stack([encode_retinaface(f, 0.2, True) for f in images])
    detector = build(tmp_path, "mnet_cov2", "mnet_cov2", selector_graph("data", tensors))
    dets = run(detector, [1])[0]
    analyzer = FaceAnalyzer.__new__(FaceAnalyzer)
    analyzer.settings = Settings(threads=1)
    faces = analyzer._select(dets, ExtractOptions(extract_embedding=False))
    masks = sorted((f.mask_probs["mask"], f.mask) for f in faces)
    assert [m for m, _ in masks] == pytest.approx(sorted(f.mask for f in images[1]))
    assert [flag for _, flag in masks] == [m >= 0.2 for m, _ in masks]


# --- CenterFace ------------------------------------------------------------------------------


def encode_centerface(faces: list[Face]) -> dict[str, np.ndarray]:
    h, w = H // 4, W // 4
    heat = np.zeros((1, h, w), np.float32)
    scale = np.zeros((2, h, w), np.float32)
    offset = np.zeros((2, h, w), np.float32)
    lms = np.zeros((10, h, w), np.float32)
    for f in faces:
        x1, y1, x2, y2 = f.box
        bw, bh = x2 - x1, y2 - y1
        col, row = int(((x1 + x2) / 2) // 4), int(((y1 + y2) / 2) // 4)
        heat[0, row, col] = f.score
        scale[:, row, col] = [math.log(bh / 4), math.log(bw / 4)]
        offset[:, row, col] = [(y1 + bh / 2) / 4 - row - 0.5, (x1 + bw / 2) / 4 - col - 0.5]
        rel = (f.landmarks - [x1, y1]) / [bw, bh]
        lms[:, row, col] = rel[:, ::-1].reshape(-1)  # (y, x) pairs
    return {"537": heat, "538": scale, "539": offset, "540": lms}


def test_centerface(tmp_path: Path) -> None:
    # the heatmap has one stride (4); faces of every size, anywhere on it
    images = scenes((32, 16, 8), 1, {32: 100.0, 16: 40.0, 8: 12.0})
    tensors = stack([encode_centerface(f) for f in images])
    detector = build(tmp_path, "centerface", "centerface", selector_graph("input.1", tensors))
    for batch in ([0], [2, 0, 1]):
        for found, k in zip(run(detector, batch), batch, strict=True):
            check(found, images[k])


# --- YOLOv5-Face -----------------------------------------------------------------------------

YOLO_ANCHORS = {
    8: ((4, 5), (8, 10), (13, 16)),
    16: ((23, 29), (43, 55), (73, 105)),
    32: ((146, 217), (231, 300), (335, 433)),
}


def encode_yolo_decoded(faces: list[Face]) -> dict[str, np.ndarray]:
    blocks = {s: np.zeros((3, H // s, W // s, 16), np.float32) for s in (8, 16, 32)}
    for f in faces:
        x1, y1, x2, y2 = f.box
        col, row = f.cell
        blocks[f.stride][f.anchor, row, col] = [
            (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, f.score, *f.landmarks.reshape(-1), 1.0
        ]  # fmt: skip
    return {"output": np.concatenate([b.reshape(-1, 16) for b in blocks.values()])}


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def encode_yolo_heads(faces: list[Face]) -> dict[str, np.ndarray]:
    heads = {s: np.zeros((3, H // s, W // s, 16), np.float32) for s in (8, 16, 32)}
    for head in heads.values():
        head[..., 4] = -30.0
    for f in faces:
        s, a = f.stride, f.anchor
        col, row = f.cell
        aw, ah = YOLO_ANCHORS[s][a]
        x1, y1, x2, y2 = f.box
        cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        rel = (f.landmarks - [col * s, row * s]) / [aw, ah]
        heads[s][a, row, col] = [
            logit((cx / s - col + 0.5) / 2), logit((cy / s - row + 0.5) / 2),
            logit(math.sqrt(bw / aw) / 2), logit(math.sqrt(bh / ah) / 2),
            logit(f.score), *rel.reshape(-1), 30.0,
        ]  # fmt: skip
    return {"stride_8": heads[8], "stride_16": heads[16], "stride_32": heads[32]}


@pytest.mark.parametrize("name", ["yolov5n-face", "yolov5s-face", "yolov5m-face", "yolov5l-face"])
def test_yolov5_face_decoded_output(tmp_path: Path, name: str) -> None:
    images = scenes((8, 16, 32), 3, {8: 14.0, 16: 44.0, 32: 110.0})
    tensors = stack([encode_yolo_decoded(f) for f in images])
    detector = build(tmp_path, name, "yolov5_face", selector_graph("input", tensors))
    assert detector.max_batch > 1
    for batch in ([1], [0, 1, 2]):
        for found, k in zip(run(detector, batch), batch, strict=True):
            check(found, images[k])


def test_yolov5_face_raw_heads(tmp_path: Path) -> None:
    # sizes each anchor can reach: (2 sigmoid)^2 * anchor spans 0..4x the anchor
    images = scenes((8, 16, 32), 3, {8: 14.0, 16: 60.0, 32: 260.0 / 1.2})
    tensors = stack([encode_yolo_heads(f) for f in images])
    detector = build(tmp_path, "yolov5s-face", "yolov5_face", selector_graph("input", tensors))
    for batch in ([2], [1, 2, 0]):
        for found, k in zip(run(detector, batch), batch, strict=True):
            check(found, images[k], tol=2e-3)


# --- SCRFD -----------------------------------------------------------------------------------


def encode_scrfd(faces: list[Face], kps: bool) -> dict[int, dict[str, np.ndarray]]:
    out = {}
    for s in (8, 16, 32):
        h, w = H // s, W // s
        score = np.zeros((h * w * 2, 1), np.float32)
        bbox = np.zeros((h * w * 2, 4), np.float32)
        kp = np.zeros((h * w * 2, 10), np.float32)
        for f in faces:
            if f.stride != s:
                continue
            col, row = f.cell
            i = (row * w + col) * 2 + f.anchor
            cx, cy = col * s, row * s
            x1, y1, x2, y2 = f.box
            score[i] = f.score
            bbox[i] = [(cx - x1) / s, (cy - y1) / s, (x2 - cx) / s, (y2 - cy) / s]
            kp[i] = ((f.landmarks - [cx, cy]) / s).reshape(-1)
        out[s] = {"score": score, "bbox": bbox, **({"kps": kp} if kps else {})}
    return out


@pytest.mark.parametrize(
    "layout",
    ["ifr_named_batched", "insightface_by_kind", "per_stride_unnamed", "no_keypoints"],
)
def test_scrfd_output_orders(tmp_path: Path, layout: str) -> None:
    kps = layout != "no_keypoints"
    images = scenes((8, 16, 32), 2, {8: 16.0, 16: 44.0, 32: 110.0})
    encoded = [encode_scrfd(f, kps) for f in images]
    kinds = ["score", "bbox", "kps"] if kps else ["score", "bbox"]
    if layout == "per_stride_unnamed":  # e.g. the 500m export: 443, 446, 449, 468, ...
        keys = [(s, k) for s in (8, 16, 32) for k in kinds]
        names = {key: str(443 + 3 * i) for i, key in enumerate(keys)}
    else:
        keys = [(s, k) for k in kinds for s in (8, 16, 32)]
        names = {
            key: f"{key[1]}_{key[0]}" if layout == "ifr_named_batched" else str(400 + i)
            for i, key in enumerate(keys)
        }
    tensors = {names[key]: np.stack([e[key[0]][key[1]] for e in encoded]) for key in keys}
    name = "scrfd_10g_gnkps" if kps else "scrfd_custom_nokps"
    detector = build(tmp_path, name, "scrfd", selector_graph("input.1", tensors))
    for batch in ([0], [1, 2, 0]):
        for found, k in zip(run(detector, batch), batch, strict=True):
            check(found, images[k], landmarks=kps)
            assert (found.landmarks is None) == (not kps)


@pytest.fixture(scope="module")
def real_scrfd(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    store = ModelStore(tmp_path_factory.mktemp("models"))
    entry = store.entry("scrfd_500m_bnkps")
    return load_detector(entry, store.ensure(entry.name), Settings(threads=2))


def test_scrfd_real_weights_batch_equals_single(real_scrfd: Detector) -> None:
    canvases = []
    for photo in ("players.jpg", "yaoming.jpg"):
        image = read_bgr(package_photo(photo))
        plan = plan_input(image.shape[1], image.shape[0], (640, 640), fixed=(640, 640))
        canvases.append(real_scrfd.prepare(letterbox(image, plan)))
    batch = real_scrfd.infer(np.stack(canvases))
    single = [real_scrfd.infer(c[None]) for c in canvases]
    counts = []
    for i in range(2):
        from_batch = real_scrfd.decode({k: v[i] for k, v in batch.items()}, (640, 640), 0.5)
        alone = real_scrfd.decode({k: v[0] for k, v in single[i].items()}, (640, 640), 0.5)
        np.testing.assert_allclose(from_batch.boxes, alone.boxes, atol=0.05)
        np.testing.assert_allclose(from_batch.landmarks, alone.landmarks, atol=0.05)
        # landmarks sit inside their boxes, eyes above the mouth
        lm, bx = from_batch.landmarks, from_batch.boxes
        assert np.all((lm[..., 0] >= bx[:, None, 0] - 2) & (lm[..., 0] <= bx[:, None, 2] + 2))
        assert np.all(lm[:, :2, 1].max(axis=1) < lm[:, 3:, 1].min(axis=1))
        counts.append(len(from_batch))
    assert counts[0] >= 5 and counts[1] == 1, counts


def test_every_catalogued_detector_family_is_registered() -> None:
    families = {e.family for e in Catalog.load() if e.task == "detection"}
    assert families - {"mtcnn"} <= set(DETECTOR_FAMILIES), families - set(DETECTOR_FAMILIES)


PREPROCESSING = sorted(
    {(tuple(e.preprocess.mean), tuple(e.preprocess.std), e.preprocess.color) for e in Catalog.load()}
)


@pytest.mark.parametrize(("mean", "std", "color"), PREPROCESSING)
def test_model_inputs_equal_opencv_blobs(mean: tuple, std: tuple, color: str) -> None:
    """Every catalogued normalisation gives what cv2.dnn.blobFromImages gives (the reference
    pipeline's), for a detector canvas and a batch of face crops."""
    rng = np.random.default_rng(7)
    canvas = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    crops = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    swap = color == "RGB"
    for images in (canvas[None], crops):
        ours = blob(images, list(mean), list(std), swap)
        # OpenCV's blob takes one scale factor: divide per channel after subtracting the mean
        theirs = cv2.dnn.blobFromImages(list(images), 1.0, images.shape[2:0:-1], mean, swapRB=swap)
        theirs /= np.asarray(std, np.float32)[None, :, None, None]
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
