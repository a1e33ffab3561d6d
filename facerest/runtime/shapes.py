"""Shape planning for engines with optimisation profiles (native TensorRT, ONNX Runtime's TensorRT
provider, fixed-shape CUDA graphs): which input shapes a model will be fed, as (min, opt, max).

A profile must cover every shape the pipeline sends, or the engine refuses the call (native
TensorRT) or rebuilds itself at run time for seconds (ONNX Runtime's TensorRT provider). The
pipeline's shapes follow from `facerest.imaging.resize`:

- stride-32 detectors (SCRFD, RetinaFace, CenterFace, YOLOv5-Face): the canvas follows the image,
  each side a multiple of 32 up to max_size rounded *up* to 32 (max_size 1000 gives 1024), and
  the close-up pass uses a canvas of 2 x its side (512 px) whatever max_size is; every detector
  scale policy (facerest/pipeline/scale.py) feeds canvases no larger than the reference scale's,
  down to 96 px (a tiny image at native scale plus its 64 px border), within the 32 px floor;
- MTCNN: P-Net slides over a pyramid whose smallest level is 12 px (its cell), the canvas has no
  stride (up to max_size, or the close-up's 512 px); R-Net and O-Net take every candidate of an
  image in one call (hundreds of rows), not det_batch_size;
- crop models (recognizers, attributes, landmarks): fixed sides, batch 1..their batch size.

Everything here is plain arithmetic so it is tested without a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from facerest.errors import BadInput

if TYPE_CHECKING:
    from facerest.config import Settings

#: the smallest side a stride-32 detector can take (one cell of its coarsest feature map)
STRIDE_DETECTOR_MIN_SIDE = 32
#: P-Net's receptive field: the pyramid stops at this side (facerest.models.detection.mtcnn.CELL_SIZE)
MTCNN_PNET_MIN_SIDE = 12
#: R-Net/O-Net rows per call the engine is built for; more candidates are run in slices of this
MTCNN_STAGE_MAX_BATCH = 256
#: the close-up pass's longer side (facerest.imaging.resize.CLOSEUP_SIDE); its canvas is twice it
CLOSEUP_SIDE = 256


@dataclass(frozen=True, slots=True)
class ModelRole:
    """What a graph is in the pipeline, as far as its input shapes go."""

    task: str  # detection, recognition, genderage, landmarks, mask
    family: str  # scrfd, mtcnn, arcface, ...
    stage: int = 0  # index of the file within its model (MTCNN: 0 P-Net, 1 R-Net, 2 O-Net)
    allow_batching: bool = True


@dataclass(frozen=True, slots=True)
class ShapeLimits:
    """The settings that decide input shapes."""

    max_size: tuple[int, int]  # (width, height)
    det_batch_size: int
    rec_batch_size: int
    closeup_pass: bool = True

    @classmethod
    def of(cls, settings: Settings) -> ShapeLimits:
        width, height = settings.max_size
        return cls((width, height), settings.det_batch_size, settings.rec_batch_size, settings.closeup_pass)


def round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def canvas_range(role: ModelRole, limits: ShapeLimits) -> tuple[tuple[int, int], tuple[int, int]]:
    """((min_w, min_h), (max_w, max_h)) of the canvases a detector graph is fed."""
    width, height = limits.max_size
    # every detector family but MTCNN has a coarsest feature stride of 32
    stride, low = (1, MTCNN_PNET_MIN_SIDE) if role.family == "mtcnn" else (32, STRIDE_DETECTOR_MIN_SIDE)
    high_w, high_h = round_up(width, stride), round_up(height, stride)
    if limits.closeup_pass:  # the close-up canvas does not shrink with max_size
        closeup = round_up(2 * CLOSEUP_SIDE, stride)
        high_w, high_h = max(high_w, closeup), max(high_h, closeup)
    return (low, low), (high_w, high_h)


def batch_range(role: ModelRole, limits: ShapeLimits) -> tuple[int, int]:
    """(opt, max) rows per call; the minimum is always 1."""
    if role.family == "mtcnn" and role.stage > 0:
        return 32, MTCNN_STAGE_MAX_BATCH
    if not role.allow_batching:
        return 1, 1
    if role.task == "detection":
        return limits.det_batch_size, limits.det_batch_size
    return limits.rec_batch_size, limits.rec_batch_size


def profile_shapes(
    role: ModelRole, inputs: list[tuple[str, list[int | None]]], limits: ShapeLimits
) -> dict[str, list[list[int]]]:
    """{input name: [min, opt, max]} for `inputs` ((name, dims with None where dynamic)).

    Fixed dimensions stay as they are. Spatial axes: NCHW (axes 2, 3 = height, width) unless the
    last axis is a fixed channel count (NHWC; MTCNN's graphs take width before height, so
    channel-last graphs get the larger of the two sides on both spatial axes).
    """
    opt_batch, max_batch = batch_range(role, limits)
    (low_w, low_h), (high_w, high_h) = canvas_range(role, limits)
    shapes = {}
    for name, dims in inputs:
        channel_last = len(dims) == 4 and dims[-1] is not None and dims[-1] in (1, 3)
        low, opt, high = [], [], []
        for axis, dim in enumerate(dims):
            if dim is not None and dim > 0:
                low.append(dim), opt.append(dim), high.append(dim)
            elif axis == 0:
                low.append(1), opt.append(opt_batch), high.append(max_batch)
            elif channel_last:
                side = max(high_w, high_h)
                low.append(min(low_w, low_h)), opt.append(side), high.append(side)
            else:
                is_height = axis == len(dims) - 2
                side, floor = (high_h, low_h) if is_height else (high_w, low_w)
                # TensorRT tunes its kernels for `opt`: the canvas of a full-size image
                opt_side = min(side, round_up(limits.max_size[1 if is_height else 0], 32))
                low.append(floor), opt.append(opt_side), high.append(side)
        shapes[name] = [low, opt, high]
    return shapes


def ort_tensorrt_profile_options(profiles: dict[str, list[list[int]]]) -> dict[str, str]:
    """The profile as ONNX Runtime's TensorRT provider options (`name:1x3x32x32,other:...`).

    Without them the provider builds an engine for the first shape it sees and rebuilds it for
    every larger one, at run time, for seconds each.
    """
    dynamic = {n: p for n, p in profiles.items() if p[0] != p[2]}
    if not dynamic:
        return {}

    def render(index: int) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in p[index])}" for name, p in dynamic.items())

    return {
        "trt_profile_min_shapes": render(0),
        "trt_profile_opt_shapes": render(1),
        "trt_profile_max_shapes": render(2),
    }


def check_shape(name: str, shape: tuple[int, ...], low: tuple[int, ...], high: tuple[int, ...]) -> None:
    """BadInput unless `shape` lies within the profile [low, high] on every axis (rows excepted:
    more rows than the maximum are run in slices by the caller)."""
    if len(shape) != len(high) or any(
        s < lo or (axis > 0 and s > hi) for axis, (s, lo, hi) in enumerate(zip(shape, low, high, strict=True))
    ):
        raise BadInput(
            f"input {name} of shape {tuple(shape)} is outside this engine's profile "
            f"{tuple(low)}..{tuple(high)}; rebuild it for the current FACEREST_MAX_SIZE"
        )
