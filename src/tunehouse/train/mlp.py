"""The SwiGLU MLP with a LoRA down-projection as one autograd node that keeps two activations.

transformers' Llama-style MLP is ``down(silu(gate(x)) * up(x))``. Autograd keeps, per token and
layer, four intermediate-sized tensors for it: the gate output (for the SiLU's backward), the
SiLU output and the up output (for the product's), and the product (for the down projection's
LoRA gradients): more than half of all the activations a decoder layer keeps. Here the SiLU, the
product and the down projection with its adapter (``train.lora``) are one node that keeps only
the gate and up outputs and recomputes the SiLU and the product in the backward pass: two cheap
element-wise ops for about a quarter of a training step's activation memory. The ops and dtypes
are the ones autograd would run, so outputs and gradients are bit for bit the same.

Switched only where that holds: a module with ``gate_proj``, ``up_proj``, ``down_proj`` and a SiLU
``act_fn`` whose output the fused path reproduces exactly on a probe input (checked when
installing), and, per call, a down projection whose adapter is plain (``lora.fused_args``);
anything else keeps transformers' forward.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from tunehouse.models import compute_dtype
from tunehouse.train.lora import fused_args, lora_backward, lora_forward, plain_adapter
from tunehouse.train.probe import reproduces


class _SwiGLUDown(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, scale: float
                ) -> torch.Tensor:
        """``gate``/``up`` (..., inter) in the compute dtype, the down projection's frozen
        ``weight`` (hidden, inter) and adapter ``a`` (r, inter), ``b`` (hidden, r) -> (..., hidden)."""
        lead = gate.shape[:-1]
        g2, u2 = gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1])
        y, xa, a_c, b_c = lora_forward(F.silu(g2) * u2, weight, bias, a, b, scale)
        ctx.save_for_backward(g2, u2, xa, weight, a_c, b_c)
        ctx.scale, ctx.lead = scale, lead
        return y.view(*lead, -1)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        g2, u2, xa, weight, a_c, b_c = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1]).to(g2.dtype)
        s = F.silu(g2)
        need = ctx.needs_input_grad
        dp, da, db = lora_backward(dy2, s * u2, xa, weight, a_c, b_c, ctx.scale,
                                   (need[0] or need[1], need[4], need[5]))
        dg = du = None
        if dp is not None:
            du = (dp * s).view(*ctx.lead, -1) if need[1] else None
            if need[0]:
                dg = torch.ops.aten.silu_backward(dp * u2, g2).view(*ctx.lead, -1)
        return dg, du, None, None, da, db, None


def _forward(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    dtype = compute_dtype(x)
    fused = fused_args(mlp.down_proj, dtype)
    if fused is None:
        return type(mlp).forward(mlp, x)
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    with torch.autocast(x.device.type, enabled=False):  # the function chooses its dtypes itself
        return _SwiGLUDown.apply(gate.to(dtype), up.to(dtype), *fused)


def _is_swiglu(module: Any) -> bool:
    act = getattr(module, "act_fn", None)
    return all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")) \
        and type(act).__name__ in ("SiLU", "SiLUActivation")


def _same_output(mlp: Any) -> bool:
    """Whether the fused forward applies to ``mlp`` and reproduces its own exactly on a probe
    input (``train.probe``)."""
    down = mlp.down_proj
    if plain_adapter(down) is None:
        return False
    weight = down.base_layer.weight
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, down.out_features, generator=gen).to(weight.device, weight.dtype)
    return reproduces(mlp, functools.partial(_forward, mlp), x)


def use_fused_mlps(model: Any) -> int:
    """Give every SwiGLU MLP of ``model`` with a plain LoRA down projection the fused forward
    (``train.lora.use_fused_lora`` first, so the probe compares like with like); returns how many."""
    n = 0
    for m in model.modules():
        if _is_swiglu(m) and _same_output(m):
            m.forward = functools.partial(_forward, m)
            n += 1
    return n
