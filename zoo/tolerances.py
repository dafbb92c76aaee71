"""Numeric tolerances, in one place: per comparison and dtype, overridable per entry (its
reference `atol`) and per call (`--atol`)."""

from __future__ import annotations

# torch model vs an independent upstream implementation of the same weights (stored references).
REFERENCE_ATOL = 1e-4
# onnxruntime fp32 vs the torch model it was exported from.
EXPORT_ATOL = {"float32": 1e-4, "float16": 0.1}  # fp16: logits of magnitude ~10 carry ~0.05 error
# Detections (boxes as a fraction of the image's longer side, and scores) from onnxruntime vs torch. The
# graph's bilinear resize of a photo maps pixel coordinates with a float32 scale computed the other way
# round from torch's (out/in vs in/out): pixels differ by ~2e-4, and random-weight Faster R-CNN amplifies
# that to box/score differences of up to 2.0e-3 (china.jpg; SSDlite 2.3e-4, synthetic images 4e-6).
# 5e-3 is 1.6 px at 320 px and a score within 0.005.
DETECTION_ATOL = 5e-3
# int8 models move logits by design (max |diff| of several units on ImageNet logits); they are judged by
# the cosine similarity of each output row to torch's (a floor that catches broken quantization: seen
# 0.90 on EfficientNet-Lite0's synthetic parity images, 0.97 on MiniLM) and report top-1 agreement on
# held-out images.
INT8_MIN_COSINE = 0.8
# bf16 compute (OpenVINO's CPU plugin on AVX512_BF16/AMX CPUs) keeps 8 bits of mantissa: logits move by up to
# ~0.5 (EfficientNet-Lite0), so it is judged like int8 by each row's cosine, at a floor a broken graph cannot
# reach, and its decisions (top-1, entities, answers) must also agree on this share of the rows. Not all of
# them: on EfficientNet-Lite0's 30 held-out views 29 agree, the 30th a tie of a confused model (top two
# probabilities 0.046 and 0.044, 0.044 apart in logits, vs bf16's 0.22 there).
BF16_MIN_COSINE = 0.99
BF16_MIN_AGREEMENT = 0.95
# serve's numpy preprocessing + onnxruntime vs torch preprocessing + torch, end to end.
END_TO_END_ATOL = 1e-4
# Minimum share of inputs whose top-1 class must agree (classifiers).
MIN_TOP1_AGREEMENT = 1.0
