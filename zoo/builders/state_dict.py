"""Read weights without executing pickle, and load them with no silently missing keys."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from zoo.errors import BuildError


def read_state_dict(path: Path, weights_format: str) -> dict[str, torch.Tensor]:
    """safetensors, or a torch state dict through `torch.load(weights_only=True)` (no arbitrary pickle)."""
    if weights_format == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses the file
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError for anything not plain tensors
        # torch's own message suggests weights_only=False, which would run the file's code: not repeated here.
        raise BuildError(f"{path.name}: refused to load: not a plain tensor state dict but a pickle of other "
                         f"Python objects ({type(exc).__name__}), which zoo never unpickles; convert the "
                         "weights to safetensors or a plain state dict") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BuildError(f"{path.name}: expected a dict of tensors, found {type(state).__name__}")
    return state


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load with every key and shape accounted for; raise BuildError listing what does not fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        parts = [f"missing keys: {head(missing)}" if missing else "",
                 f"unexpected keys: {head(unexpected)}" if unexpected else "",
                 f"shape mismatches: {head(shapes)}" if shapes else ""]
        raise BuildError(f"{name}: weights do not fit the architecture; " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
