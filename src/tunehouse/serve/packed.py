"""Linear layers of a CPU serving model with their weights pre-packed for oneDNN.

A decode step multiplies a few rows by every weight matrix once, so the linear layers are
bound by how fast their weights stream from memory. In PyTorch's dense layout oneDNN's bf16
product reached ~14 GB/s on the 2-core build machine (a plain read: ~30 GB/s); with the
weights re-laid out once in oneDNN's blocked format (what Inductor's weight freezing uses) the
same products take 25-35% less time, with bit-identical results in bf16 (float32 results
differ in the last bits: another summation order). A SmolLM2-135M decode step in bf16 fell
from ~44 to ~38 ms at 1 row and from ~73 to ~57 ms at 8 rows.

The packed copy is made once, when the model is loaded, and costs the weights' size again
(the dense weights stay: the embedding shares the tied output head's, and PEFT reads the base
layers' weights when it loads adapters). Serving never changes base weights after loading; a
layer whose weight was replaced or changed in place since (or a copy of a layer, such as the
one PEFT makes for ``modules_to_save``) notices and computes on its dense weight. Where the
copies would take more than half of the memory still available (a large model on a small
machine), nothing is packed: the model then runs on its dense weights, slower but in memory.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch
import torch.nn.functional as F

from tunehouse.hardware import available_memory

PACKABLE = (torch.bfloat16, torch.float32)
# layer -> (packed weight, the weight it was packed from, that weight's version then)
_PACKED: weakref.WeakKeyDictionary[Any, tuple[torch.Tensor, torch.Tensor, int]] = \
    weakref.WeakKeyDictionary()


def pack_linears(model: Any, *, memory_available: int | None = None) -> int:
    """Give every plain ``nn.Linear`` of ``model`` (on CPU, bf16 or float32) a ``forward``
    on a packed copy of its weights; returns how many layers were packed (0 where oneDNN is
    unavailable, or where the copies would need more than half of ``memory_available`` bytes,
    by default what the system reports available)."""
    layers = [m for m in model.modules() if _packable(m)]
    need = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    room = memory_available if memory_available is not None else available_memory()
    if not torch.backends.mkldnn.is_available() or (room is not None and need > room // 2):
        return 0
    count = 0
    for module in layers:
        weight = module.weight
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        except RuntimeError:  # an unsupported shape or build: keep the dense layer
            continue
        _PACKED[module] = (packed, weight, _version(weight))
        module.forward = functools.partial(_packed_linear, module)
        count += 1
    return count


def _packable(module: Any) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module) is torch.nn.Linear and weight is not None and not weight.is_cuda
            and weight.dtype in PACKABLE and "forward" not in module.__dict__)


def _packed_linear(module: Any, x: torch.Tensor) -> torch.Tensor:
    entry = _PACKED.get(module)
    if entry is None or entry[1] is not module.weight or entry[2] != _version(module.weight):
        return F.linear(x, module.weight, module.bias)  # changed since packing, or a copy
    return torch.ops.mkldnn._linear_pointwise(x, entry[0], module.bias, "none", [], "")


def _version(tensor: torch.Tensor) -> int:
    """The in-place-change counter (inference tensors have none: they cannot change)."""
    return -1 if tensor.is_inference() else tensor._version
