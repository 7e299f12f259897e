"""Per-row LoRA adapters in one batch of the PEFT-wrapped base model.

PEFT loads the adapters (``PeftModel.from_pretrained`` / ``load_adapter``: key mapping, ranks,
scalings, target modules) and can run a batch whose rows use different adapters
(``adapter_names``). Its LoRA ``Linear`` forward is Python-heavy, though, and a mixed batch
gathers and scatters the rows of every adapter in every layer. CPU time per decode step on
the 2-core build machine (SmolLM2-135M, 210 LoRA layers, float32, one thread; ranges over
runs on a machine shared with other work), merged model / PEFT's path / this router:

    1 row, one adapter                 66-80 ms   78-95 ms    70-86 ms
    8 rows, one adapter               119-151 ms  142-160 ms  135-154 ms
    8 rows, 4 + 4 on two adapters         -       195-212 ms  138-162 ms

So every plain LoRA ``Linear`` (no LoRA variant such as DoRA, no LoRA bias, eval mode) gets
a ``forward`` of ours (an instance attribute, not a forward hook: torch's call path without
hooks is faster) that runs its base layer and adds every row's own low-rank update at once::

    delta = ((x @ A) * mask) @ B

``A`` [in, R] holds the batch's adapters' ``lora_A`` side by side, ``B`` [R, out] their
``lora_B`` stacked with the LoRA scaling folded in, and ``mask`` [rows, 1, R] selects each
row's own columns (none for ``__base__`` rows; no mask when all rows share one adapter): two
matmuls per layer whatever the number of adapters, and PEFT's result up to rounding (masked
columns add exact zeros; the update is added in place with ``addmm_``). On CPU the stacks are
float32 even for a bf16 model (no slower there in a decode step, and the update is
rounded once, when added). The stacked weights
are built once per set of adapters present in a batch (the last few sets are kept; a batch's
set changes only when requests join or leave). Other LoRA layers and PEFT's auxiliary
wrappers (``modules_to_save``) keep PEFT's own ``adapter_names`` path.

The wrapped model must therefore be called through ``forward`` (the hooked layers refuse
other calls); only the scheduler thread does so.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from tunehouse.models import vanilla_lora

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
KEPT_SETS = 4  # adapter sets whose stacked weights stay built


@dataclass(frozen=True)
class Stack:
    """One layer's LoRA weights of a set of adapters, side by side (``a`` None: the layer
    has none of them)."""

    a: torch.Tensor | None  # [in, R]
    b: torch.Tensor | None  # [R, out], scaled
    layout: tuple[tuple[str, int], ...]  # (adapter, rank) in column order


def is_plain(layer: Any) -> bool:
    """Whether every adapter of a PEFT LoRA ``Linear`` is ``x @ A.T @ B.T * scaling``."""
    names = list(layer.lora_A)
    weights = [layer.lora_A[n].weight for n in names] + [layer.lora_B[n].weight for n in names]
    return not layer.training and not layer.merged and len({w.dtype for w in weights}) <= 1 \
        and all(vanilla_lora(layer, n) for n in names)


def build_stack(layer: Any, adapters: tuple[str, ...]) -> Stack:
    """``layer``'s weights of ``adapters`` (those it has), side by side; float32 on CPU."""
    names = [n for n in adapters if n in layer.lora_A]
    if not names:
        return Stack(None, None, ())
    weights_a = [layer.lora_A[n].weight for n in names]
    dtype = weights_a[0].dtype if weights_a[0].is_cuda else torch.float32
    a = torch.cat([w.t() for w in weights_a], dim=1).to(dtype).contiguous()
    b = torch.cat([layer.lora_B[n].weight.t().to(dtype) * layer.scaling[n] for n in names],
                  dim=0).contiguous()
    return Stack(a, b, tuple((n, w.shape[0]) for n, w in zip(names, weights_a, strict=True)))


class AdapterRouter:
    """Runs the PEFT-wrapped base model with row ``i`` using adapter ``adapters[i]``.

    ``attach`` installs the hooks and forwards (again after every adapter load or delete:
    PEFT's modules change); ``forward`` only swaps the per-call state they read.
    """

    def __init__(self) -> None:
        self._names: list[str] | None = None  # the rows' adapters during a call
        self._uniform = False  # every row has the same adapter: no mask needed
        self._stacks: dict[Any, Stack] = {}  # per hooked layer, for the current call's set
        self._set: tuple[str, ...] = ()
        self._sets: OrderedDict[tuple[str, ...], dict[Any, Stack]] = OrderedDict()
        self._masks: dict[tuple, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._hooked: list[Any] = []  # LoRA layers whose forward is their base layer's
        self._peft = False

    def attach(self, model: Any) -> None:
        """(Re)install our forward or a hook on every LoRA layer of ``model`` (dropping stacked
        weights)."""
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.utils.other import AuxiliaryTrainingWrapper

        self.detach()
        self._peft = isinstance(model, PeftModel)
        for m in model.modules():
            if type(m) is LoraLinear and is_plain(m):  # subclasses (quantised) differ
                # an instance attribute, not a hook: torch's call path without hooks is faster
                m.forward = functools.partial(self._lora_forward, m)
                self._hooked.append(m)
                continue
            if isinstance(m, (LoraLayer, AuxiliaryTrainingWrapper)):
                self._handles.append(m.register_forward_pre_hook(self._pass_names,
                                                                 with_kwargs=True))

    def detach(self) -> None:
        """Remove the hooks and forwards: the model is PEFT's own again (callable directly)."""
        for handle in self._handles:
            handle.remove()
        for m in self._hooked:
            m.__dict__.pop("forward", None)
        self._handles, self._hooked, self._stacks = [], [], {}
        self._sets.clear()
        self._peft = False

    def forward(self, model: Any, adapters: list[str], **kwargs: Any) -> Any:
        """``model(**kwargs)`` with row ``i`` using adapter ``adapters[i]``."""
        if not self._peft:
            return model(**kwargs)
        self._set = tuple(sorted(set(adapters) - {BASE_ADAPTER}))
        stacks = self._sets.pop(self._set, None)
        self._stacks = self._sets[self._set] = stacks if stacks is not None else {}
        while len(self._sets) > KEPT_SETS:
            self._sets.popitem(last=False)
        self._names, self._uniform = list(adapters), len(set(adapters)) == 1
        try:
            return model(**kwargs)
        finally:
            self._names, self._masks = None, {}

    def stacked_layers(self) -> int:
        """Layers that added stacked updates in the last call (diagnostics, tests); the
        others had none of its adapters or took PEFT's path."""
        return sum(1 for s in self._stacks.values() if s.a is not None)

    # ----- hooks (run inside the model's forward) -----

    def _pass_names(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self._names is not None:
            kwargs["adapter_names"] = self._names
        return args, kwargs

    def _lora_forward(self, module: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A hooked LoRA layer's forward: its base layer, plus the rows' low-rank updates."""
        if self._names is None:
            raise RuntimeError("the adapter-serving model must be called through "
                               "AdapterRouter.forward (its LoRA layers are hooked)")
        output = module.base_layer(x, *args, **kwargs)
        stack = self._stacks.get(module)
        if stack is None:
            stack = self._stacks[module] = build_stack(module, self._set)
        if stack.a is None or stack.b is None:
            return output  # none of the batch's adapters has this layer
        x = x.to(stack.a.dtype)  # float32 stacks under a bf16 model on CPU
        low = x @ stack.a
        if not self._uniform:
            low.mul_(self._mask(stack, x))
        if not output.is_contiguous():
            return output + (low @ stack.b).to(output.dtype)
        flat, rows = output.view(-1, output.shape[-1]), low.view(-1, low.shape[-1])
        if output.dtype == stack.b.dtype:  # fresh from the base layer: add in place
            flat.addmm_(rows, stack.b)
        else:  # a bf16 model on CPU: the update in float32, rounded once when added
            flat.add_(rows @ stack.b)
        return output

    def _mask(self, stack: Stack, x: torch.Tensor) -> torch.Tensor:
        """[rows, 1.., R]: 1 where the column belongs to the row's adapter (cached per call)."""
        key = (stack.layout, x.dim())
        mask = self._masks.get(key)
        if mask is None:
            assert self._names is not None
            width = sum(r for _, r in stack.layout)
            mask = torch.zeros(len(self._names), width)
            col = 0
            for name, rank in stack.layout:
                rows = [i for i, n in enumerate(self._names) if n == name]
                mask[rows, col:col + rank] = 1
                col += rank
            mask = mask.view(len(self._names), *([1] * (x.dim() - 2)), width)
            mask = self._masks[key] = mask.to(device=x.device, dtype=x.dtype)
        return mask
