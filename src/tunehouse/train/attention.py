"""Padding-free ("varlen") attention for packed training rows.

A packed row holds several examples back to back, with position ids restarting at each example
and ``cu_seq_lens_q`` marking the boundaries. transformers would turn that into a dense
block-diagonal mask over the whole row (O(row²) memory and compute, and the slow masked SDPA
kernel on CPU); instead each example is its own causal sequence, so no token attends across
examples and no padding is computed. On a CPU, ``train.cpu_attention`` runs the whole row
(faster than PyTorch's CPU flash kernel, whose backward pass is slow); on CUDA with
``flash_attn`` installed its varlen kernel does the same in one call; otherwise each example
runs its own causal SDPA (GQA in-kernel, no mask). Dropout falls back to SDPA.

Calls without boundaries (generation, padded batches) fall back to transformers' own SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tunehouse.models import use_attention
from tunehouse.train.cpu_attention import packed_causal_attention

NAME = "tunehouse_varlen"


def varlen_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``(batch=1, heads, tokens, dim)`` q/k/v of a packed row -> ``(1, tokens, heads, dim)``."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, _dense(attention_mask, query, key),
                                      dropout=dropout, scaling=scaling, **kwargs)
    drop = dropout if module.training else 0.0
    if query.is_cuda and _flash_varlen() is not None:
        return _flash(query, key, value, cu, kwargs, drop, scaling), None
    bounds = cu.tolist()
    if not query.is_cuda and drop == 0.0:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return packed_causal_attention(query[0], key[0], value[0], bounds, scale).unsqueeze(0), None
    gqa = key.shape[1] != query.shape[1]
    outs = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                           is_causal=True, dropout_p=drop, scale=scaling,
                                           enable_gqa=gqa)
            for s, e in zip(bounds[:-1], bounds[1:])]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def _dense(mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor | None:
    """The 2-D padding mask the flash-style mask function hands over -> SDPA's causal 4-D mask."""
    if mask is None or mask.dim() != 2:
        return mask
    q, k = query.shape[2], key.shape[2]
    causal = torch.ones(q, k, dtype=torch.bool, device=query.device).tril(k - q)
    return causal[None, None] & mask[:, None, None, -k:].bool()


def _flash_varlen() -> Any:
    try:
        from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
    except ImportError:
        return None
    return flash_attn_varlen_func


def _flash(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: torch.Tensor,
           kwargs: dict[str, Any], drop: float, scaling: float | None) -> torch.Tensor:
    """FlashAttention's varlen kernel on (tokens, heads, dim) views of the packed row."""
    cu = cu.to(device=query.device, dtype=torch.int32)
    longest = int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = _flash_varlen()(q, k, v, cu, cu, longest, longest, dropout_p=drop, softmax_scale=scaling,
                          causal=True)
    return out.unsqueeze(0)


def use_varlen(model: Any) -> None:
    """Switch ``model`` (a ``PreTrainedModel``) to the varlen attention. No dense mask is built:
    boundaries travel as cu_seq_lens (padded calls keep theirs)."""
    from transformers.masking_utils import flash_attention_mask

    use_attention(model, NAME, varlen_attention, flash_attention_mask)
