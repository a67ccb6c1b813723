"""edgepure.export: PyTorch purifiers and classifiers to static ONNX graphs (opset 18), with parity checks."""
