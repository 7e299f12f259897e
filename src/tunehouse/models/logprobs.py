"""Sequence log-probabilities of answer tokens: the scoring both DPO training and evaluation use.

``sequence_logps`` sums, per row, the log-probabilities of the labelled tokens given everything
before them; ``score_pairs`` does it for the preferred and non-preferred answers of preference
pairs (``data.preference.PreferencePair``, or anything with ``sequences()`` and ``length``), in
micro-batches under a token budget. The DPO loss (``train.dpo``) and held-out preference
accuracy (``eval.preference``) both build on these, so training and evaluation score the very
same numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of positions that are not scored (``data.tokenize.IGNORE_INDEX``)
HEAD_CHUNK = 2048  # scored positions per lm_head chunk
TOKEN_BUDGET = 8192  # padded tokens per scoring forward pass


class Scorable(Protocol):
    """A preference pair as ``score_pairs`` needs it."""

    def sequences(self) -> list[tuple[list[int], list[int]]]: ...

    @property
    def length(self) -> int: ...


def causal_lm(model: Any) -> Any:
    """The underlying ``*ForCausalLM`` (unwrapping PEFT) whose ``.model`` and ``.lm_head`` we use."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def pad_right(rows: Sequence[tuple[list[int], list[int]]], pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad ``(input_ids, labels)`` rows into ``(input_ids, attention_mask, labels)``."""
    width = max(len(ids) for ids, _ in rows)
    ids_t = torch.full((len(rows), width), pad_id, dtype=torch.long)
    lab_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    att_t = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, labels) in enumerate(rows):
        ids_t[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        lab_t[r, :len(labels)] = torch.tensor(labels, dtype=torch.long)
        att_t[r, :len(ids)] = 1
    return ids_t, att_t, lab_t


def sequence_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of the labelled tokens, in float32.

    The LM head runs only on labelled positions and in chunks, so prompt tokens never
    materialise full-vocabulary logits. Differentiable (DPO trains through it).
    """
    lm = causal_lm(model)
    hidden = lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    rows = mask.nonzero(as_tuple=True)[0]
    h, y = hidden[:, :-1][mask], targets[mask]
    out = hidden.new_zeros(input_ids.shape[0], dtype=torch.float32)
    if y.numel() == 0:
        return out + hidden.sum() * 0.0  # keep the graph connected for backward()
    for s in range(0, int(y.numel()), HEAD_CHUNK):
        logits = lm.lm_head(h[s:s + HEAD_CHUNK]).float()
        token_logps = -F.cross_entropy(logits, y[s:s + HEAD_CHUNK], reduction="none")
        out = out.index_add(0, rows[s:s + HEAD_CHUNK], token_logps)
    return out


def pair_logps(model: Any, pairs: Sequence[Scorable], pad_id: int, device: str | torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the chosen and the rejected answers of ``pairs``.

    Chosen and rejected sequences are concatenated into one batch (rows ``[c_1..c_k,
    r_1..r_k]``) so both go through a single forward pass.
    """
    seqs = [p.sequences()[0] for p in pairs] + [p.sequences()[1] for p in pairs]
    ids, att, lab = pad_right(seqs, pad_id)
    logps = sequence_logps(model, ids.to(device), att.to(device), lab.to(device))
    return logps[:len(pairs)], logps[len(pairs):]


def _budget_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped by length so each group's padded size (count x longest) fits ``budget``;
    a single item longer than the budget gets a group of its own."""
    out: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        if out and lengths[i] * (len(out[-1]) + 1) <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


@torch.no_grad()
def score_pairs(model: Any, pad_id: int, pairs: Sequence[Scorable], *,
                device: str | torch.device = "cpu", token_budget: int = TOKEN_BUDGET,
                autocast: Callable[[], Any] = contextlib.nullcontext
                ) -> list[tuple[float, float]]:
    """``(log p(chosen), log p(rejected))`` for each pair, in order, micro-batched by tokens.

    ``autocast`` returns the context each forward pass runs in (e.g. bf16 autocast).
    """
    was_training = model.training
    model.eval()
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(pairs)
    try:
        for mb in _budget_batches([p.length for p in pairs], token_budget):
            with autocast():
                pc, pr = pair_logps(model, [pairs[i] for i in mb], pad_id, device)
            for j, i in enumerate(mb):
                out[i] = (float(pc[j]), float(pr[j]))
    finally:
        model.train(was_training)
    return out
