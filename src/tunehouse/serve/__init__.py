"""Inference, no HTTP: one base model serving many LoRA adapters, batched across threads."""

from tunehouse.serve.engine import Engine, Stream, validate_params
from tunehouse.serve.types import ChatResult, Choice, SamplingParams, StreamDelta

__all__ = ["ChatResult", "Choice", "Engine", "SamplingParams", "Stream", "StreamDelta",
           "validate_params"]
