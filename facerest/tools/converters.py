"""The conversions a catalogue file may name (`ModelFile.convert`): packaged original -> the ONNX
file facerest runs. Each is deterministic, so the result's md5 is known in advance and checked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from facerest.tools import onnx_tools
from facerest.tools.dlib_convert import convert_dlib_resnet

Converter = Callable[[Path, Path], None]


def zoo_recognizer(source: Path, target: Path) -> None:
    """OpenCV Zoo's block-quantised recognizer (SFace int8bq): its unused graph inputs dropped,
    weights dequantised into float constants, Dropout removed, a batch axis."""
    model = onnx_tools.load(source)
    onnx_tools.remove_unused_inputs(model)
    onnx_tools.fold_constant_weights(model)
    onnx_tools.set_batch(model, "dynamic")
    onnx_tools.save(model, target)


def zoo_detector(source: Path, target: Path) -> None:
    """OpenCV Zoo's YuNet (exported at 640x640, batch 1): weights dequantised, and input and
    outputs made dynamic (its heads flatten with [1, -1, C], made [0, -1, C]) so the canvas
    follows the image and images batch, as OpenCV's own FaceDetectorYN feeds it any size."""
    model = onnx_tools.load(source)
    onnx_tools.remove_unused_inputs(model)
    onnx_tools.fold_constant_weights(model)
    onnx_tools.batch_row_reshapes(model)
    onnx_tools.set_dynamic_input(model)
    onnx_tools.save(model, target)


CONVERTERS: dict[str, Converter] = {
    "zoo_recognizer": zoo_recognizer,
    "zoo_detector": zoo_detector,
    "dlib_resnet": convert_dlib_resnet,
}
