"""LoRA linear layers as one autograd node each, for training.

PEFT's LoRA ``Linear`` computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` op by op.
Under bf16 autocast that is, per layer and call, two weight casts, a matmul writing a full
``(tokens, out)`` update, a multiplication and an addition over it, and in the backward pass
the same multiplication again, the update's gradient matmul and another addition over
``(tokens, in)``: element-wise passes over the largest activations of the model, seven times a
decoder layer. Here the forward pass is ``x @ W.T`` with the low-rank update added into it by
one accumulating matmul (``addmm_``: summed in fp32, rounded once), the backward pass the
frozen weight's input gradient with the update's added the same way, plus the adapters' two
small weight-gradient matmuls. The scaling is folded into ``B`` (a ``(out, r)`` matrix) instead
of multiplying activations.

Only the layer's ``forward`` is replaced (an instance attribute): the parameters stay PEFT's,
so saving, loading, merging and ``disable_adapter()`` work as before. Layers whose adapter is
not plain (dropout, DoRA or another variant, a LoRA bias, several active adapters, a trainable
base weight) keep PEFT's forward, decided at every call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tunehouse.models import compute_dtype, vanilla_lora


def lora_forward(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], scales: Sequence[float]
                 ) -> tuple[Any, ...]:
    """One or more LoRA linears that read the same input, as one matmul plus their updates.

    ``weight`` (sum of outs, in) stacks the parts' frozen weights (``train.stacked``; one part:
    the layer's own), ``a[i]`` (r_i, in) and ``b[i]`` (out_i, r_i) are part ``i``'s adapter.
    For 2-D ``x2`` in the compute dtype (``weight`` and ``bias`` already in it, the adapters cast
    here) returns ``x2 @ weight.T + bias`` with, in each part's columns, ``(x2 @ A_i.T) @ (B_i *
    scale_i).T`` added by an accumulating matmul, and what ``lora_backward`` needs: ``x2 @ A.T``
    for all parts at once, the stacked cast ``A`` and the cast, scaled ``B``s."""
    a_c = (a[0] if len(a) == 1 else torch.cat(list(a))).to(x2.dtype)
    b_c = [(bi * s).to(x2.dtype) for bi, s in zip(b, scales)]
    y = F.linear(x2, weight, bias)
    xa = x2 @ a_c.t()
    for cols, ranks, bi in zip(_spans(b_c, 0), _spans(b_c, 1), b_c):
        y[:, cols].addmm_(xa[:, ranks], bi.t())
    return y, xa, a_c, b_c


def lora_backward(dy2: torch.Tensor, x2: torch.Tensor, xa: torch.Tensor, weight: torch.Tensor,
                  a_c: torch.Tensor, b_c: Sequence[torch.Tensor], scales: Sequence[float],
                  want: tuple[bool, bool, bool]) -> tuple[Any, ...]:
    """The gradients of ``lora_forward`` with respect to ``x2`` (one matmul over all parts) and
    each part's ``A`` and ``B`` (fp32 lists), each only if wanted (else None)."""
    cols, ranks = _spans(b_c, 0), _spans(b_c, 1)
    parts = [dy2[:, c] @ bi for c, bi in zip(cols, b_c)]  # the gradients of x @ A_i.T
    g = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
    dx = da = db = None
    if want[0]:
        dx = dy2 @ weight
        dx.addmm_(g, a_c)
    if want[1]:
        da_all = (g.t() @ x2).float()
        da = [da_all[r] for r in ranks]
    if want[2]:
        db = [(dy2[:, c].t() @ xa[:, r]).float().mul_(s) for c, r, s in zip(cols, ranks, scales)]
    return dx, da, db


def _spans(b: Sequence[torch.Tensor], dim: int) -> list[slice]:
    """The slices that the parts' outputs (``dim`` 0) or ranks (``dim`` 1) take side by side."""
    out, start = [], 0
    for bi in b:
        out.append(slice(start, start + bi.shape[dim]))
        start += bi.shape[dim]
    return out


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
        """``x`` (..., in) in the compute dtype, ``weight`` (out, in) frozen, ``a`` (r, in) and
        ``b`` (out, r) the adapter's weights in their own dtype -> (..., out)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        y, xa, a_c, (b_c,) = lora_forward(x2, weight, bias, [a], [b], [scale])
        ctx.save_for_backward(x2, xa, weight, a_c, b_c)
        ctx.scale, ctx.lead = scale, lead
        return y.view(*lead, -1)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, None, None,
                                                      torch.Tensor | None, torch.Tensor | None, None]:
        x2, xa, weight, a_c, b_c = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1]).to(x2.dtype)
        need = ctx.needs_input_grad
        dx, da, db = lora_backward(dy2, x2, xa, weight, a_c, [b_c], [ctx.scale],
                                   (need[0], need[3], need[4]))
        return (None if dx is None else dx.view(*ctx.lead, -1), None, None,
                None if da is None else da[0], None if db is None else db[0], None)


def plain_adapter(layer: Any) -> str | None:
    """The one active adapter of a PEFT LoRA ``Linear`` if ``_LoraLinear`` computes exactly
    what PEFT would, else None (also for a layer without LoRA adapters)."""
    if not hasattr(layer, "lora_A") or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or not vanilla_lora(layer, name) \
            or not isinstance(layer.lora_dropout[name], torch.nn.Identity):
        return None
    base = layer.base_layer
    if type(base) is not torch.nn.Linear or base.weight.requires_grad:
        return None
    return name


def fused_args(layer: Any, dtype: torch.dtype) -> tuple[Any, ...] | None:
    """``(weight, bias, A, B, scaling)`` of a plain PEFT LoRA ``Linear``, the frozen weight and
    bias in ``dtype``, for ``_LoraLinear`` (or ``train.mlp``); None if its adapter is not plain."""
    name = plain_adapter(layer)
    if name is None:
        return None
    base = layer.base_layer
    bias = None if base.bias is None else base.bias.to(dtype)
    return (base.weight.to(dtype), bias, layer.lora_A[name].weight, layer.lora_B[name].weight,
            float(layer.scaling[name]))


def _forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    dtype = compute_dtype(x)
    fused = None if args or kwargs else fused_args(layer, dtype)
    if fused is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    with torch.autocast(x.device.type, enabled=False):  # the function chooses its dtypes itself
        return _LoraLinear.apply(x.to(dtype), *fused)


def use_fused_lora(model: Any) -> int:
    """Give every PEFT LoRA ``Linear`` of ``model`` the fused forward; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    n = 0
    for m in model.modules():
        if type(m) is LoraLinear:  # subclasses (quantised bases) keep their own
            m.forward = functools.partial(_forward, m)
            n += 1
    return n
