"""serve: run a zoo bundle with onnxruntime, numpy, pillow and tokenizers only.

Never imports torch, tensorflow, zoo or export: the bundle's manifest is the whole contract.
"""

from serve.errors import BundleError, InputError, ProviderError, ServeError
from serve.loading import load
from serve.predictor import Predictor
from serve.providers import SessionConfig

__all__ = ["BundleError", "InputError", "Predictor", "ProviderError", "ServeError", "SessionConfig", "load"]
