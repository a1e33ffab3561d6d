"""The request pipeline: detect, filter, align, embed and classify faces, batched across requests."""

from facerest.pipeline.analyzer import ExtractOptions, FaceAnalyzer, ImageInput, Timings

__all__ = ["ExtractOptions", "FaceAnalyzer", "ImageInput", "Timings"]
