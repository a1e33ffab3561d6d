"""Offline model tools: ONNX surgery, TensorRT engine builds, Triton model repositories."""
