"""One continuous batch ("lane") per loaded model: rows join and leave between decode steps.

All rows of a lane share one ``DynamicCache`` of shape [rows, heads, T, dim], left-padded:
``mask`` [rows, T] is 1 on real positions. New rows are prefilled on their own (left-padded
among themselves), then their cache is padded to the lane's length (or the lane's to theirs)
and concatenated on the batch axis. Finished rows are removed with ``batch_select_indices``
and columns that are padding for every remaining row are trimmed. Position ids are passed
explicitly (each row's count of real tokens), so RoPE sees true positions despite padding.

Each row names its adapter; ``forward`` (``router.AdapterRouter.forward`` for the base
lane) makes every row use its own, so rows never see another row's adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from tunehouse.serve.attention import new_cache

Forward = Callable[..., Any]  # (model, adapters, **model_kwargs) -> model output


def prefill(forward: Forward, model: Any, prompts: Sequence[Sequence[int]], adapters: Sequence[str],
            pad_id: int, device: str) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
    """Run left-padded ``prompts``: (last-position logits [R, V], cache, mask [R, L])."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, length - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = new_cache()
    out = forward(model, list(adapters), input_ids=ids.to(device), attention_mask=mask.to(device),
                        position_ids=positions.to(device), past_key_values=cache,
                        use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :], cache, mask


def _pad_layers(cache: DynamicCache, extra: int) -> None:
    """Left-pad every layer of ``cache`` by ``extra`` zero positions."""
    if extra <= 0:
        return
    for layer in cache.layers:
        layer.keys = F.pad(layer.keys, (0, 0, extra, 0))
        layer.values = F.pad(layer.values, (0, 0, extra, 0))


class Lane:
    """The running batch of one model; ``rows`` are opaque objects owned by the scheduler."""

    def __init__(self, device: str):
        self.device = device
        self.rows: list[Any] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.positions: list[int] = []  # position id of each row's pending token

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, rows: Sequence[Any], cache: DynamicCache, mask: torch.Tensor,
             positions: Sequence[int]) -> None:
        """Append prefilled rows (their cache lacks their pending token, like ours)."""
        if self.cache is None or not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            self.positions = list(positions)
            return
        mine, theirs = self.mask.shape[1], mask.shape[1]
        _pad_layers(self.cache, theirs - mine)
        _pad_layers(cache, mine - theirs)
        width = max(mine, theirs)
        self.mask = torch.cat([F.pad(self.mask, (width - mine, 0)),
                               F.pad(mask, (width - theirs, 0))])
        for layer, other in zip(self.cache.layers, cache.layers, strict=True):
            layer.keys = torch.cat([layer.keys, other.keys])
            layer.values = torch.cat([layer.values, other.values])
        self.rows += list(rows)
        self.positions += list(positions)

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the rows at ``indices`` (in that order); trim all-padding columns."""
        if len(indices) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in indices]
        self.positions = [self.positions[i] for i in indices]
        if not indices:
            self.cache, self.mask = None, torch.zeros((0, 0), dtype=torch.long)
            return
        assert self.cache is not None
        idx = torch.tensor(list(indices), dtype=torch.long)
        self.cache.batch_select_indices(idx.to(self.device))
        self.mask = self.mask[idx]
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start > 0:
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]

    def step(self, forward: Forward, model: Any, tokens: Sequence[int], adapters: Sequence[str]) -> torch.Tensor:
        """Feed each row's pending token through ``model``; return next-token logits [rows, V].

        The model is passed per step because the base lane's object changes when the first
        adapter wraps it in a ``PeftModel``.
        """
        n = len(self.rows)
        ids = torch.tensor(list(tokens), dtype=torch.long).view(n, 1)
        self.mask = torch.cat([self.mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
        positions = torch.tensor(self.positions, dtype=torch.long).view(n, 1)
        out = forward(model, list(adapters), input_ids=ids.to(self.device),
                            attention_mask=self.mask.to(self.device),
                            position_ids=positions.to(self.device),
                            past_key_values=self.cache, use_cache=True)
        self.positions = [p + 1 for p in self.positions]
        return out.logits[:, -1, :]
