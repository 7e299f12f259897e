"""Typed run configuration: dataclasses, YAML files and ``a.b=c`` overrides, validated in one place.

Every option is documented once, next to its field. ``"auto"`` values are resolved by
``tunehouse.train.hparams`` and the resolved values are recorded in the run's ``tunehouse.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunehouse.errors import InvalidConfig

Auto = Literal["auto"]


@dataclass
class LoraConfig:
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # dropout on the LoRA input; 0 keeps the fast path exact
    target_modules: str | list[str] = "all-linear"  # every linear layer except the LM head


@dataclass
class TrainConfig:
    train_file: str = ""  # chat JSONL (OpenAI fine-tuning format)
    validation_file: str | None = None  # held-out chat JSONL for validation loss
    validation_split: float = 0.0  # fraction of train_file held out when no validation_file
    model: str | None = None  # base model: embedded name, local HF dir, or hub id (online)
    out: str = "runs/latest"  # output directory
    method: Literal["supervised", "dpo"] = "supervised"  # OpenAI's word: SFT vs preference
    full: bool = False  # full fine-tuning instead of LoRA
    lora: LoraConfig = field(default_factory=LoraConfig)
    epochs: int | Auto = "auto"  # OpenAI's n_epochs (1-50)
    batch_size: int | Auto = "auto"  # examples per optimiser step (1-256)
    learning_rate_multiplier: float | Auto = "auto"  # times the base LR (LoRA 1e-3, full 2e-5)
    max_length: int | Auto = "auto"  # tokens per example; longer examples are truncated
    warmup_ratio: float = 0.05  # fraction of steps with linear warm-up
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_every: int | Auto = "auto"  # steps between small validation batches
    save_every: int | Auto = "auto"  # steps between checkpoints ("auto": once per epoch)
    keep_checkpoints: int = 3  # newest complete checkpoints kept (the best is always kept)
    patience: int | None = None  # epochs without full-validation improvement before stopping
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # bf16 autocast where the CPU/GPU has it
    resume: bool = False  # continue from the newest complete checkpoint in ``out``
    max_steps: int | None = None  # stop after this many optimiser steps (tests, smoke runs)
    beta: float | Auto = "auto"  # DPO beta in (0, 2]
    progress: bool = True  # rich progress bar on a terminal

    def check(self) -> TrainConfig:
        """Validate every field; raise one ``InvalidConfig`` listing all problems."""
        errs: list[str] = []
        if not self.train_file:
            errs.append("train_file: required")
        _range(errs, "epochs", self.epochs, 1, 50, integer=True)
        _range(errs, "batch_size", self.batch_size, 1, 256, integer=True)
        _range(errs, "max_length", self.max_length, 8, 1 << 20, integer=True)
        _range(errs, "eval_every", self.eval_every, 1, 1 << 30, integer=True)
        _range(errs, "save_every", self.save_every, 1, 1 << 30, integer=True)
        lrm = self.learning_rate_multiplier
        if lrm != "auto" and (not _num(lrm) or not math.isfinite(lrm) or lrm <= 0):
            errs.append(f"learning_rate_multiplier: must be a number > 0 or 'auto', got {lrm!r}")
        if self.beta != "auto" and (not _num(self.beta) or not 0 < self.beta <= 2):
            errs.append(f"beta: must be in (0, 2] or 'auto', got {self.beta!r}")
        if not 0 <= self.validation_split < 1:
            errs.append(f"validation_split: must be in [0, 1), got {self.validation_split!r}")
        if self.method not in ("supervised", "dpo"):
            errs.append(f"method: must be 'supervised' or 'dpo', got {self.method!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            errs.append(f"precision: must be auto, bf16 or fp32, got {self.precision!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            errs.append(f"patience: must be an integer >= 1, got {self.patience!r}")
        if self.lora.r < 1 or self.lora.alpha <= 0 or not 0 <= self.lora.dropout < 1:
            errs.append("lora: r >= 1, alpha > 0 and 0 <= dropout < 1 required")
        if errs:
            raise InvalidConfig("Invalid run configuration: " + "; ".join(errs))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _range(errs: list[str], name: str, v: Any, lo: int, hi: int, *, integer: bool) -> None:
    if v == "auto":
        return
    if not _num(v) or (integer and not float(v).is_integer()) or not lo <= v <= hi:
        kind = "an integer" if integer else "a number"
        errs.append(f"{name}: must be {kind} in {lo}..{hi} or 'auto', got {v!r}")


def _coerce(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None,
                dotted: list[str] | None = None) -> TrainConfig:
    """Build a ``TrainConfig`` from a YAML file, then keyword overrides, then ``a.b=c`` strings."""
    import yaml

    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise InvalidConfig(f"Config file {path} does not exist.")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InvalidConfig(f"Config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidConfig(f"Config file {path} must be a mapping of option: value.")
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    for item in dotted or []:
        if "=" not in item:
            raise InvalidConfig(f"Override '{item}' must look like key=value (e.g. lora.r=8).")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _coerce(raw)
    return from_dict(data).check()


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """A ``TrainConfig`` from plain data; unknown keys are errors, all reported at once."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    lora = data.get("lora") or {}
    lora_names = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown += [f"lora.{k}" for k in sorted(set(lora) - lora_names)] if isinstance(lora, dict) else []
    if unknown:
        raise InvalidConfig(f"Unknown config option(s): {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(names))}")
    kwargs = {k: v for k, v in data.items() if k != "lora"}
    return TrainConfig(**kwargs, lora=LoraConfig(**lora) if isinstance(lora, dict) else lora)
