"""facerest: face detection and recognition over REST."""

__version__ = "0.1.0"
