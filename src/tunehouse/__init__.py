"""tunehouse: self-hosted, OpenAI-compatible fine-tuning for open language models."""

__version__ = "0.1.0"
