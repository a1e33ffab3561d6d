"""How good a face is for recognition: its size, the detector's score, the sharpness of its
aligned crop, its pose (from the 5 landmarks) and how much of it the image's edge cuts off.

Each part is a plain measurement; `score` folds them into one number in 0..1, the product of one
factor per part: size s / (s + HALF_SIZE_PX), sharpness v / (v + HALF_SHARPNESS) (each 0.5 at
its constant, never saturating, so any loss of detail lowers the score), the detector's score,
cos(yaw) * cos(pitch), and the share of the face inside the image. The floors that enrolment
applies are settings (FACEREST_ENROL_*), checked by `shortfalls`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from facerest.imaging.marks import box_of_landmarks
from facerest.models.faces import Quality

#: ArcFace's 112x112 template: the aligned crop puts eyes, nose and mouth corners here
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float32,
)
#: the nose's height between the eye line and the mouth line in the template (0: eyes, 1: mouth)
TEMPLATE_NOSE_DROP = float(
    (TEMPLATE[2, 1] - TEMPLATE[:2, 1].mean()) / (TEMPLATE[3:, 1].mean() - TEMPLATE[:2, 1].mean())
)
#: the face width (pixels) at which the size factor is 0.5
HALF_SIZE_PX = 40.0
#: the crop sharpness (variance of its Laplacian) at which the sharpness factor is 0.5
HALF_SHARPNESS = 100.0


def sharpness(crop: np.ndarray) -> float:
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def pose(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """(yaw, pitch, roll, eye distance) from 5 landmarks: roll from the eye line; yaw from the
    nose's sideways offset from the face's midline; pitch from its height between eyes and mouth
    against the frontal template. A rough estimate (no 3D model), monotonic in the true angles."""
    points = np.asarray(landmarks, np.float64)
    left_eye, right_eye = points[0], points[1]
    eye_vector = right_eye - left_eye
    eye_distance = float(np.hypot(*eye_vector))
    roll = math.degrees(math.atan2(eye_vector[1], eye_vector[0]))
    # undo the roll around the eyes' midpoint, then measure in face-aligned axes
    angle = -math.radians(roll)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = (left_eye + right_eye) / 2
    upright = (points - centre) @ rotation.T
    eyes_y = upright[:2, 1].mean()
    mouth = upright[3:].mean(axis=0)
    half = max(eye_distance / 2, 1e-6)
    midline_x = (upright[:2, 0].mean() + mouth[0]) / 2
    yaw = math.degrees(math.asin(float(np.clip((upright[2, 0] - midline_x) / half, -1, 1))))
    drop = (upright[2, 1] - eyes_y) / max(mouth[1] - eyes_y, 1e-6)
    pitch = math.degrees(math.asin(float(np.clip((drop - TEMPLATE_NOSE_DROP) / 0.5, -1, 1))))
    return yaw, pitch, roll, eye_distance


def cut_share(bbox: np.ndarray, width: int, height: int) -> float:
    x1, y1, x2, y2 = (float(v) for v in bbox)
    area = max(x2 - x1, 1e-6) * max(y2 - y1, 1e-6)
    inside = max(min(x2, width) - max(x1, 0.0), 0.0) * max(min(y2, height) - max(y1, 0.0), 0.0)
    return float(np.clip(1.0 - inside / area, 0.0, 1.0))


def assess(
    crop: np.ndarray, bbox: np.ndarray, landmarks: np.ndarray | None, score: float, width: int, height: int
) -> Quality:
    """The quality of one face: `crop` its aligned recognizer input, the rest as detected."""
    size = float(bbox[2] - bbox[0])
    sharp = sharpness(crop)
    # the detector's box stops at the image's edge; the face's extent expected from its landmarks
    # (placed on the hidden side too) does not
    cut = cut_share(bbox, width, height)
    if landmarks is not None:
        cut = max(cut, cut_share(box_of_landmarks(landmarks), width, height))
    yaw = pitch = roll = eyes = None
    pose_factor = 1.0
    if landmarks is not None:
        yaw, pitch, roll, eyes = pose(landmarks)
        pose_factor = math.cos(math.radians(yaw)) * math.cos(math.radians(pitch))
    factors = (
        size / (size + HALF_SIZE_PX),
        sharp / (sharp + HALF_SHARPNESS),
        float(np.clip(score, 0.0, 1.0)) if score > 0 else 1.0,  # 0: placed by hand, not detected
        max(pose_factor, 0.0),
        1.0 - cut,
    )
    return Quality(float(np.prod(factors)), size, eyes, score, sharp, yaw, pitch, roll, cut)


@dataclass(slots=True, frozen=True)
class Floors:
    """What enrolment refuses (FACEREST_ENROL_MIN_*); a floor of 0 checks nothing."""

    min_sharpness: float = 0.0
    min_face_size: float = 0.0
    max_yaw: float = 90.0
    max_cut: float = 1.0
    min_score: float = 0.0


def shortfalls(quality: Quality, floors: Floors) -> list[str]:
    """Why a face is below the floors, one reason per part (empty: it is good enough)."""
    reasons = []
    if quality.sharpness < floors.min_sharpness:
        reasons.append(f"face too blurred (sharpness {quality.sharpness:.0f} < {floors.min_sharpness:g})")
    if quality.face_size < floors.min_face_size:
        reasons.append(f"face too small ({quality.face_size:.0f} px < {floors.min_face_size:g})")
    if quality.yaw is not None and abs(quality.yaw) > floors.max_yaw:
        reasons.append(f"face turned too far (yaw {quality.yaw:.0f}° > {floors.max_yaw:g}°)")
    if quality.cut > floors.max_cut:
        reasons.append(f"face cut by the image edge ({quality.cut:.0%} outside > {floors.max_cut:.0%})")
    if quality.score < floors.min_score:
        reasons.append(f"face quality too low (score {quality.score:.2f} < {floors.min_score:g})")
    return reasons
