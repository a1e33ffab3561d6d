"""Face detectors, one module per family, each decoding its own outputs."""

from facerest.models.detection.base import Detections, Detector

__all__ = ["Detections", "Detector"]
