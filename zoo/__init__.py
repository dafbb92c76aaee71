"""zoo: pretrained backbones from a hash-pinned registry, built, validated and exported.

Heavy modules (torch, transformers) load only when a function that needs them is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zoo.errors import ZooError
from zoo.registry import get_model, list_models, load_registry

if TYPE_CHECKING:
    from zoo.factory import build
    from zoo.cache import fetch

__all__ = ["ZooError", "build", "fetch", "get_model", "list_models", "load_registry"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "build":
        from zoo.factory import build

        return build
    if name == "fetch":
        from zoo.cache import fetch

        return fetch
    raise AttributeError(name)
