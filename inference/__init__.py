"""Inference: the MIML model contract (ONNX + spec), preprocessing and the ONNX Runtime classifier."""
