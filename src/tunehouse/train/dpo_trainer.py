"""The DPO trainer: the supervised loop's schedule, checkpoints, validation and early stopping,
with a preference-pair step (``cfg.method == "dpo"``; ``train.loop.train`` picks it).

Reference model: DPO compares the policy with a frozen reference, the model training starts
from. Its log-probabilities of every train and validation answer are computed once, before the
first step, and kept in memory (two floats per pair), so no second copy of the weights exists:

- LoRA on a base model: the reference is the same network with the adapter disabled
  (``model.disable_adapter()``), identical to the zero-initialised adapter at step 0;
- continuing an adapter (supervised then DPO) or full fine-tuning: the weights as loaded.

On ``--resume`` the trainer is built from the starting weights again and the reference is
recomputed before the checkpoint's weights are restored, so resumed runs use the same
reference as uninterrupted ones (up to floating-point batching noise).

Per step, the step's pairs are micro-batched under the token budget; each micro-batch puts
its chosen and rejected sequences in one forward pass; per-pair losses are summed and
normalised by the pairs in the step. Metrics rows carry the supervised keys (``train_loss`` is
the DPO loss, ``train_mean_token_accuracy`` the reward accuracy, so ``metrics.csv`` keeps
OpenAI's columns) plus reward margin, chosen/rejected rewards and log-probabilities.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

from tunehouse.config import TrainConfig
from tunehouse.data.packing import micro_batches
from tunehouse.train.callbacks import TrainCallbacks
from tunehouse.train.dpo import (
    PreferencePair,
    dpo_loss,
    encode_pairs,
    pair_logps,
    reward_stats,
    score_pairs,
)
from tunehouse.train.hparams import lr_at
from tunehouse.train.loop import TOKEN_BUDGET, Trainer

EXTRA_KEYS = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
              "chosen_logps", "rejected_logps", "preference_accuracy")


class DpoTrainer(Trainer):
    """``Trainer`` whose examples are preference pairs and whose loss is DPO's."""

    train_set: list[PreferencePair]
    valid_set: list[PreferencePair]

    def __init__(self, cfg: TrainConfig, callbacks: TrainCallbacks):
        self.last_eval: dict[str, float] = {}  # means of the last validation pass
        super().__init__(cfg, callbacks)
        self.beta = float(self.hp.beta or 0.1)
        self._lengths = [p.length for p in self.train_set]
        self._precompute_reference()

    def _encode(self, records: list[dict[str, Any]], max_len: int) -> list[Any]:
        return encode_pairs(records, self.tokenizer, max_len)

    # ----- reference ----------------------------------------------------------------------
    def _reference(self) -> Any:
        """Context in which ``self.model`` computes the reference (see the module doc)."""
        if not self.cfg.full and not self.source.adapter_of:
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def _precompute_reference(self) -> None:
        t0 = time.perf_counter()
        pairs = self.train_set + self.valid_set
        with self._reference():
            scores = score_pairs(self.model, self.tokenizer.pad_token_id, pairs,
                                 device=self.device, token_budget=TOKEN_BUDGET,
                                 autocast=self.autocast)
        for pair, (chosen, rejected) in zip(pairs, scores):
            pair.ref_chosen, pair.ref_rejected = chosen, rejected
        which = "base model, adapter disabled" if not self.cfg.full and not \
            self.source.adapter_of else "starting weights"
        self.cb.on_message("info", f"DPO (beta {self.beta:g}): reference log-probabilities of "
                           f"{len(pairs)} pairs ({which}) in {time.perf_counter() - t0:.1f}s.")

    def _losses(self, pairs: list[PreferencePair], pc: torch.Tensor, pr: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-pair DPO losses of policy log-probs ``pc``/``pr`` and their summed metrics."""
        rc = torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32, device=pc.device)
        rr = torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32, device=pc.device)
        losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, self.beta)
        return losses, reward_stats(losses, chosen, rejected, pc, pr)

    # ----- training -------------------------------------------------------------------------
    def _step(self, batch: list[int]) -> dict[str, Any]:
        t0 = time.perf_counter()
        st, hp = self.state, self.hp
        lr = lr_at(st.step, hp.total_steps, hp.learning_rate, self.cfg.warmup_ratio)
        for g in self.opt.param_groups:
            g["lr"] = lr
        budget = max(self.token_budget, max(self._lengths[i] for i in batch))
        mbs = sorted(micro_batches(batch, self._lengths, budget),
                     key=lambda mb: -len(mb) * max(self._lengths[i] for i in mb))

        results = self.workers.gradients("_pairs_loss", mbs, len(batch))
        sums = {k: sum(stats[k] for stats, _ in results) for k in ("loss", *EXTRA_KEYS)}
        tokens = sum(n for _, n in results)
        torch.nn.utils.clip_grad_norm_(self._trainable, self.cfg.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.release_memory()
        st.step += 1
        st.trained_tokens += tokens
        dt = time.perf_counter() - t0
        row = {"step": st.step, "total_steps": hp.total_steps, "epoch": st.epoch + 1,
               **_rows("train", {k: v / len(batch) for k, v in sums.items()}),
               "learning_rate": lr, "tokens": tokens, "trained_tokens": st.trained_tokens,
               "tokens_per_second": tokens / dt if dt > 0 else None, "step_seconds": dt}
        if self.valid_set and st.step % hp.eval_every == 0:
            row.update(self._valid_batch())
        return row

    def _pairs_loss(self, mb: list[int], batch_size: int
                    ) -> tuple[torch.Tensor, tuple[dict[str, float], int]]:
        """A micro-batch's summed DPO loss over the step's ``batch_size`` pairs (run by a worker),
        its metrics and its tokens."""
        pairs = [self.train_set[i] for i in mb]
        with self.autocast():
            pc, pr = pair_logps(self.model, pairs, self.tokenizer.pad_token_id, self.device)
        losses, stats = self._losses(pairs, pc, pr)
        return losses.sum() / batch_size, (stats, sum(p.n_tokens for p in pairs))

    # ----- validation -----------------------------------------------------------------------
    @torch.no_grad()
    def _loss_over(self, idx: list[int]) -> tuple[float, float]:
        """Mean DPO loss and reward accuracy of validation pairs ``idx``; all metrics in
        ``self.last_eval``."""
        pairs = [self.valid_set[i] for i in idx]
        scores = score_pairs(self.model, self.tokenizer.pad_token_id, pairs, device=self.device,
                             token_budget=TOKEN_BUDGET, autocast=self.autocast)
        pc = torch.tensor([c for c, _ in scores])
        pr = torch.tensor([r for _, r in scores])
        _, sums = self._losses(pairs, pc, pr)
        self.last_eval = {k: v / max(1, len(pairs)) for k, v in sums.items()}
        return self.last_eval["loss"], self.last_eval["reward_accuracy"]

    def _valid_batch(self) -> dict[str, float]:
        super()._valid_batch()
        return _rows("valid", self.last_eval)

    def _full_validation(self) -> dict[str, float]:
        super()._full_validation()  # early stopping on the validation DPO loss
        return _rows("full_valid", self.last_eval)


def _rows(prefix: str, means: dict[str, float]) -> dict[str, float]:
    """Metrics under the supervised names (loss, "accuracy" = reward accuracy) plus DPO's own."""
    return {f"{prefix}_loss": means["loss"],
            f"{prefix}_mean_token_accuracy": means["reward_accuracy"],
            **{f"{prefix}_{k}": means[k] for k in EXTRA_KEYS}}
