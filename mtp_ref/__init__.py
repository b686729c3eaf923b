"""mtp-ref: a readable NumPy reference engine for Multi-Token Prediction self-speculative decoding."""

from .errors import MtpRefError
from .model import Model, load_model
from .speculative import GenerationResult, SpeculativeDecoder, generate

__all__ = ["MtpRefError", "Model", "load_model", "SpeculativeDecoder", "GenerationResult", "generate"]
