"""ArcFace-family recognizers: 112x112 aligned crops -> embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from facerest.models.align import norm_crop
from facerest.models.base import SessionFaceModel, box_crop
from facerest.models.catalog import CatalogEntry
from facerest.models.faces import Face
from facerest.runtime.base import InferenceSession


def normalisation_from_graph(path: Path) -> tuple[float, float] | None:
    """(mean, std) when the graph normalises its own input, as MXNet-converted ArcFace models do.

    Such graphs begin with a Sub and a Mul node (`_minus`/`_mul` after conversion); feeding them
    raw pixels is then the right thing (mean 0, std 1). None: the graph expects normalised input.
    """
    model = onnx.load(str(path), load_external_data=False)
    names = [node.name for node in model.graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else None


class ArcFaceRecognizer(SessionFaceModel):
    def __init__(
        self,
        entry: CatalogEntry,
        session: InferenceSession,
        model_path: Path | None = None,
        *,
        antialias: bool = False,
    ) -> None:
        super().__init__(entry, session)
        self.antialias = antialias
        if model_path is not None and not entry.preprocess.model_fields_set & {"mean", "std"}:
            found = normalisation_from_graph(model_path)
            if found is not None:
                self._mean, self._std = [found[0]] * 3, [found[1]] * 3
        self.dim = session.outputs[0].shape[-1]

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        if face.landmarks is None:  # no landmarks (whole-image fallback, embed_only): plain resize
            return box_crop(image, face.bbox, self.size)
        return norm_crop(image, face.landmarks, self.size, antialias=self.antialias)

    def apply(self, face: Face, row: np.ndarray) -> None:
        vector = row.astype(np.float32).reshape(-1)
        norm = float(np.linalg.norm(vector))
        face.norm = norm
        face.embedding = vector / norm if norm > 0 else vector
