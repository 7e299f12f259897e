"""The check a fused training node passes before it replaces a module's ``forward``.

The engine's nodes (``train.norm``, ``train.mlp``, ``train.qkv``) claim to compute what the
module they replace computes. Rather than trusting a class name, each is installed only where it
reproduces the module's own output on a probe input, in both precisions the engine trains in:
plain, and under bf16 autocast; bit for bit, or for nodes that stack matmuls to within rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def probe_inputs(like: torch.Tensor, *shapes: tuple[int, ...], scale: float = 1.0
                 ) -> list[torch.Tensor]:
    """Random normal tensors of ``shapes`` (times ``scale``) on ``like``'s device and in its
    dtype, drawn in order from one fixed seed: the same probe at every install."""
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(*shape, generator=gen) * scale).to(like.device, like.dtype)
            for shape in shapes]


def reproduces(module: Any, fused: Callable[..., Any], x: torch.Tensor, *, exact: bool = True,
               **kwargs: Any) -> bool:
    """Whether ``fused(x, **kwargs)`` equals ``module``'s own (class) forward, with and without
    bf16 autocast (for a module returning a tuple, its first element).

    ``exact``: bit for bit. Otherwise to within a few units of the output dtype's last place,
    relative to the largest output: for a node that stacks matmuls (``train.stacked``), whose
    blocking, and so rounding, may differ from the separate matmuls' while the computation is
    the same; a different computation (another normalisation or rotation) is off by far more.
    """
    own = type(module).forward

    def same() -> bool:
        a, b = own(module, x, **kwargs), fused(x, **kwargs)
        if isinstance(a, tuple):
            a, b = a[0], b[0]
        if exact or a.shape != b.shape or a.dtype != b.dtype:
            return torch.equal(a, b)
        tol = 8 * torch.finfo(a.dtype).eps * float(a.abs().max())
        return float((a.float() - b.float()).abs().max()) <= tol

    with torch.no_grad():
        if not same():
            return False
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return same()
