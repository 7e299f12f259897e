""""auto" hyperparameters: OpenAI's published rule for epochs, documented defaults for the rest.

Every resolved value is returned in ``Resolved`` and recorded in the run's ``tunehouse.json``
so that a run can be reproduced and compared.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tunehouse.config import TrainConfig

# Base learning rates (the multiplier scales these). LoRA on small models tolerates and needs a
# higher rate than the 2e-4 common for 7B models; full fine-tuning uses a low one.
BASE_LR_LORA = 1e-3
BASE_LR_FULL = 2e-5
MIN_EXAMPLES_PER_EPOCH_TARGET = 100  # OpenAI: scale epochs up so ~100 examples are seen
MAX_EXAMPLES_SEEN = 25_000


def auto_epochs(n_examples: int) -> int:
    """OpenAI's rule: 3 epochs; more for tiny sets, fewer for huge ones.

    >>> auto_epochs(10), auto_epochs(30), auto_epochs(200), auto_epochs(20_000)
    (10, 3, 3, 1)
    """
    n = max(1, n_examples)
    if n * 3 < MIN_EXAMPLES_PER_EPOCH_TARGET:
        return min(25, MIN_EXAMPLES_PER_EPOCH_TARGET // n)
    if n * 3 > MAX_EXAMPLES_SEEN:
        return max(1, MAX_EXAMPLES_SEEN // n)
    return 3


def auto_batch_size(n_examples: int) -> int:
    """About 0.2% of the examples (OpenAI's legacy rule), at least 8 so each step is a useful
    average on small sets, a power of two, at most 256 and never more than the examples.

    >>> auto_batch_size(20), auto_batch_size(200), auto_batch_size(10_000), auto_batch_size(5)
    (8, 8, 16, 5)
    """
    target = max(8, 2 ** round(math.log2(max(1.0, 0.002 * n_examples))))
    return max(1, min(256, target, n_examples))


@dataclass
class Resolved:
    """Concrete hyperparameters of a run (what "auto" became)."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    max_length: int
    eval_every: int
    save_every: int
    steps_per_epoch: int
    total_steps: int
    beta: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def resolve(cfg: TrainConfig, *, n_examples: int, context_length: int) -> Resolved:
    """Turn ``cfg``'s "auto" values into numbers for a training set of ``n_examples``."""
    epochs = auto_epochs(n_examples) if cfg.epochs == "auto" else int(cfg.epochs)
    batch = auto_batch_size(n_examples) if cfg.batch_size == "auto" else int(cfg.batch_size)
    batch = max(1, min(batch, n_examples))
    mult = 1.0 if cfg.learning_rate_multiplier == "auto" else float(cfg.learning_rate_multiplier)
    base = BASE_LR_FULL if cfg.full else BASE_LR_LORA
    max_length = min(context_length, 2048) if cfg.max_length == "auto" else int(cfg.max_length)
    steps_per_epoch = math.ceil(n_examples / batch)
    total = steps_per_epoch * epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    eval_every = (max(1, steps_per_epoch // 5) if cfg.eval_every == "auto" else int(cfg.eval_every))
    save_every = steps_per_epoch if cfg.save_every == "auto" else int(cfg.save_every)
    beta = None
    if cfg.method == "dpo":
        beta = 0.1 if cfg.beta == "auto" else float(cfg.beta)
    return Resolved(
        n_epochs=epochs, batch_size=batch, learning_rate_multiplier=mult,
        learning_rate=base * mult, max_length=max_length, eval_every=eval_every,
        save_every=save_every, steps_per_epoch=steps_per_epoch, total_steps=total, beta=beta,
    )


def lr_at(step: int, total_steps: int, peak: float, warmup_ratio: float) -> float:
    """Linear warm-up then linear decay to 10% of the peak (``step`` counts from 0).

    >>> round(lr_at(0, 100, 1.0, 0.1), 3), lr_at(10, 100, 1.0, 0.1), round(lr_at(99, 100, 1.0, 0.1), 3)
    (0.1, 1.0, 0.11)
    """
    warmup = max(1, round(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total_steps - warmup)
    return peak * (1.0 - 0.9 * min(1.0, (step - warmup) / span))
