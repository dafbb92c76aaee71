"""Deterministic inputs and reference comparisons shared by `zoo validate` and export checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from zoo.schema import ImageInputSpec

# Fixed sentences of different lengths (for text references and dynamic-sequence export checks).
SENTENCES = (
    "A model zoo ships pretrained backbones.",
    "The quick brown fox jumps over the lazy dog, then runs into the forest and disappears.",
    "Numbers must agree at every hop: torch, ONNX, and the runtime.",
    "ok",
)


def synthetic_images(spec: ImageInputSpec, batch: int = 1) -> torch.Tensor:
    """A normalised NCHW batch from a closed formula (no RNG: identical on every machine)."""
    height, width = spec.size
    n = torch.arange(batch, dtype=torch.float64).view(batch, 1, 1, 1)
    c = torch.arange(3, dtype=torch.float64).view(1, 3, 1, 1)
    y = torch.arange(height, dtype=torch.float64).view(1, 1, height, 1)
    x = torch.arange(width, dtype=torch.float64).view(1, 1, 1, width)
    pixels = 0.5 + 0.5 * torch.sin(0.05 * x * (c + 1) + 0.031 * y + 0.7 * n) * torch.cos(0.017 * (x - y) + n)
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
    return ((pixels - mean) / std).float()


def asset_path(name: str) -> Path:
    """A sample photograph shipped with the package (see zoo/assets/README.md)."""
    return Path(str(resources.files("zoo") / "assets" / name))


@dataclass(frozen=True)
class Comparison:
    """How far `actual` is from `expected`, row by row."""

    label: str
    max_abs_diff: float
    atol: float
    top1_agreement: float | None  # share of rows whose argmax agrees (classifiers), else None

    @property
    def ok(self) -> bool:
        top1_ok = self.top1_agreement is None or self.top1_agreement >= 1.0
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.atol and top1_ok

    def line(self) -> str:
        mark = "✓" if self.ok else "✗"
        top1 = "" if self.top1_agreement is None else f"  top-1 agreement {self.top1_agreement:.0%}"
        return f"{mark} {self.label}: max |diff| {self.max_abs_diff:.3g} (atol {self.atol:g}){top1}"


@dataclass(frozen=True)
class Check:
    """A yes/no check shown beside the numeric comparisons (e.g. the expected top-1 class)."""

    label: str
    ok: bool

    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.label}"


def compare(label: str, actual: np.ndarray, expected: np.ndarray, atol: float, classifier: bool) -> Comparison:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Comparison(f"{label} (shape {actual.shape} != expected {expected.shape})", math.inf, atol, None)
    diff = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    if not np.all(np.isfinite(actual)):
        diff = math.inf
    top1 = None
    if classifier:  # one logit (binary head): agreement of the sign; else of the argmax
        decide = (lambda x: x[..., 0] > 0) if actual.shape[-1] == 1 else (lambda x: x.argmax(-1))
        top1 = float(np.mean(decide(actual) == decide(expected)))
    return Comparison(label, diff, atol, top1)
