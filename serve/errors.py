"""Errors of the runtime. Kept separate from zoo's so `serve` imports nothing of zoo."""

from __future__ import annotations


class ServeError(Exception):
    """Base class of every error `serve` raises on purpose."""


class BundleError(ServeError):
    """A bundle folder is missing files, has a bad manifest, or was modified after export."""


class InputError(ServeError):
    """An input cannot be turned into the model's input."""


class ProviderError(ServeError):
    """The requested execution provider does not work here."""


class LimitError(InputError):
    """An input over one of the configured limits (serve.limits): HTTP 413."""
