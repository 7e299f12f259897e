"""RMSNorm as one autograd node, for training with a frozen norm weight.

transformers' Llama-style ``RMSNorm`` is six ops (``x.float()``, ``pow``, ``mean``, ``rsqrt``, two
multiplications and a cast back), and autograd keeps the fp32 copy of the input and runs about
ten more element-wise passes backward. Here the forward pass is PyTorch's fused ``rms_norm``
(fp32 inside, the output rounded to the input's dtype exactly as transformers rounds it) times
the weight; only the input, in its own dtype (half the bytes of the fp32 copy), is kept. The
backward pass recomputes the normalised input and applies the closed form
``dx = r * (g - x̂ * mean(g * x̂))`` with ``g`` the weight-scaled output gradient in fp32.

Only modules whose output this reproduces bit for bit are switched (checked on a probe input
when installing: Gemma's ``1 + weight`` norm, for one, is left alone), and only while their
weight is frozen (LoRA); full fine-tuning keeps transformers' forward, decided per call.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from tunehouse.train.probe import probe_inputs, reproduces


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return weight * F.rms_norm(x, (x.shape[-1],), None, eps)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, weight = ctx.saved_tensors
        xf = x.float()  # x itself if x is fp32: nothing below writes into it
        r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(ctx.eps))
        xhat = xf * r
        g = (dy * weight).float()
        dot = (g * xhat).mean(-1, keepdim=True)
        dx = g.sub_(xhat.mul_(dot)).mul_(r)  # g and xhat are fresh tensors
        return dx.to(x.dtype), None, None


def _fused(module: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):  # transformers' ops ignore autocast too
        return _RMSNorm.apply(x, module.weight, float(module.variance_epsilon))


def _forward(module: Any, x: torch.Tensor) -> torch.Tensor:
    if module.weight.requires_grad:
        return type(module).forward(module, x)
    return _fused(module, x)


def _same_output(module: Any) -> bool:
    """Whether ``_RMSNorm`` reproduces ``module`` exactly on a probe input (``train.probe``)."""
    weight = module.weight
    (x,) = probe_inputs(weight, (3, 7, weight.shape[-1]), scale=3.0)
    return reproduces(module, functools.partial(_fused, module), x)


def use_fused_norms(model: Any) -> int:
    """Give every RMSNorm of ``model`` that ``_RMSNorm`` reproduces the fused forward; returns
    how many."""
    n = 0
    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon") \
                and isinstance(getattr(m, "weight", None), torch.Tensor) and _same_output(m):
            m.forward = functools.partial(_forward, m)
            n += 1
    return n
