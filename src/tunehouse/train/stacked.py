"""LoRA linears that read the same input, with their frozen weights stacked for one matmul.

An attention layer's query, key and value projections read the same hidden states, and so do a
SwiGLU MLP's gate and up projections. Computed layer by layer, each is a matmul of its own, its
adapter's two small matmuls are narrow (rank 16: poorly used matrix units), and backward
autograd adds the layers' input gradients pass by pass. Stacked, the frozen weights are one
``(sum of outs, in)`` matrix: one matmul forward, one for the input gradient, and each small
adapter matmul at once for all parts (``train.lora.lora_forward``).

The stack is made once, when the engine is installed: the layers' frozen weights (and biases)
are copied into one tensor and each layer's weight becomes a view of its rows, so it costs no
memory, forked step workers share it, and whatever reads or updates a layer's weight in place
(saving, merging) sees the same numbers. Every call checks that the views are still in place
(``model.to(...)`` or an assignment replaces them) and that every adapter is still plain
(``train.lora.plain_adapter``); if not, the caller falls back to the layers one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunehouse.train.lora import plain_adapter


@dataclass
class Stack:
    """Frozen weights (and biases) of ``layers`` (PEFT LoRA ``Linear``\\ s) stacked by rows."""

    layers: list[Any]
    weight: torch.Tensor  # (sum of outs, in)
    bias: torch.Tensor | None  # (sum of outs,) or None when no layer has a bias

    def args(self, dtype: torch.dtype) -> tuple[Any, ...] | None:
        """``(weight, bias, As, Bs, scales)`` for ``lora.lora_forward`` with the stack in
        ``dtype``, or None when a view was replaced or an adapter is no longer plain."""
        names = [plain_adapter(layer) for layer in self.layers]
        if None in names or not self._views_in_place():
            return None
        bias = None if self.bias is None else self.bias.to(dtype)
        return (self.weight.to(dtype), bias,
                [layer.lora_A[n].weight for layer, n in zip(self.layers, names)],
                [layer.lora_B[n].weight for layer, n in zip(self.layers, names)],
                [float(layer.scaling[n]) for layer, n in zip(self.layers, names)])

    def _views_in_place(self) -> bool:
        start = 0
        for layer in self.layers:
            base = layer.base_layer
            rows = base.weight.shape[0]
            if not _is_rows(base.weight, self.weight, start, rows):
                return False
            if self.bias is not None and not _is_rows(base.bias, self.bias, start, rows):
                return False
            start += rows
        return True


def _is_rows(t: torch.Tensor | None, of: torch.Tensor, start: int, rows: int) -> bool:
    """Whether ``t`` is the view ``of[start:start + rows]``."""
    if t is None or t.dtype != of.dtype or t.device != of.device:
        return False
    view = of[start:start + rows]
    return (t.untyped_storage().data_ptr() == of.untyped_storage().data_ptr()
            and t.storage_offset() == view.storage_offset()
            and t.shape == view.shape and t.stride() == view.stride())


def stack(layers: Sequence[Any]) -> Stack | None:
    """Stack ``layers``' frozen weights (see module doc), or None where they cannot be: a layer
    without a plain adapter, different inputs, dtypes or devices, or biases on some only."""
    if any(plain_adapter(layer) is None for layer in layers):
        return None
    bases = [layer.base_layer for layer in layers]
    w0 = bases[0].weight
    if any(b.weight.shape[1] != w0.shape[1] or b.weight.dtype != w0.dtype
           or b.weight.device != w0.device for b in bases):
        return None
    with_bias = [b.bias is not None for b in bases]
    if (any(with_bias) and not all(with_bias)) \
            or any(b.bias is not None and b.bias.requires_grad for b in bases):
        return None
    with torch.no_grad():
        weight = torch.cat([b.weight for b in bases])
        bias = torch.cat([b.bias for b in bases]) if all(with_bias) else None
        start = 0
        for b in bases:
            rows = b.weight.shape[0]
            b.weight = torch.nn.Parameter(weight[start:start + rows], requires_grad=False)
            if bias is not None:
                b.bias = torch.nn.Parameter(bias[start:start + rows], requires_grad=False)
            start += rows
    return Stack(list(layers), weight, bias)
