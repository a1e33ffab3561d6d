"""Model tooling that runs outside a request: ONNX graph surgery, format conversion, TensorRT engines."""
