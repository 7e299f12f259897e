"""The SwiGLU MLP with LoRA adapters as one autograd node that keeps two activations.

transformers' Llama-style MLP is ``down(silu(gate(x)) * up(x))``. Autograd keeps, per token and
layer, four intermediate-sized tensors for it: the gate output (for the SiLU's backward), the
SiLU output and the up output (for the product's), and the product (for the down projection's
LoRA gradients): more than half of all the activations a decoder layer keeps. Here the whole MLP
is one node that keeps only the gate and up outputs and recomputes the SiLU and the product in
the backward pass: two cheap element-wise ops for about a quarter of a training step's
activation memory. The gate and up projections are one stacked matmul (``train.stacked``), and
backward their input gradients are one matmul over both, with no autograd addition after it.

Switched only where that holds: a module with ``gate_proj``, ``up_proj``, ``down_proj`` and a SiLU
``act_fn`` whose output the fused path reproduces on a probe input (``train.probe``; checked when
installing), and, per call, plain adapters on all three projections (``lora.plain_adapter``)
over the stacked weights; anything else keeps transformers' forward.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from tunehouse.models import compute_dtype
from tunehouse.train.lora import fused_args, lora_backward, lora_forward, plain_adapter
from tunehouse.train.probe import probe_inputs, reproduces
from tunehouse.train.stacked import Stack, stack


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gu_weight: torch.Tensor, gu_bias: torch.Tensor | None,
                down_weight: torch.Tensor, down_bias: torch.Tensor | None,
                scales: tuple[float, float, float], a_gate: torch.Tensor, a_up: torch.Tensor,
                b_gate: torch.Tensor, b_up: torch.Tensor, a_down: torch.Tensor,
                b_down: torch.Tensor) -> torch.Tensor:
        """``x`` (..., hidden) in the compute dtype, the stacked gate/up weight (2 * inter,
        hidden) and the down weight (hidden, inter) frozen in it, each projection's adapter
        ``a``/``b`` in its own dtype -> (..., hidden)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        gu, xa, a_c, b_c = lora_forward(x2, gu_weight, gu_bias, [a_gate, a_up], [b_gate, b_up],
                                        scales[:2])
        inter = b_gate.shape[0]
        h = F.silu(gu[:, :inter]) * gu[:, inter:]
        y, ha, ad_c, bd_c = lora_forward(h, down_weight, down_bias, [a_down], [b_down], scales[2:])
        ctx.save_for_backward(x2, gu, xa, ha, gu_weight, a_c, *b_c, down_weight, ad_c, *bd_c)
        ctx.scales, ctx.lead, ctx.inter = scales, lead, inter
        return y.view(*lead, -1)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, gu, xa, ha, gu_weight, a_c, bg_c, bu_c, down_weight, ad_c, bd_c = ctx.saved_tensors
        need, inter, scales = ctx.needs_input_grad, ctx.inter, ctx.scales
        dy2 = dy.reshape(-1, dy.shape[-1]).to(x2.dtype)
        gate, up = gu[:, :inter], gu[:, inter:]
        s = F.silu(gate)
        want_in = need[0] or any(need[6:10])
        dh, da_d, db_d = lora_backward(dy2, s * up, ha, down_weight, ad_c, [bd_c], scales[2:],
                                       (want_in, need[10], need[11]))
        dx = da = db = None
        if dh is not None:
            dgu = torch.empty_like(gu)  # both halves written in place: no concatenation
            torch.mul(dh, s, out=dgu[:, inter:])
            torch.ops.aten.silu_backward.grad_input(dh * up, gate, grad_input=dgu[:, :inter])
            dx, da, db = lora_backward(dgu, x2, xa, gu_weight, a_c, [bg_c, bu_c], scales[:2],
                                       (need[0], need[6] or need[7], need[8] or need[9]))
        da, db = da or [None, None], db or [None, None]
        return (None if dx is None else dx.view(*ctx.lead, -1), None, None, None, None, None,
                da[0], da[1], db[0], db[1], None if da_d is None else da_d[0],
                None if db_d is None else db_d[0])


def _forward(mlp: Any, gate_up: Stack, x: torch.Tensor) -> torch.Tensor:
    dtype = compute_dtype(x)
    down = fused_args(mlp.down_proj, dtype)
    gu = gate_up.args(dtype)
    if down is None or gu is None:
        return type(mlp).forward(mlp, x)
    gu_weight, gu_bias, a, b, scales = gu
    down_weight, down_bias, a_down, b_down, down_scale = down
    with torch.autocast(x.device.type, enabled=False):  # the function chooses its dtypes itself
        return _SwiGLU.apply(x.to(dtype), gu_weight, gu_bias, down_weight, down_bias,
                             (*scales, down_scale), *a, *b, a_down, b_down)


def _is_swiglu(module: Any) -> bool:
    act = getattr(module, "act_fn", None)
    return all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")) \
        and type(act).__name__ in ("SiLU", "SiLUActivation")


def _fused_forward(mlp: Any) -> Any:
    """The fused forward for ``mlp`` if it applies and reproduces the module's own exactly on a
    probe input (``train.probe``), else None."""
    if plain_adapter(mlp.down_proj) is None:
        return None
    gate_up = stack([mlp.gate_proj, mlp.up_proj])
    if gate_up is None:
        return None
    fused = functools.partial(_forward, mlp, gate_up)
    (x,) = probe_inputs(mlp.down_proj.base_layer.weight, (2, 5, mlp.down_proj.out_features))
    return fused if reproduces(mlp, fused, x, exact=False) else None


def use_fused_mlps(model: Any) -> int:
    """Give every SwiGLU MLP of ``model`` with plain LoRA projections the fused forward
    (``train.lora.use_fused_lora`` first, so the probe compares like with like); returns how many."""
    n = 0
    for m in model.modules():
        if _is_swiglu(m):
            fused = _fused_forward(m)
            if fused is not None:
                m.forward = fused
                n += 1
    return n
