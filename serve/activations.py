"""Softmax and log-softmax over the last axis, numerically stable (the maximum subtracted first), and the
logistic sigmoid (exp of -|x| only: no overflow at any logit, full precision on both sides):
the activations the runtime applies to a model's logits (classification scores, entity scores, QA spans)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(x))  # at most 1: no overflow, and no cancellation on either side of 0
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
