"""Detections drawn on the image: boxes, landmarks, scores, sizes, a footer with the count."""

from __future__ import annotations

import cv2
import numpy as np

from facerest.models.faces import Face

GREEN = (0, 200, 0)
RED = (0, 0, 230)
LANDMARK_COLORS = [(0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0)]


def draw_faces(
    image: np.ndarray,
    faces: list[Face],
    *,
    landmarks: bool = True,
    scores: bool = True,
    sizes: bool = True,
) -> np.ndarray:
    canvas = image.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 500))
    font_scale = max(0.4, max(canvas.shape[:2]) / 1500)
    for face in faces:
        color = RED if face.mask is False else GREEN
        x1, y1, x2, y2 = np.round(face.bbox).astype(int).tolist()
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        if landmarks and face.landmarks is not None:
            for (x, y), dot in zip(face.landmarks, LANDMARK_COLORS, strict=False):
                cv2.circle(canvas, (round(float(x)), round(float(y))), thickness + 1, dot, -1)
        labels = []
        if scores:
            labels.append(f"{face.score:.3f}")
        if sizes:
            labels.append(f"w:{x2 - x1}")
        if labels:
            cv2.putText(
                canvas,
                " ".join(labels),
                (x1, max(12, y1 - 4)),
                cv2.FONT_HERSHEY_SIMPLEX,
                font_scale,
                color,
                thickness,
                cv2.LINE_AA,
            )
    footer = max(24, round(canvas.shape[0] * 0.05))
    canvas = cv2.copyMakeBorder(canvas, 0, footer, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    cv2.putText(
        canvas,
        f"faces: {len(faces)}",
        (8, canvas.shape[0] - footer // 3),
        cv2.FONT_HERSHEY_SIMPLEX,
        max(0.5, footer / 40),
        (255, 255, 255),
        max(1, thickness),
        cv2.LINE_AA,
    )
    return canvas
