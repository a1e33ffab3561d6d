"""Face attribute models: gender and age, masks."""

from __future__ import annotations

import cv2
import numpy as np

from facerest.align import ARCFACE_TEMPLATE, similarity_transform
from facerest.faces import Face
from facerest.models.base import FaceModel, blob
from facerest.models.catalog import CatalogEntry
from facerest.runtime.base import InferenceSession


def padded_template(size: int, padding: float) -> np.ndarray:
    """The ArcFace template placed in a `size` chip with `padding` (fraction of the face) around it."""
    unit = ARCFACE_TEMPLATE / 112.0
    centered = (unit - 0.5) / (1.0 + 2.0 * padding) + 0.5
    return (centered * size).astype(np.float32)


class DlibAgeGender(FaceModel):
    """dlib-models' age predictor (81 one-year bins) and gender classifier (Cydral, CC0).

    dlib cuts 32x32 (gender) and 64x64 (age) chips with 0.2 padding; both are cut here from the
    original image by a similarity transform of the 5 detector landmarks.
    """

    age_size = 64
    gender_size = 32
    padding = 0.2

    def __init__(self, entry: CatalogEntry, gender: InferenceSession, age: InferenceSession) -> None:
        super().__init__(entry)
        self.gender_session, self.age_session = gender, age
        self._template = padded_template(self.age_size, self.padding)
        self._mean = list(entry.preprocess.mean)
        self._std = list(entry.preprocess.std)
        self.age_weights = np.array([0.25, *range(1, 81)], dtype=np.float32)

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        if face.landmarks is None:
            x1, y1, x2, y2 = np.round(face.bbox).astype(int)
            region = image[max(y1, 0) : max(y2, 1), max(x1, 0) : max(x2, 1)]
            return cv2.resize(region if region.size else image, (self.age_size, self.age_size))
        matrix = similarity_transform(face.landmarks, self._template)
        return cv2.warpAffine(image, matrix, (self.age_size, self.age_size), borderMode=cv2.BORDER_REPLICATE)

    def prepare(self, crops: np.ndarray) -> np.ndarray:
        return crops

    def infer(self, batch: np.ndarray) -> np.ndarray:
        small = np.stack(
            [cv2.resize(c, (self.gender_size, self.gender_size), interpolation=cv2.INTER_AREA) for c in batch]
        )
        gender = self.gender_session.run({"images": blob(small, self._mean, self._std, True)})
        age = self.age_session.run({"images": blob(batch, self._mean, self._std, True)})
        return np.concatenate([next(iter(gender.values())), next(iter(age.values()))], axis=1)

    def apply(self, face: Face, row: np.ndarray) -> None:
        female, male = float(row[0]), float(row[1])
        face.gender = "male" if male >= female else "female"
        face.age = round(float(row[2:] @ self.age_weights))


class InsightFaceGenderAge(FaceModel):
    """genderage_v1 (InsightFace, 96x96 or 112x112 input): 2 gender logits, then 100 age bin pairs."""

    def __init__(self, entry: CatalogEntry, session: InferenceSession) -> None:
        super().__init__(entry)
        self.session = session
        self.input_name = session.inputs[0].name
        shape = session.inputs[0].shape
        self.size = shape[2] if isinstance(shape[2], int) else 112

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        from facerest.align import norm_crop

        if face.landmarks is None:
            return cv2.resize(image, (self.size, self.size))
        return norm_crop(image, face.landmarks, self.size)

    def prepare(self, crops: np.ndarray) -> np.ndarray:
        pre = self.entry.preprocess
        return blob(crops, pre.mean, pre.std, pre.color == "RGB")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return next(iter(self.session.run({self.input_name: batch}).values())).reshape(len(batch), -1)

    def apply(self, face: Face, row: np.ndarray) -> None:
        face.gender = "male" if int(np.argmax(row[:2])) == 1 else "female"
        bins = row[2:202].reshape(100, 2)
        face.age = int(np.argmax(bins, axis=1).sum())


class MaskClassifier(FaceModel):
    """mask_detector (224x224) / mask_detector112: two-way softmax, mask vs no mask."""

    threshold = 0.89

    def __init__(self, entry: CatalogEntry, session: InferenceSession) -> None:
        super().__init__(entry)
        self.session = session
        self.input_name = session.inputs[0].name
        shape = session.inputs[0].shape
        self.nhwc = shape[-1] == 3
        side = shape[1] if self.nhwc else shape[2]
        self.size = side if isinstance(side, int) else 112

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        x1, y1, x2, y2 = np.round(face.bbox).astype(int)
        region = image[max(y1, 0) : max(y2, 1), max(x1, 0) : max(x2, 1)]
        return cv2.resize(region if region.size else image, (self.size, self.size))

    def prepare(self, crops: np.ndarray) -> np.ndarray:
        pre = self.entry.preprocess
        x = blob(crops, pre.mean, pre.std, pre.color == "RGB")
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if self.nhwc else x

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return next(iter(self.session.run({self.input_name: batch}).values())).reshape(len(batch), -1)

    def apply(self, face: Face, row: np.ndarray) -> None:
        mask, no_mask = float(row[0]), float(row[1])
        face.mask_probs = {"mask": mask, "no_mask": no_mask}
        face.mask = mask > no_mask and mask >= self.threshold
