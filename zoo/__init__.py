"""zoo: pretrained backbones from a hash-pinned registry, built, validated and exported.

Heavy modules (torch, transformers) load only when a function that needs them is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zoo.errors import ZooError
from zoo.registry import get_model, list_models, load_registry

if TYPE_CHECKING:
    from zoo.cache import fetch
    from zoo.factory import build
    from zoo.training import finetune
    from zoo.validation import validate

__all__ = ["ZooError", "build", "fetch", "finetune", "get_model", "list_models", "load_registry", "validate"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "build":
        from zoo.factory import build

        return build
    if name == "fetch":
        from zoo.cache import fetch

        return fetch
    if name == "finetune":
        from zoo.training import finetune

        return finetune
    if name == "validate":
        from zoo.validation import validate

        return validate
    raise AttributeError(name)
