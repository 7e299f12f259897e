"""Cross-entropy of the vocabulary head whose gradient is computed in the forward pass.

A plain ``F.cross_entropy(lm_head(h).float(), y)`` keeps, per trained token, the fp32
log-softmax over the whole vocabulary (49k floats for SmolLM2) until ``backward()``: on a CPU
with two workers that was about half a gigabyte of a step's peak memory. Here each chunk's
logits live only inside ``forward``: the loss, the number predicted right and the gradient
with respect to the hidden states (``(softmax - onehot) @ W``, the same matmul autograd would
run in ``backward``) are computed there, and only that ``(tokens, hidden)`` gradient is kept.
``backward`` scales it by the incoming gradient. For full fine-tuning the head's weight gradient
is accumulated the same way. Numerically this is the autograd path: logits in the head's
compute dtype (bf16 under autocast), softmax in fp32, the gradient cast back before the matmul.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK = 256  # trained tokens per chunk: bounds the transient fp32 logits (4 B x vocab each)


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        correct = torch.zeros((), dtype=torch.long, device=h.device)
        for s in range(0, h.shape[0], CHUNK):
            hs, ys = h[s:s + CHUNK], targets[s:s + CHUNK]
            raw = hs @ weight.T  # the compute dtype (bf16 under autocast), as autograd's would be
            compute_dtype = raw.dtype
            probs = torch.softmax(raw, dim=-1, dtype=torch.float32)  # one fused kernel
            p_target = probs.gather(1, ys[:, None]).squeeze(1)
            # right where the target is the most likely token: a row maximum is 6x faster
            # than an argmax (a tie with another token counts as right)
            correct += (p_target >= probs.amax(-1)).sum()
            total -= _target_log_probs(raw, p_target, ys).sum()
            del raw
            if grad_h is None and grad_w is None:
                continue
            probs[torch.arange(ys.shape[0], device=ys.device), ys] -= 1.0
            g = probs.to(compute_dtype)
            del probs
            if grad_h is not None:
                grad_h[s:s + CHUNK] = g @ weight
            if grad_w is not None:
                grad_w += (g.T @ hs).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor, _grad_correct: Any
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is not None:
            grad_h = grad_h * grad_total.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_total).to(ctx.weight_dtype)
        return grad_h, grad_w, None


def _target_log_probs(raw: torch.Tensor, p: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """``log softmax(raw)[i, ys[i]]`` in fp32 from the targets' probabilities ``p``: their log
    where that is a normal float, else (a target more than ~87 nats below the top logit, whose
    probability underflows or is flushed to zero) from an exact log-sum-exp of that row."""
    out = p.log()
    tiny = p < 1e-30
    if bool(tiny.any()):
        rows = raw[tiny].float()
        out[tiny] = rows.gather(1, ys[tiny][:, None]).squeeze(1) - torch.logsumexp(rows, -1)
    return out


def head_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
                       ) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of ``h @ weight.T`` against ``targets`` and the number of tokens
    whose most likely next token is the target; differentiable in ``h`` and ``weight``."""
    total, correct = _HeadCrossEntropy.apply(h, weight, targets)
    return total, int(correct)
