"""Linear probe: the backbone's pooled features (the input of the classifier layer) extracted once, and
the new head fitted on them by L2-regularised logistic regression (scikit-learn, L-BFGS), its strength
chosen on the validation split. The first stage of linear-probe-then-fine-tune (LP-FT, Kumar et al.
2022: a fitted head does not distort the features the way a random one does), and the whole of
`zoo finetune --probe`."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

# Inverse regularisation strengths tried (scikit-learn's C: the data term's weight against 1/2 |W|^2), chosen
# by stratified cross-validation of the log loss on the training split. Features are used as they come:
# standardising them amplified near-constant dimensions and cost 8-11 points of test accuracy on digits
# (benchmarks/transfer.py data; C between 0.1 and 100 on the raw features changed it by 2 at most).
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
FOLDS = 5
# The head on features that were trained on the same labels (zoo.pairs): cross-validation there measures
# memory, not generalisation (out-of-fold accuracy 0.95-1.0 after the pairs where the backbone's was
# 0.58-0.62: rotten tomatoes, 25 per class, seeds 5-9), and it chose the weakest regularisation (C = 100,
# a saturated head). SetFit's head has scikit-learn's default C instead, without a search.
FIXED_C = 1.0


@dataclass(frozen=True)
class Probe:
    """A fitted linear head in the model's own feature space: logits = features @ weight.T + bias."""

    weight: torch.Tensor  # (outputs, features)
    bias: torch.Tensor  # (outputs,)
    C: float
    train_loss: float
    cv_accuracy: float | None = None  # out-of-fold accuracy at C on the same folds; None: too few examples to fold


def head_layer(model: nn.Module, head_prefix: str) -> nn.Linear | None:
    """The classifier layer `head_prefix` names, or None when the head is not one linear layer
    (segmentation, detection)."""
    module = model.get_submodule(head_prefix.rstrip(".")) if head_prefix.rstrip(".") else None
    return module if isinstance(module, nn.Linear) else None


@torch.inference_mode()
def extract_features(model: nn.Module, head: nn.Linear, batches: Iterable, run: Callable[[tuple], object]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) over `batches` of (inputs, labels): what reaches `head`, with the model in
    eval mode (no dropout, BatchNorm running statistics). `run(inputs)` calls the model."""
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().float().cpu()))
    model.eval()
    labels = []
    try:
        for inputs, target in batches:
            run(inputs)
            labels.append(target)
    finally:
        handle.remove()
    return torch.cat(captured), torch.cat(labels)


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, outputs: int, grid: tuple[float, ...] = C_GRID,
              folds: int = FOLDS, seed: int = 0) -> Probe:
    """Logistic regression on the features, its C chosen by stratified `folds`-fold cross-validation of
    the log loss (fewer folds when a class has fewer examples; the first C of `grid` that ties), then
    refitted on all of them; the out-of-fold accuracy at that C is kept (`cv_accuracy`). `outputs` is the
    head's size: 1 for a binary (sigmoid) head, else the number of classes. `folds` below 2: no search,
    C = FIXED_C and no out-of-fold accuracy."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x, y = train_x.double().numpy(), train_y.numpy()
    splits = min(folds, int(torch.bincount(train_y).min()))
    C, cv_accuracy = FIXED_C, None  # one example of some class (or no search): nothing to cross-validate
    with warnings.catch_warnings():  # a C too weak to converge within max_iter just scores worse
        warnings.simplefilter("ignore")
        if splits >= 2:  # selection needs no precise fits: tol 1e-3 (6x faster on 100 x 1280 x 10 classes)
            splitter = StratifiedKFold(splits, shuffle=True, random_state=seed)
            search = LogisticRegressionCV(Cs=list(grid), cv=splitter, scoring="neg_log_loss", max_iter=1000, tol=1e-3,
                                          refit=False).fit(x, y)
            mean = next(iter(search.scores_.values())).mean(axis=0)  # (folds, Cs) -> per C
            C = float(grid[int(mean.argmax())])  # the first of equal scores: the stronger regularisation
            held_out = cross_val_predict(LogisticRegression(C=C, max_iter=1000, tol=1e-3), x, y, cv=splitter)
            cv_accuracy = float((held_out == y).mean())
        classifier = LogisticRegression(C=C, max_iter=5000, tol=1e-6).fit(x, y)
    weight, bias = _head_parameters(classifier, outputs)
    train_loss = _log_loss(torch.from_numpy(x) @ weight.T + bias, train_y)
    return Probe(weight.float(), bias.float(), C, train_loss, cv_accuracy)


def _head_parameters(classifier, outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's coef_/intercept_ as the head's (weight, bias). Two classes give one row (the
    log-odds of class 1): a binary head takes it as is, a two-logit softmax head as -row/2, +row/2."""
    coef = torch.from_numpy(classifier.coef_).double()
    intercept = torch.from_numpy(classifier.intercept_).double()
    if coef.shape[0] == 1 and outputs == 2:
        coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
    if coef.shape[0] != outputs:
        raise ValueError(f"the probe has {coef.shape[0]} output rows, the head {outputs}")
    return coef, intercept


def _predict(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(dim=1)


def _log_loss(logits: torch.Tensor, target: torch.Tensor) -> float:
    if logits.shape[1] == 1:
        return float(nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.double()))
    loss = float(nn.functional.cross_entropy(logits, target))
    return loss if math.isfinite(loss) else float("inf")


@torch.no_grad()
def load_probe(head: nn.Linear, probe: Probe) -> None:
    """Write the fitted weights into the model's head layer."""
    head.weight.copy_(probe.weight.to(head.weight))
    head.bias.copy_(probe.bias.to(head.bias))
