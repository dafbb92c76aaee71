"""Numeric tolerances, in one place: per comparison and dtype, overridable per entry (its
reference `atol`) and per call (`--atol`)."""

from __future__ import annotations

# torch model vs an independent upstream implementation of the same weights (stored references).
REFERENCE_ATOL = 1e-4
# onnxruntime fp32 vs the torch model it was exported from.
EXPORT_ATOL = {"float32": 1e-4, "float16": 0.1}  # fp16: logits of magnitude ~10 carry ~0.05 error
# int8 models move logits by design (max |diff| of several units on ImageNet logits); they are judged by
# the cosine similarity of each output row to torch's (a floor that catches broken quantization: seen
# 0.90 on EfficientNet-Lite0's synthetic parity images, 0.97 on MiniLM) and report top-1 agreement on
# held-out images.
INT8_MIN_COSINE = 0.8
# serve's numpy preprocessing + onnxruntime vs torch preprocessing + torch, end to end.
END_TO_END_ATOL = 1e-4
# Minimum share of inputs whose top-1 class must agree (classifiers).
MIN_TOP1_AGREEMENT = 1.0
