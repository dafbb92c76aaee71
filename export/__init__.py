"""export: torch models from the zoo to deployable bundles, each validated against torch."""

from export.bundle import BundleResult, export_bundle

__all__ = ["BundleResult", "export_bundle"]
