"""The check a fused training node passes before it replaces a module's ``forward``.

The engine's nodes (``train.norm``, ``train.mlp``) claim to compute exactly what the module
they replace computes. Rather than trusting a class name, each is installed only where it
reproduces the module's own output bit for bit on a probe input, in both precisions the engine
trains in: plain, and under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def reproduces(module: Any, fused: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> bool:
    """Whether ``fused(x)`` equals ``module``'s own (class) forward on ``x`` exactly, with and
    without bf16 autocast."""
    own = type(module).forward
    with torch.no_grad():
        if not torch.equal(own(module, x), fused(x)):
            return False
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return torch.equal(own(module, x), fused(x))
