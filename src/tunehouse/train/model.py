"""Model set-up for training and the loss on trained tokens only.

The language-model head is applied only to positions whose next token is trained (assistant
tokens), in chunks, with its gradient computed on the spot (``train.head``): prompt tokens never
materialise full-vocabulary logits, and trained tokens' logits are not kept for ``backward``.
For SmolLM2 with a 49k vocabulary this is most of the memory and a large share of the compute
of a naive ``model(input_ids, labels=...)`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tunehouse.config import TrainConfig
from tunehouse.models import bf16_is_fast
from tunehouse.models.logprobs import HEAD_CHUNK, causal_lm, pad_right
from tunehouse.train.attention import use_varlen
from tunehouse.train.head import head_cross_entropy
from tunehouse.train.lora import use_fused_lora
from tunehouse.train.mlp import use_fused_mlps
from tunehouse.train.norm import use_fused_norms
from tunehouse.train.qkv import use_fused_qkv

IGNORE_INDEX = -100


def wrap_for_training(model: Any, cfg: TrainConfig) -> Any:
    """LoRA on all linear layers (default) or full fine-tuning (``cfg.full``)."""
    if cfg.full:
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def prepare_for_training(model: Any) -> Any:
    """Switch a (PEFT) model to the engine's fast path, in place: varlen attention for packed
    rows (``train.attention``), one autograd node per plain LoRA linear (``train.lora``) and
    per RMSNorm (``train.norm``), the SwiGLU MLP as one node that keeps only the gate and up
    outputs (``train.mlp``), each attention layer's query/key/value projections and rotary
    embedding as one node (``train.qkv``; both over stacked frozen weights, ``train.stacked``),
    and LoRA inputs left in the compute dtype under autocast (PEFT would cast each to fp32).
    Turns the key/value cache off: the fused attention runs only without one."""
    causal_lm(model).config.use_cache = False  # no key/value cache to build while training
    use_varlen(causal_lm(model))
    use_fused_lora(model)
    use_fused_mlps(model)  # after use_fused_lora: its probe compares with the fused linears
    use_fused_qkv(model)  # after use_varlen and use_fused_lora, for the same reason
    use_fused_norms(model)
    for m in model.modules():
        if hasattr(m, "cast_input_dtype_enabled"):
            m.cast_input_dtype_enabled = False
    return model


def trained_token_loss(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Summed cross-entropy over trained tokens, their count and the number predicted right.

    Returns the *sum* (not mean) so gradient accumulation over micro-batches can normalise by
    the number of trained tokens in the whole optimiser step.
    """
    lm = causal_lm(model)
    hidden = lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return _head_loss(lm, hidden, labels)


@dataclass
class Packed:
    """Examples back to back in one row: no padding; boundaries for ``train.attention``."""

    input_ids: torch.Tensor  # (1, tokens)
    labels: torch.Tensor  # (1, tokens); each example's first label is IGNORE_INDEX
    position_ids: torch.Tensor  # (1, tokens), restarting at 0 for every example
    cu_seq_lens: torch.Tensor  # (examples + 1,) int32 cumulative lengths
    longest: int

    def to(self, device: str) -> Packed:
        return Packed(self.input_ids.to(device), self.labels.to(device), self.position_ids.to(device),
                      self.cu_seq_lens.to(device), self.longest)

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def __getstate__(self) -> dict[str, Any]:
        """Pickled as numpy arrays: a plain copy through a worker's pipe, where a tensor would
        be moved to a shared-memory segment of its own (``train.parallel``)."""
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, torch.from_numpy(v) if isinstance(v, np.ndarray) else v)


def pack(examples: list[tuple[list[int], list[int]]]) -> Packed:
    """``(input_ids, labels)`` pairs -> one packed row.

    The first label of each example is masked, so the last position of one example never
    learns to predict the first token of the next.
    """
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    cu = [0]
    for e_ids, e_labels in examples:
        ids += e_ids
        labels += [IGNORE_INDEX, *e_labels[1:]]
        pos += range(len(e_ids))
        cu.append(cu[-1] + len(e_ids))
    return Packed(torch.tensor([ids]), torch.tensor([labels]), torch.tensor([pos]),
                  torch.tensor(cu, dtype=torch.int32), max(len(e) for e, _ in examples))


def packed_token_loss(model: Any, batch: Packed) -> tuple[torch.Tensor, int, int]:
    """``trained_token_loss`` for a packed row (needs ``train.attention.use_varlen`` on the model)."""
    lm = causal_lm(model)
    cu = batch.cu_seq_lens
    hidden = lm.model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                      cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=batch.longest,
                      max_length_k=batch.longest).last_hidden_state
    return _head_loss(lm, hidden, batch.labels)


def _head_loss(lm: Any, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Summed cross-entropy of the LM head on trained positions only, in chunks."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    h = hidden[:, :-1][mask]
    y = targets[mask]
    n = int(y.numel())
    if n == 0:
        return hidden.sum() * 0.0, 0, 0
    head = lm.lm_head
    if type(head) is torch.nn.Linear and head.bias is None:  # not adapted: fused loss and gradient
        total, correct = head_cross_entropy(h, head.weight, y)
        return total, n, correct
    total = hidden.new_zeros((), dtype=torch.float32)
    correct = 0
    for s in range(0, n, HEAD_CHUNK):
        logits = head(h[s:s + HEAD_CHUNK]).float()
        total = total + F.cross_entropy(logits, y[s:s + HEAD_CHUNK], reduction="sum")
        correct += int((logits.detach().argmax(-1) == y[s:s + HEAD_CHUNK]).sum())
    return total, n, correct


collate = pad_right  # the name training code and tests use for right-padding rows


def use_bf16(precision: str, device: str) -> bool:
    """Whether a run with ``precision`` ("auto" | "bf16" | "fp32") computes in bf16."""
    return precision == "bf16" or (precision == "auto" and bf16_is_fast(device))


def autocast_context(precision: str, device: str) -> Any:
    """bf16 autocast where it is fast (CPUs with AMX/AVX-512-BF16, CUDA with bf16), else no-op."""
    import contextlib

    if not use_bf16(precision, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
