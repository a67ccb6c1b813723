"""edgepure.calibration: INT8 calibration data and Q/DQ graphs for TensorRT (torch-free)."""
