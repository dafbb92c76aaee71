"""Typed errors. Every user mistake raises a subclass of `ZooError` whose message says
what was expected, what was found, and how to fix it; the CLI turns them into exit code 2."""

from __future__ import annotations


class ZooError(Exception):
    """Base class of every error this package raises on purpose. `exit_code` is what the CLI
    returns: 2 for user mistakes (the default), 1 for a check that ran and failed."""

    exit_code = 2


class RegistryError(ZooError):
    """registry.json (or a user registry) does not match its schema."""


class UnknownModelError(ZooError):
    """No registry entry has that name."""


class FetchError(ZooError):
    """No source could deliver a verified file."""


class ChecksumError(FetchError):
    """A file's sha256 is not the one the registry pins."""


class BuildError(ZooError):
    """Weights do not fit the architecture (missing/unexpected keys, shapes)."""


class InputError(ZooError):
    """An input (image, text, path) cannot be used."""


class ValidationError(ZooError):
    """Numbers disagree with the reference beyond tolerance."""

    exit_code = 1


class NoReferenceError(ValidationError):
    """The entry stores no reference outputs, so there is nothing to validate against."""

    exit_code = 2


class ToleranceExceeded(ValidationError):
    """At least one compared output is further from its reference than allowed."""


class DivergedError(ZooError):
    """Training produced a non-finite loss (the learning rate is too high for this model and data)."""


class ExportError(ZooError):
    """An export could not be written or did not pass its own validation."""

    exit_code = 1
