"""Faces in video: frame sources and decoding, sampling, the face tracker, stream jobs."""
