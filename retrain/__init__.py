"""Closed loop: retraining, ONNX export, gates, registry and serving."""
