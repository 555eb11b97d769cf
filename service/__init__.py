"""REST service and torch-free ONNX inference engine."""
