"""Preference fine-tuning (DPO): the loss, its per-step metrics, and held-out preference accuracy.

A preference example (OpenAI's format) is a prompt ``input.messages`` and two single-message
answers; ``data.preference`` encodes it (prompt tokens, and each answer's completion tokens up
to and including the end-of-turn marker) and ``models.logprobs`` scores it: the
log-probability of an answer is the sum of the log-probabilities of its completion tokens
given the prompt. Both are re-exported here; they live below ``train`` so that ``tunehouse
eval`` scores held-out pairs exactly as training does.

Direct Preference Optimization (Rafailov et al., 2023) then trains the policy to raise the
preferred answer's log-probability relative to a frozen reference model more than the other
answer's (see :func:`dpo_loss`). The trainer lives in ``train.dpo_trainer``; this module holds
the pure pieces and :func:`preference_accuracy`, the metric for held-out pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunehouse.data.preference import (  # noqa: F401
    ANSWER_KEYS,
    PreferencePair,
    encode_pair,
    encode_pairs,
)
from tunehouse.models.logprobs import pair_logps, score_pairs, sequence_logps  # noqa: F401


# ----- the loss ------------------------------------------------------------------------------
def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss per pair, and the implicit rewards of the chosen and rejected answers.

    With ``pi`` the policy, ``ref`` the frozen reference, ``y_w``/``y_l`` the preferred and
    non-preferred answers to prompt ``x`` (log-probabilities summed over answer tokens)::

        r_w  = beta * (log pi(y_w | x) - log ref(y_w | x))      # chosen reward
        r_l  = beta * (log pi(y_l | x) - log ref(y_l | x))      # rejected reward
        loss = -log sigmoid(r_w - r_l) = log(1 + exp(-(r_w - r_l)))

    The loss is ``log 2`` when the policy equals the reference and falls as the policy moves
    probability towards the preferred answer relative to the reference; ``beta`` sets how far
    from the reference that is worth going. Returns ``(losses, chosen_rewards,
    rejected_rewards)``, each of shape ``[n_pairs]``; the rewards are detached (metrics only),
    the caller reduces ``losses`` (sum or mean).
    """
    chosen = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected = beta * (policy_rejected_logps - ref_rejected_logps)
    losses = -F.logsigmoid(chosen - rejected)
    return losses, chosen.detach(), rejected.detach()


def reward_stats(losses: torch.Tensor, chosen_rewards: torch.Tensor,
                 rejected_rewards: torch.Tensor, policy_chosen: torch.Tensor,
                 policy_rejected: torch.Tensor) -> dict[str, float]:
    """Sums over pairs (divide by the number of pairs for means) of the per-step DPO metrics."""
    pc, pr = policy_chosen.detach(), policy_rejected.detach()
    return {
        "loss": float(losses.detach().sum()),
        "reward_accuracy": float((chosen_rewards > rejected_rewards).float().sum()),
        "reward_margin": float((chosen_rewards - rejected_rewards).sum()),
        "chosen_reward": float(chosen_rewards.sum()),
        "rejected_reward": float(rejected_rewards.sum()),
        "chosen_logps": float(pc.sum()),
        "rejected_logps": float(pr.sum()),
        "preference_accuracy": float((pc > pr).float().sum()),
    }


# ----- scoring a model on held-out pairs -----------------------------------------------------
def load_pairs(path: str | Path, tokenizer: Any, max_length: int | None = None
               ) -> list[PreferencePair]:
    """Validate a preference JSONL file (line-exact errors, as ``tunehouse validate``), encode it.

    Raises:
        InvalidFile: the file is missing, has errors, or is not in the preference format.
    """
    from tunehouse.data.validate import validate_file
    from tunehouse.train.data import require_format

    report = validate_file(path, tokenizer=tokenizer, max_length=max_length, min_examples=1)
    require_format(report, "dpo", path)
    report.raise_if_invalid()
    return encode_pairs([rec.data for rec in report.examples], tokenizer, max_length)


def preference_accuracy(model_dir_or_name: str | None, pairs_file: str | Path) -> float:
    """Fraction of pairs whose preferred answer the model gives the higher log-likelihood.

    ``model_dir_or_name`` is anything ``models.resolve`` accepts (embedded name, HF directory,
    tunehouse output or checkpoint directory). Ties count as not preferred.

    Raises:
        InvalidFile: ``pairs_file`` is unusable (see :func:`load_pairs`).
        ModelNotFound: the model cannot be resolved.
    """
    from tunehouse import models
    from tunehouse.train.model import autocast_context, use_bf16

    device = "cuda" if torch.cuda.is_available() else "cpu"
    source = models.resolve(model_dir_or_name)
    tok = models.load_tokenizer(source)
    dtype = torch.bfloat16 if use_bf16("auto", device) else torch.float32  # as LoRA training
    model = models.load_model(source, device=device, dtype=dtype, merge_adapter=True)
    max_length = min(models.context_length(model), 2048)
    pairs = load_pairs(pairs_file, tok, max_length)
    scores = score_pairs(model, tok.pad_token_id, pairs, device=device,
                         autocast=lambda: autocast_context("auto", device))
    return sum(1 for c, r in scores if c > r) / len(scores)
