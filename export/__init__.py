"""export: torch models from the zoo to deployable bundles, each validated against torch.

`export_bundle` is imported on first use, so that `python -m export.tf_worker` (TensorFlow only)
does not import torch."""

from __future__ import annotations

from typing import Any

__all__ = ["BundleResult", "export_bundle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from export import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
