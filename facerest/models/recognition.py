"""Face recognizers: a face aligned the way the network was trained -> a unit embedding.

Every recognizer aligns with one call, `align(image, landmarks)`: the pipeline passes the photo
and the detector's 5 landmarks (eye centres, nose tip, mouth corners, image left first); a stored
face crop and its landmarks in crop pixels go through the same call, so another recognizer can
re-embed a face from its crop.

- ArcFace-family networks (InsightFace's, AdaFace) and OpenCV's SFace: the 112x112 ArcFace
  template (SFace's `FaceRecognizerSF.alignCrop` is this similarity onto the same five points).
- dlib's ResNet: dlib's 150x150 face chip with padding 0.25 (`get_face_chip`), cut from the
  detector's landmarks placed where dlib's 5-point shape puts a face.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from facerest.models.align import norm_crop
from facerest.models.attributes import SCRFD_IN_DLIB_FRAME, dlib_chip
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


class Recognizer(SessionFaceModel):
    """Aligned crops -> L2-normalised embeddings (`face.embedding`, the raw norm in `face.norm`)."""

    #: how faces are aligned for this network: a gallery's faces re-embedded for it need this
    alignment = ""

    def __init__(self, entry: CatalogEntry, session: InferenceSession) -> None:
        super().__init__(entry, session)
        dim = session.outputs[0].shape[-1]
        self.dim = dim if isinstance(dim, int) else 512

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The network's input crop of the face with these 5 landmarks (pixels of `image`)."""
        raise NotImplementedError

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        if face.landmarks is None:  # no landmarks (whole-image fallback, embed_only): plain resize
            return box_crop(image, face.bbox, self.size)
        return self.align(image, np.asarray(face.landmarks))

    def apply(self, face: Face, row: np.ndarray) -> None:
        vector = row.astype(np.float32).reshape(-1)
        norm = float(np.linalg.norm(vector))
        face.norm = norm
        face.embedding = vector / norm if norm > 0 else vector


class ArcFaceRecognizer(Recognizer):
    """112x112 crops on the ArcFace template (InsightFace's norm_crop; OpenCV's alignCrop for SFace)."""

    alignment = "arcface"

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

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return norm_crop(image, landmarks, self.size, antialias=self.antialias)


class DlibResNetRecognizer(Recognizer):
    """dlib's ResNet (dlib_face_recognition_resnet_model_v1): 150x150 chips, padding 0.25.

    dlib cuts its chip from the 5 points of its shape predictor (eye corners, nose base); the
    detector's points are placed where that shape puts a face (SCRFD_IN_DLIB_FRAME: their mean
    position over 82 faces, shared by the dlib age and gender models). The chip geometry is
    dlib's own (`attributes.dlib_chip`, image pyramid included).
    """

    alignment = "dlib_chip"
    padding = 0.25
    default_size = 150

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        points = np.asarray(landmarks, np.float64)
        return dlib_chip(image, points, SCRFD_IN_DLIB_FRAME, self.size, self.padding)


#: recognizer family (catalogue) -> class
RECOGNIZER_FAMILIES: dict[str, type[Recognizer]] = {
    "arcface": ArcFaceRecognizer,
    "sface": ArcFaceRecognizer,
    "dlib_resnet": DlibResNetRecognizer,
}
