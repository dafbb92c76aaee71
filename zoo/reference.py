"""Deterministic inputs and reference comparisons shared by `zoo validate` and export checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from zoo.schema import ImageInputSpec, ModelEntry

# Fixed sentences of different lengths (for text references and dynamic-sequence export checks).
SENTENCES = (
    "A model zoo ships pretrained backbones.",
    "The quick brown fox jumps over the lazy dog, then runs into the forest and disappears.",
    "Numbers must agree at every hop: torch, ONNX, and the runtime.",
    "ok",
)


def synthetic_pixels(batch: int, size: tuple[int, int]) -> torch.Tensor:
    """An NCHW batch of pixels in [0, 1] from a closed formula (no RNG: identical on every machine)."""
    height, width = size
    n = torch.arange(batch, dtype=torch.float64).view(batch, 1, 1, 1)
    c = torch.arange(3, dtype=torch.float64).view(1, 3, 1, 1)
    y = torch.arange(height, dtype=torch.float64).view(1, 1, height, 1)
    x = torch.arange(width, dtype=torch.float64).view(1, 1, 1, width)
    return 0.5 + 0.5 * torch.sin(0.05 * x * (c + 1) + 0.031 * y + 0.7 * n) * torch.cos(0.017 * (x - y) + n)


def synthetic_images(spec: ImageInputSpec, batch: int = 1, size: tuple[int, int] | None = None) -> torch.Tensor:
    """`synthetic_pixels` normalised with the entry's mean/std, at its input size or at `size` = (height, width)."""
    pixels = synthetic_pixels(batch, size or spec.size)
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
    return ((pixels - mean) / std).float()


def asset_path(name: str) -> Path:
    """A sample photograph shipped with the package (see zoo/assets/README.md)."""
    return Path(str(resources.files("zoo") / "assets" / name))


@dataclass(frozen=True)
class Comparison:
    """How far `actual` is from `expected`, row by row. Judged by `atol` (and top-1 agreement for
    classifiers), or, for quantized models whose logits move by design, by `cosine_floor`."""

    label: str
    max_abs_diff: float
    atol: float | None
    top1_agreement: float | None  # share of rows whose argmax agrees (classifiers), else None
    min_cosine: float = 1.0  # lowest cosine similarity between matching rows
    cosine_floor: float | None = None
    # Segmentation reports per-pixel agreement without requiring 100 %: among ~10^5 pixels some are exact
    # ties, and within `atol` an argmax can only flip where the top two logits are within 2 * atol.
    top1_required: bool = True
    agreement_name: str = "top-1 agreement"  # what top1_agreement counts (detections: matched detections)
    # Judged by `cosine_floor`: the share of decisions that must also agree (bf16), where they are required.
    min_agreement: float | None = None

    @property
    def ok(self) -> bool:
        if not math.isfinite(self.max_abs_diff):
            return False
        if self.cosine_floor is not None:
            agreement_ok = (self.min_agreement is None or self.top1_agreement is None or not self.top1_required
                            or self.top1_agreement >= self.min_agreement)
            return self.min_cosine >= self.cosine_floor and agreement_ok
        top1_ok = self.top1_agreement is None or self.top1_agreement >= 1.0 or not self.top1_required
        return self.max_abs_diff <= self.atol and top1_ok

    def line(self) -> str:
        mark = "✓" if self.ok else "✗"
        share = self.top1_agreement
        top1 = ("" if share is None else f"  {self.agreement_name} {share:.0%}" if share in (0.0, 1.0)
                else f"  {self.agreement_name} {share:.3%}")
        bound = (f"(atol {self.atol:g})" if self.cosine_floor is None
                 else f"min cosine {self.min_cosine:.4f} (floor {self.cosine_floor:g}"
                 + (f", {self.agreement_name} floor {self.min_agreement:.0%})" if self.min_agreement is not None else ")"))
        return f"{mark} {self.label}: max |diff| {self.max_abs_diff:.3g} {bound}{top1}"


@dataclass(frozen=True)
class Check:
    """A yes/no check shown beside the numeric comparisons (e.g. the expected top-1 class)."""

    label: str
    ok: bool

    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.label}"


def compare(label: str, actual: np.ndarray, expected: np.ndarray, atol: float | None, classifier: bool,
            cosine_floor: float | None = None, top1_required: bool = True,
            decide: Callable[[np.ndarray], np.ndarray] | None = None, agreement_name: str = "top-1 agreement") -> Comparison:
    """max |diff|, min cosine per row, and for classifiers the share of rows whose decision agrees: the
    argmax, a single logit's sign, or `decide`'s (when it keeps the last axis, all of a row's must agree)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Comparison(f"{label} (shape {actual.shape} != expected {expected.shape})", math.inf, atol, None,
                          cosine_floor=cosine_floor, top1_required=top1_required, agreement_name=agreement_name)
    diff = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    if not np.all(np.isfinite(actual)):
        diff = math.inf
    top1 = None
    if classifier:  # one logit (binary head): agreement of the sign; else of the argmax
        decide = decide or ((lambda x: x[..., 0] > 0) if actual.shape[-1] == 1 else (lambda x: x.argmax(-1)))
        same = decide(actual) == decide(expected)
        top1 = float(np.mean(same.all(axis=-1) if same.ndim == actual.ndim else same))
    return Comparison(label, diff, atol, top1, min_cosine(actual, expected), cosine_floor, top1_required, agreement_name)


def compare_outputs(entry: ModelEntry, label: str, actual: np.ndarray, expected: np.ndarray, atol: float | None,
                    cosine_floor: float | None = None, scale: float | None = None) -> Comparison:
    """The exported (or stored) outputs against torch's, judged as the entry's task decides (zoo.tasks:
    `compare`); `scale`: the input image's longer side (detectors' boxes are judged relative to it)."""
    from zoo.tasks import get_task, implementation

    return implementation(get_task(entry.task)).compare(label, actual, expected, atol, cosine_floor, scale)


def compare_detections(label: str, actual: np.ndarray, expected: np.ndarray, atol: float | None, scale: float,
                       served: float = 0.0) -> Comparison:
    """Two sets of detections (rows x1 y1 x2 y2 score label, boxes in pixels of an image whose longer side
    is `scale`), matched greedily: each expected detection, best score first, to the closest unmatched one
    of the same label, a pair when boxes (divided by `scale`: a fraction of the image) and score are within
    `atol`. max |diff| is over the pairs. A detection left without a partner is excused when its score is
    within `atol` of the lowest one kept (it sits at the cut, the per-image cap or the score threshold, and
    may fall on either side), and so is one scoring below `served`, the score from which serve returns
    detections by default: a two-stage detector also cuts its proposals (the RPN keeps its top n), and a
    proposal at that cut can add or drop a low-scoring detection that no output shows at a cut. The
    agreement is the share of detections paired or excused. Order is not compared: equal scores may come
    in any order."""
    actual = np.asarray(actual, dtype=np.float64).reshape(-1, 6)
    expected = np.asarray(expected, dtype=np.float64).reshape(-1, 6)
    used = np.zeros(len(actual), dtype=bool)
    unpaired: list[float] = []  # scores of expected detections without a partner
    worst = 0.0
    for row in expected[np.argsort(-expected[:, 4], kind="stable")]:
        candidates = np.flatnonzero(~used & (actual[:, 5] == row[5]))
        cost = (np.maximum(np.abs(actual[candidates, :4] - row[:4]).max(axis=1) / scale,
                           np.abs(actual[candidates, 4] - row[4])) if len(candidates) else np.array([np.inf]))
        best = int(np.argmin(cost))
        if not len(candidates) or (atol is not None and cost[best] > atol):
            unpaired.append(float(row[4]))
            continue
        used[candidates[best]] = True
        worst = max(worst, float(cost[best]))
    if not np.all(np.isfinite(actual)):
        worst = math.inf
    lonely = np.concatenate([np.array(unpaired), actual[~used, 4]])
    cut = min(expected[:, 4].min(initial=np.inf), actual[:, 4].min(initial=np.inf)) + (atol or 0.0)
    at_cut = lonely <= cut
    unserved = ~at_cut & (lonely < served)
    wrong = int(np.sum(~at_cut & ~unserved))
    total = max(len(actual), len(expected))
    agreement = 1.0 - wrong / total if total else 1.0
    note = f"{len(expected)} detections"
    if len(actual) != len(expected):
        note += f", {len(actual)} in the export"
    if at_cut.any():
        note += f", {int(at_cut.sum())} unpaired at the score cut"
    if unserved.any():
        note += f", {int(unserved.sum())} unpaired below the served score {served:g}"
    distinct = len(np.unique(np.round(expected[:, 4], 5)))
    if wrong and distinct < 0.9 * len(expected):
        # An undertrained model scores many boxes alike: which of the ties survive NMS is arbitrary.
        note += f"; only {distinct} distinct scores: ties decided by rounding, the model needs more training"
    return Comparison(f"{label} ({note})", worst, atol, agreement, agreement_name="detections matched")


def min_cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    """Lowest cosine similarity between matching rows (last axis); 1.0 for two zero rows."""
    if actual.size == 0:
        return 1.0
    a = actual.reshape(-1, actual.shape[-1])
    b = expected.reshape(-1, expected.shape[-1])
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cosine = np.where(both_zero, 1.0, dots / np.where(norms == 0, 1.0, norms))
    return float(np.min(np.nan_to_num(cosine, nan=-1.0)))
