"""Preference fine-tuning (DPO): pair encoding, sequence log-probabilities, the loss, scoring.

A preference example (OpenAI's format) is a prompt ``input.messages`` and two single-message
answers. The prompt is rendered with the model's chat template plus the generation prompt
(exactly what the model sees before it answers at inference); each answer's completion is the
template's text after that point, up to and including the end-of-turn marker. Only completion
tokens are scored: the log-probability of an answer is the sum of the log-probabilities of its
completion tokens given the prompt.

Direct Preference Optimization (Rafailov et al., 2023) then trains the policy to raise the
preferred answer's log-probability relative to a frozen reference model more than the other
answer's (see :func:`dpo_loss`). The trainer lives in ``train.dpo_trainer``; this module holds
the pure pieces and :func:`preference_accuracy`, the metric for held-out pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunehouse.data.tokenize import IGNORE_INDEX, render
from tunehouse.train.model import HEAD_CHUNK, causal_lm, collate

ANSWER_KEYS = ("preferred_output", "non_preferred_output")


@dataclass
class PreferencePair:
    """One encoded preference example; ``ref_*`` are the reference model's log-probabilities."""

    prompt_ids: list[int]
    chosen_ids: list[int]  # completion tokens of the preferred answer, end-of-turn included
    rejected_ids: list[int]
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    def sequences(self) -> list[tuple[list[int], list[int]]]:
        """``(input_ids, labels)`` of the chosen then the rejected sequence; labels only on
        completion tokens."""
        masked = [IGNORE_INDEX] * len(self.prompt_ids)
        return [(self.prompt_ids + c, masked + c) for c in (self.chosen_ids, self.rejected_ids)]

    @property
    def length(self) -> int:
        """Padded tokens the pair costs in a forward pass (both rows at the longer width)."""
        return 2 * (len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids)))

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens of both sequences."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


# ----- encoding ------------------------------------------------------------------------------
def _completion_text(tokenizer: Any, prompt_text: str, messages: list[dict], answer: dict,
                     tools: list | None) -> str:
    """The template's text of ``answer`` after the generation prompt, end-of-turn included."""
    full = render(tokenizer, messages + [answer], tools=tools)
    if full.startswith(prompt_text):
        return full[len(prompt_text):].rstrip()  # drop the newline after the end-of-turn marker
    # a template that rewrites earlier turns: fall back to the content and end-of-turn token
    content = answer.get("content") or ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content + (getattr(tokenizer, "eos_token", None) or "")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer: Any, record: dict[str, Any], max_length: int | None = None
                ) -> PreferencePair:
    """Tokenise one (already validated) preference record.

    Too-long pairs keep the end of the prompt (the question being answered) and the start of
    each answer: the prompt is cut from the left to leave room for the longer answer, but keeps
    at least half of ``max_length`` when it has that much; answers are then cut at the end.
    """
    inp = record["input"]
    messages, tools = list(inp.get("messages") or []), inp.get("tools")
    prompt_text = render(tokenizer, messages, tools=tools, add_generation_prompt=True)
    prompt = _ids(tokenizer, prompt_text)
    chosen, rejected = (_ids(tokenizer, _completion_text(tokenizer, prompt_text, messages,
                                                         record[key][0], tools))
                        for key in ANSWER_KEYS)
    longest = max(len(chosen), len(rejected))
    if max_length is not None and len(prompt) + longest > max_length:
        keep = max(max_length - longest, min(len(prompt), max_length // 2))
        prompt = prompt[len(prompt) - keep:] if keep > 0 else []
        room = max(1, max_length - len(prompt))
        chosen, rejected = chosen[:room], rejected[:room]
    return PreferencePair(prompt, chosen, rejected)


def encode_pairs(records: Sequence[dict[str, Any]], tokenizer: Any, max_length: int | None = None
                 ) -> list[PreferencePair]:
    """Encode preference records (validation guarantees each answer has tokens)."""
    return [encode_pair(tokenizer, rec, max_length) for rec in records]


# ----- log-probabilities and the loss --------------------------------------------------------
def sequence_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of the trained (labelled) tokens, in float32.

    Like ``train.model.trained_token_loss``, the LM head runs only on trained positions and in
    chunks, so prompt tokens never materialise full-vocabulary logits.
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


def pair_logps(model: Any, pairs: Sequence[PreferencePair], pad_id: int, device: str | torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the chosen and the rejected answers of ``pairs``.

    Chosen and rejected sequences are concatenated into one batch (rows ``[c_1..c_k,
    r_1..r_k]``) so both go through a single forward pass.
    """
    seqs = [p.sequences()[0] for p in pairs] + [p.sequences()[1] for p in pairs]
    ids, att, lab = collate(seqs, pad_id)
    logps = sequence_logps(model, ids.to(device), att.to(device), lab.to(device))
    return logps[:len(pairs)], logps[len(pairs):]


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
@torch.no_grad()
def score_pairs(model: Any, pad_id: int, pairs: Sequence[PreferencePair], *,
                device: str | torch.device = "cpu", token_budget: int = 8192,
                autocast: Any = contextlib.nullcontext) -> list[tuple[float, float]]:
    """``(log p(chosen), log p(rejected))`` for each pair, in order, micro-batched by tokens."""
    from tunehouse.data.packing import micro_batches

    was_training = model.training
    model.eval()
    lengths = [p.length for p in pairs]
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(pairs)
    for mb in micro_batches(list(range(len(pairs))), lengths, max([token_budget, *lengths])):
        with autocast():
            pc, pr = pair_logps(model, [pairs[i] for i in mb], pad_id, device)
        for j, i in enumerate(mb):
            out[i] = (float(pc[j]), float(pr[j]))
    model.train(was_training)
    return out


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
