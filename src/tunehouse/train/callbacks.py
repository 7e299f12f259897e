"""Hooks through which a training run reports progress and is asked to stop.

The CLI draws a progress bar from them; the job worker turns them into OpenAI events,
per-step metrics rows and checkpoint objects. Keeping them out of the loop keeps it readable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _noop(*_: Any, **__: Any) -> None:
    return None


@dataclass
class TrainCallbacks:
    # per step: {step, total_steps, epoch, train_loss, train_mean_token_accuracy, tokens,
    #  tokens_per_second, learning_rate, [valid_loss, valid_mean_token_accuracy],
    #  [full_valid_loss, full_valid_mean_token_accuracy] at epoch ends}
    on_metrics: Callable[[dict[str, Any]], None] = field(default=_noop)
    # after a checkpoint is complete: (step, checkpoint_dir, metrics of that step, epoch_end)
    on_checkpoint: Callable[[int, str, dict[str, Any], bool], None] = field(default=_noop)
    # human-readable messages: (level "info"|"warn"|"error", text)
    on_message: Callable[[str, str], None] = field(default=_noop)
    # polled between steps; when it returns True the run saves a checkpoint and stops
    should_stop: Callable[[], bool] = field(default=lambda: False)
