"""Model tools: ONNX graph surgery, TensorRT engine building."""
