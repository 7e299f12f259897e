"""Next-token choice and incremental detokenisation with stop strings, per batch row.

Sampling follows the usual recipe: greedy (argmax) at ``temperature == 0``; otherwise the
logits are divided by the temperature, turned into probabilities, cut to the smallest set of
tokens whose mass reaches ``top_p`` (nucleus sampling), renormalised and drawn from with the
row's own ``torch.Generator``. A row's generator is seeded from the request's ``seed`` and the
choice index, so the same seed gives the same text whatever else shares the batch (up to
floating-point ties).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import torch

_SEED_MOD = 2**63 - 1


def make_generator(seed: int | None, index: int) -> torch.Generator:
    """A CPU generator for choice ``index``: seeded from ``seed`` (random when ``None``)."""
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.manual_seed(secrets.randbits(62))
    else:
        gen.manual_seed((seed * 1_000_003 + index) % _SEED_MOD)
    return gen


def choose_tokens(logits: torch.Tensor, temperatures: Sequence[float], top_ps: Sequence[float],
                  generators: Sequence[torch.Generator | None]) -> list[int]:
    """One next token per row of ``logits`` [B, V], each row with its own settings.

    Rows with temperature 0 take the argmax; the others are sampled (temperature, then top-p)
    with their generator. Sampling happens on CPU in float32 so results do not depend on the
    model's dtype or device.
    """
    logits = logits.detach().float().cpu()
    out = logits.argmax(dim=-1).tolist()
    rows = [i for i, t in enumerate(temperatures) if t > 0]
    if not rows:
        return out
    sub = logits[rows] / torch.tensor([temperatures[i] for i in rows]).unsqueeze(1)
    probs = torch.softmax(sub, dim=-1)
    top_p = torch.tensor([top_ps[i] for i in rows]).unsqueeze(1)
    if bool((top_p < 1.0).any()):
        probs = _nucleus(probs, top_p)
    for j, i in enumerate(rows):
        out[i] = int(torch.multinomial(probs[j], 1, generator=generators[i]).item())
    return out


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero every token outside the smallest high-probability set of mass >= ``top_p``."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of strictly more likely tokens
    sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # the top token always survives
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(dim=-1, keepdim=True)


class TextTracker:
    """Turns one choice's tokens into text deltas, honouring stop strings.

    Decoding is incremental (vLLM's prefix/read offsets): only the last few tokens are
    re-decoded each step, and text ending in an incomplete UTF-8 character (U+FFFD) is held
    until the character completes. Text that could be the start of a stop string is held
    back too, so a stop string spanning several tokens never leaks into the output; the stop
    string itself is never emitted.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self._tok = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self._ids: list[int] = []
        self._prefix = 0  # start of the window re-decoded each step
        self._read = 0  # tokens already turned into text
        self.text = ""  # stable text so far (possibly cut at a stop string)
        self._sent = 0  # characters of ``text`` already emitted
        self.stopped = False  # a stop string was found

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add a generated token; return the text that may be emitted now ('' if none)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        window = self._ids[self._prefix:]
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        new_text = self._decode(window)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""  # nothing printable yet (special token, or half a character)
        self._prefix, self._read = self._read, len(self._ids)
        return self._append(new_text[len(prefix_text):])

    def finish(self) -> str:
        """Flush what was held back (end of generation); return the last text to emit."""
        out = ""
        if not self.stopped and self._read < len(self._ids):
            prefix_text = self._decode(self._ids[self._prefix:self._read])
            tail = self._decode(self._ids[self._prefix:])[len(prefix_text):]
            self._read = len(self._ids)
            out = self._append(tail)
        if not self.stopped:  # no stop string can complete any more: release the held tail
            out += self._emit(len(self.text))
        return out

    def _append(self, delta: str) -> str:
        start = max(0, len(self.text) - self._max_stop + 1)
        self.text += delta
        if self._stop:
            hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.stopped = True
                return self._emit(len(self.text))
        return self._emit(len(self.text) - self._held_back())

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of some stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _emit(self, upto: int) -> str:
        if upto <= self._sent:
            return ""
        out = self.text[self._sent:upto]
        self._sent = upto
        return out
