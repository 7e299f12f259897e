"""Batched greedy generation and reference-answer loss for one loaded model.

Generation: prompts are rendered with the model's chat template, sorted by length (less
padding), left-padded into batches and decoded greedily with the KV cache until every row
hit end-of-turn (``eos`` / ``<|im_end|>``) or ``max_new_tokens``. Loss: the reference answer
is scored by teacher forcing with assistant-only labels from ``encode_chat`` (earlier
assistant turns get weight 0, so only the reference counts); batches are left-padded so the
answer tokens sit at the end and only those positions' logits are computed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunehouse.data.tokenize import IGNORE_INDEX, encode_chat, encode_prompt
from tunehouse.models import context_length

MAX_NEW_TOKENS_CAP = 512
Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class Generation:
    """One generated answer with its cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # wall time of the batch it was generated in
    truncated_prompt: bool = False


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: eos and ChatML's ``<|im_end|>`` when present."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end >= 0:
        ids.add(im_end)
    return sorted(ids)


def default_max_new_tokens(tokenizer: Any, references: Sequence[str], *, factor: float = 1.5,
                           cap: int = MAX_NEW_TOKENS_CAP) -> int:
    """``factor`` x the longest reference in tokens (+1 for end-of-turn), between 8 and ``cap``."""
    longest = max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references),
                  default=0)
    return max(8, min(cap, math.ceil(factor * longest) + 1))


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with every row right-aligned."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (longest first: memory peaks early, not late)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def generate(model: Any, tokenizer: Any, prompts: Sequence[list[dict]], *,
             max_new_tokens: int, batch_size: int = 16,
             tools: Sequence[list | None] | None = None,
             progress: Progress | None = None) -> list[Generation]:
    """Greedy answers for chat ``prompts`` (in input order), batched with left padding."""
    from transformers import GenerationConfig

    model.eval()
    limit = context_length(model)
    keep = max(1, limit - max_new_tokens)
    encoded = [encode_prompt(tokenizer, p, tools=(tools[i] if tools else None))
               for i, p in enumerate(prompts)]
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=stops, pad_token_id=pad_id, use_cache=True)
    out: list[Generation | None] = [None] * len(prompts)
    done = 0
    for batch in _batches([len(e) for e in encoded], batch_size):
        rows = [encoded[i][-keep:] for i in batch]
        ids, mask = _left_pad(rows, pad_id)
        device = next(model.parameters()).device
        start = time.perf_counter()
        seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                              generation_config=config)
        elapsed = time.perf_counter() - start
        for row, i in enumerate(batch):
            new = seqs[row, ids.shape[1]:].tolist()
            n_new = next((k + 1 for k, t in enumerate(new) if t in stops), len(new))
            text = tokenizer.decode(new[:n_new], skip_special_tokens=True).strip()
            out[i] = Generation(text=text, prompt_tokens=len(rows[row]),
                                completion_tokens=n_new, latency_s=elapsed,
                                truncated_prompt=len(encoded[i]) > keep)
        done += len(batch)
        if progress:
            progress(done, len(prompts))
    return [g for g in out if g is not None]


def _reference_only(messages: list[dict]) -> list[dict]:
    """Weight 0 on every assistant turn but the last one, so only the reference is scored."""
    last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    return [({**m, "weight": 0} if m.get("role") == "assistant" and i != last else m)
            for i, m in enumerate(messages)]


@torch.inference_mode()
def reference_losses(model: Any, tokenizer: Any, conversations: Sequence[list[dict]], *,
                     batch_size: int = 16, tools: Sequence[list | None] | None = None,
                     progress: Progress | None = None) -> list[float]:
    """Mean token negative log-likelihood of each conversation's last assistant message.

    ``nan`` where the answer has no tokens left after truncation to the context length.
    """
    model.eval()
    limit = context_length(model)
    enc = [encode_chat(tokenizer, _reference_only(c), max_length=limit,
                       tools=(tools[i] if tools else None)) for i, c in enumerate(conversations)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses = [math.nan] * len(enc)
    device = next(model.parameters()).device
    done = 0
    for batch in _batches([len(e.input_ids) for e in enc], batch_size):
        ids, mask = _left_pad([enc[i].input_ids for i in batch], pad_id)
        labels, _ = _left_pad([enc[i].labels for i in batch], IGNORE_INDEX)
        labels[mask == 0] = IGNORE_INDEX
        first = [int((row != IGNORE_INDEX).nonzero()[0]) for row in labels
                 if (row != IGNORE_INDEX).any()]
        if first:
            keep = ids.shape[1] - min(first) + 1  # logits from the token before the answer
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), logits_to_keep=keep).logits
            _batch_losses(logits.float(), labels[:, -keep:].to(device), batch, losses)
        done += len(batch)
        if progress:
            progress(done, len(enc))
    return losses


def _batch_losses(logits: torch.Tensor, labels: torch.Tensor, batch: list[int],
                  losses: list[float]) -> None:
    """Fill ``losses[batch[i]]`` with the mean NLL of row ``i``'s labelled tokens."""
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none").view(shift_labels.shape)
    counts = (shift_labels != IGNORE_INDEX).sum(-1)
    sums = nll.sum(-1)
    for row, i in enumerate(batch):
        if counts[row] > 0:
            losses[i] = float(sums[row] / counts[row])
