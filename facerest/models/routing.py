"""Which family an ONNX graph belongs to, told from its inputs and outputs alone.

Used for files dropped in `<models>/custom/`: their name is not in the catalogue, so the graph
is the only thing to go by. A catalogue entry of the same name (in `<models>/catalog.json`) wins.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from facerest.errors import ModelError
from facerest.models.catalog import CatalogEntry, ModelFile, Preprocess

Dim = int | str | None


def _shape(value: onnx.ValueInfoProto) -> list[Dim]:
    dims: list[Dim] = []
    for d in value.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return dims


def graph_signature(
    model: onnx.ModelProto,
) -> tuple[list[tuple[str, list[Dim]]], list[tuple[str, list[Dim]]]]:
    """(inputs, outputs) as (name, shape) pairs; initializers listed as inputs are left out."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [(v.name, _shape(v)) for v in model.graph.input if v.name not in weights]
    outputs = [(v.name, _shape(v)) for v in model.graph.output]
    return inputs, outputs


def classify(model: onnx.ModelProto) -> tuple[str, str]:
    """(task, family) of a graph; raises ModelError when it matches no known family."""
    inputs, outputs = graph_signature(model)
    if len(inputs) != 1:
        raise ModelError(f"the graph has {len(inputs)} inputs; face models take one image tensor")
    in_shape = inputs[0][1]
    names = [n for n, _ in outputs]
    last = [s[-1] if s else None for _, s in outputs]
    ranks = [len(s) for _, s in outputs]
    nhwc = len(in_shape) == 4 and in_shape[3] == 3 and in_shape[1] != 3

    yunet = {f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32)}
    if set(names) == yunet:  # YuNet (issue 32): scores split into class and objectness
        return "detection", "yunet"
    if len(outputs) in (6, 9) and all(r in (2, 3) for r in ranks) and set(last) <= {1, 4, 10}:
        return "detection", "scrfd"
    if all(n.startswith("face_rpn_") for n in names) and len(outputs) in (9, 12):
        return "detection", "mnet_cov2" if any("type_prob" in n for n in names) else "retinaface"
    if len(outputs) == 4 and all(r == 4 for r in ranks) and [s[1] for _, s in outputs] == [1, 2, 2, 10]:
        return "detection", "centerface"
    if len(outputs) == 1 and ranks[0] == 3 and last[0] == 16:
        return "detection", "yolov5_face"
    if len(outputs) == 1 and ranks[0] == 2:
        width = last[0]
        if nhwc and width == 2:
            return "mask", "mask_classifier"
        if width == 212:
            return "landmarks", "landmark_2d106"
        if width == 202:
            return "genderage", "insightface_genderage"
        if isinstance(width, int) and width >= 64:
            return "recognition", "arcface"
    described = ", ".join(f"{n}{s}" for n, s in outputs)
    raise ModelError(
        f"cannot tell the family of this graph (input {inputs[0][0]}{in_shape}, outputs {described}); "
        "add an entry for it to <models>/catalog.json"
    )


def _preprocess(task: str, family: str, path: Path) -> Preprocess:
    if family == "arcface":
        from facerest.models.recognition import normalisation_from_graph

        found = normalisation_from_graph(path)
        mean, std = found if found is not None else (127.5, 127.5)
        return Preprocess(mean=[mean] * 3, std=[std] * 3)
    if family == "yunet":  # BGR pixels as they are, as OpenCV's FaceDetectorYN feeds it
        return Preprocess(mean=[0.0] * 3, std=[1.0] * 3, color="BGR")
    if family == "yolov5_face":
        return Preprocess(mean=[0.0] * 3, std=[255.0] * 3)
    if family in ("retinaface", "mnet_cov2", "centerface", "insightface_genderage"):
        return Preprocess(mean=[0.0] * 3, std=[1.0] * 3)
    if family == "landmark_2d106":
        return Preprocess(mean=[0.0] * 3, std=[1.0] * 3)
    if family == "mask_classifier":
        return Preprocess(mean=[127.5] * 3, std=[127.5] * 3, layout="NHWC")
    return Preprocess()


def entry_for_custom_model(name: str, path: Path) -> CatalogEntry:
    """A catalogue entry for `<models>/custom/<name>.onnx`, its family read from the graph."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends, untyped
        raise ModelError(f"custom model {path} is not a readable ONNX file: {exc}") from exc
    task, family = classify(model)
    inputs, _ = graph_signature(model)
    shape = [d if isinstance(d, int) else 1 if i == 0 else -1 for i, d in enumerate(inputs[0][1])]
    decoder = {"landmark_std": 0.2, "masks": True} if family == "mnet_cov2" else {}
    return CatalogEntry(
        name=name,
        task=task,  # type: ignore[arg-type]
        family=family,
        files=[ModelFile(name=path.name)],
        input_shape=shape,
        preprocess=_preprocess(task, family, path),
        decoder=decoder,
        notes=f"custom model, family recognised from its graph ({path})",
    )
