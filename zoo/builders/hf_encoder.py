"""Transformer text encoders (BERT family) from `transformers`, with the entry's pooling and
normalisation on top, taking `(input_ids, attention_mask)` and returning one vector per text."""

from __future__ import annotations

import contextlib
import fnmatch
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import BuildError
from zoo.schema import ModelEntry

# Model types whose base class takes `add_pooling_layer`; the pooler is unused by every pooling here.
_HAS_POOLER = {"bert", "roberta"}


class TextEncoder(nn.Module):
    """`encoder` + pooling ("mean" over non-padding tokens, or "cls") + optional L2 normalisation."""

    def __init__(self, encoder: nn.Module, pooling: str, normalize: bool):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        else:
            pooled = hidden[:, 0]
        return F.normalize(pooled, p=2.0, dim=-1) if self.normalize else pooled


def set_attention(model: nn.Module, implementation: str) -> bool:
    """Switch every transformers model inside `model` to attention `implementation` ("sdpa": PyTorch's fused
    scaled-dot-product kernels, for training; "eager": the plain matmul/softmax graph, which `build()`
    gives, for export and reference outputs). False when this transformers cannot switch a built model
    (before `set_attn_implementation`): it keeps what it was built with."""
    from transformers import PreTrainedModel

    found = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    if not found or not all(hasattr(m, "set_attn_implementation") for m in found):
        return False
    for module in found:
        if module.config._attn_implementation != implementation:
            module.set_attn_implementation(implementation)
    return True


def model_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    # eager: the exporters trace it into plain ONNX ops; training switches to SDPA (set_attention)
    kwargs: dict[str, Any] = {"attn_implementation": "eager"}
    if config["model_type"] in _HAS_POOLER:
        kwargs["add_pooling_layer"] = False
    return kwargs


def build_hf_encoder(entry: ModelEntry, weights: Path | None) -> nn.Module:
    """Random init from the registry's config, or the verified files in `weights`' folder."""
    from transformers import AutoConfig, AutoModel

    config = dict(entry.builder_args["config"])
    kwargs = model_kwargs(config)
    if weights is None:
        model_type = config.pop("model_type")
        encoder = AutoModel.from_config(AutoConfig.for_model(model_type, **config), **kwargs)
    else:
        with quiet_transformers():
            encoder, info = AutoModel.from_pretrained(
                str(weights.parent), use_safetensors=True, output_loading_info=True, local_files_only=True, **kwargs
            )
        check_loading_info(entry, info)
    pooling = entry.output.pooling or "cls"
    return TextEncoder(encoder, pooling, entry.output.normalize)


@contextlib.contextmanager
def quiet_transformers():
    """transformers' warnings and progress bars off: missing and unexpected keys are checked by
    check_loading_info, not just logged."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def check_loading_info(entry: ModelEntry, info: dict[str, Any]) -> None:
    """BuildError unless the weights filled every parameter of the architecture, and nothing else (but the
    entry's `ignore_unexpected` patterns)."""
    allowed = entry.builder_args.get("ignore_unexpected", [])
    unexpected = [k for k in info.get("unexpected_keys", []) if not any(fnmatch.fnmatch(k, p) for p in allowed)]
    missing = list(info.get("missing_keys", []))
    mismatched = [str(m) for m in info.get("mismatched_keys", [])]
    if missing or unexpected or mismatched:
        raise BuildError(
            f"{entry.id}: weights do not fit the architecture; missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, mismatched {mismatched[:5]}"
        )
