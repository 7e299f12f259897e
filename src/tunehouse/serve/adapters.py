"""Loaded models: one base model with a bounded LRU of LoRA adapters, plus a few full models.

Every adapter trained on the engine's base model is loaded into the *same* PEFT wrapper
(``PeftModel.from_pretrained`` for the first, ``load_adapter`` for the next) so requests for
different adapters and for the plain base share one batch; ``delete_adapter`` evicts the
least recently used one when ``max_adapters`` is reached. Adapters in use by a running
request are pinned and never evicted. A full fine-tuned model directory, or an adapter that
cannot share the base (another base model, DoRA, a non-LoRA method), is loaded as its own
merged model in a second small LRU.

Model objects are only touched from the scheduler thread; tokenizer look-ups are thread-safe.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tunehouse import models
from tunehouse.errors import InvalidRequest, ModelNotFound, TunehouseError
from tunehouse.models import ModelSource
from tunehouse.serve.attention import use_decode_attention
from tunehouse.serve.packed import pack_linears
from tunehouse.serve.router import BASE_ADAPTER, AdapterRouter

BASE_LANE = "base"
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>",
                      "<end_of_turn>", "<|end|>", "</s>")


@dataclass(frozen=True)
class Target:
    """What a public model id points at, and how it is served.

    ``kind``: ``base`` (the base model itself), ``adapter`` (a LoRA adapter mixed into the
    base's batch) or ``full`` (its own model: full fine-tune or a merged foreign adapter).
    """

    model_id: str
    source: ModelSource
    kind: Literal["base", "adapter", "full"]
    key: str  # cache key: directory (+ weights mtime), so a rewritten directory reloads

    @property
    def lane(self) -> str:
        return BASE_LANE if self.kind != "full" else "full:" + self.key


@dataclass
class TextInfo:
    """Tokenizer-side facts of a target, shared by all requests for it."""

    tokenizer: Any
    lock: threading.Lock  # fast tokenizers are not safe to call from several threads at once
    stop_ids: frozenset[int]
    context_length: int


def plain_forward(model: Any, adapters: list[str], **kwargs: Any) -> Any:
    """Forward for models without adapters (full fine-tunes): every row is ``__base__``."""
    return model(**kwargs)


def resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    """``"auto"``: bf16 on GPUs that support it (else fp16), and on CPUs with native bf16
    instructions (AVX512-BF16 or AMX: ``models.bf16_is_fast``); float32 on other CPUs, where
    bf16 is emulated and slower."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if models.bf16_is_fast("cpu") else torch.float32
    if dtype not in names:
        raise InvalidRequest(f"Unknown dtype '{dtype}'; use auto, {', '.join(names)}.",
                             param="dtype")
    return names[dtype]


def for_serving(model: Any, device: str) -> Any:
    """``model`` with the engine's decode attention and, on CPU, packed linear weights."""
    use_decode_attention(model)
    if device == "cpu":
        pack_linears(model)
    return model


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _weights_key(path: str) -> str:
    """Directory plus the newest weights mtime: a retrained directory gets a new key."""
    real = os.path.realpath(path)
    stamps = [f.stat().st_mtime_ns for f in Path(real).glob("*.safetensors")]
    return f"{real}@{max(stamps, default=0)}"


class ModelStore:
    """The base model, its adapters and any full models, with LRU eviction and pinning."""

    def __init__(self, base: ModelSource, *, device: str, dtype: Any, max_adapters: int,
                 max_full_models: int = 2):
        if max_adapters < 1 or max_full_models < 1:
            raise InvalidRequest("max_adapters and max_full_models must be >= 1.")
        self.device = device
        self.dtype = resolve_dtype(dtype, device)
        self.base_source = base
        self.base_real = os.path.realpath(base.path)
        try:
            self.base_model: Any = for_serving(
                models.load_model(base, dtype=self.dtype, device=device).eval(), device)
        except TunehouseError:
            raise
        except Exception as err:  # unreadable weights, unreachable hub id, ...
            raise ModelNotFound(f"The model '{base.name}' could not be loaded from {base.path}: "
                                f"{type(err).__name__}: {_first_line(err)}") from err
        self.max_adapters = max_adapters
        self.max_full = max_full_models
        self._adapters: OrderedDict[str, str] = OrderedDict()  # key -> PEFT adapter name
        self._full: OrderedDict[str, Any] = OrderedDict()  # key -> model
        self._pins: Counter[str] = Counter()
        self._counter = 0
        self._text: dict[str, TextInfo] = {}
        self._text_lock = threading.Lock()
        self.router = AdapterRouter()

    # ----- classification and text (any thread) -----

    def target(self, model_id: str, source: ModelSource) -> Target:
        """Decide how ``source`` is served: as the base, an adapter on it, or a full model."""
        if source.adapter_of is None:
            if os.path.realpath(source.path) == self.base_real:
                return Target(model_id, source, "base", "base")
            return Target(model_id, source, "full", _weights_key(source.path))
        kind: Literal["adapter", "full"] = "adapter" if self._shares_base(source) else "full"
        return Target(model_id, source, kind, _weights_key(source.path))

    def _shares_base(self, source: ModelSource) -> bool:
        cfg = json.loads(Path(source.path, "adapter_config.json").read_text())
        if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
            return False
        base = models.resolve(source.adapter_of)
        return os.path.realpath(base.path) == self.base_real

    def text_info(self, target: Target) -> TextInfo:
        """Tokenizer (the one saved with the adapter/model: its training chat template),
        end-of-turn token ids and context length; loaded once per directory."""
        with self._text_lock:
            info = self._text.get(target.key)
            if info is None:
                info = self._load_text_info(target)
                self._text[target.key] = info
            return info

    def _load_text_info(self, target: Target) -> TextInfo:
        from transformers import AutoConfig

        tok = models.load_tokenizer(target.source)
        model_dir = target.source.path
        if target.source.adapter_of:
            model_dir = models.resolve(target.source.adapter_of).path
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
        stop = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        vocab = tok.get_vocab()
        stop |= {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
        gen_cfg = Path(model_dir, "generation_config.json")
        if gen_cfg.is_file():
            eos = json.loads(gen_cfg.read_text()).get("eos_token_id")
            stop |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return TextInfo(tok, threading.Lock(), frozenset(stop), models.context_length(config))

    # ----- loading, pinning, eviction (scheduler thread only) -----

    def acquire(self, target: Target) -> tuple[Any, str] | None:
        """Pin ``target``'s weights, loading them if needed: (model, adapter name).

        Returns None when the cache is full of pinned entries (the request has to wait).
        Raises ModelNotFound when the weights cannot be loaded.
        """
        if target.kind == "base":
            return self.base_model, BASE_ADAPTER
        if target.kind == "adapter":
            name = self._adapters.get(target.key)
            if name is None:
                name = self._load_adapter(target)
                if name is None:
                    return None
            self._adapters.move_to_end(target.key)
            self._pins[target.key] += 1
            return self.base_model, name
        model = self._full.get(target.key)
        if model is None:
            model = self._load_full(target)
            if model is None:
                return None
        self._full.move_to_end(target.key)
        self._pins[target.key] += 1
        return model, BASE_ADAPTER

    def release(self, target: Target) -> None:
        """Unpin what ``acquire`` pinned."""
        if target.kind != "base":
            self._pins[target.key] -= 1
            if self._pins[target.key] <= 0:
                del self._pins[target.key]

    def _victim(self, cache: OrderedDict[str, Any], limit: int) -> tuple[bool, str | None]:
        """(room available, key to evict after loading) for an LRU ``cache``."""
        if len(cache) < limit:
            return True, None
        for key in cache:  # least recently used first
            if not self._pins[key]:
                return True, key
        return False, None

    def _load_adapter(self, target: Target) -> str | None:
        from peft import PeftModel

        ok, victim = self._victim(self._adapters, self.max_adapters)
        if not ok:
            return None
        self._counter += 1
        name = f"adapter{self._counter}"
        path = target.source.path
        try:
            if isinstance(self.base_model, PeftModel):
                self.base_model.load_adapter(path, adapter_name=name, is_trainable=False)
            else:
                self.base_model = PeftModel.from_pretrained(
                    self.base_model, path, adapter_name=name, is_trainable=False).eval()
        except Exception as err:  # corrupt or mismatched weights: the request fails, not us
            raise ModelNotFound(f"The model '{target.model_id}' could not be loaded from {path}: "
                                f"{type(err).__name__}: {_first_line(err)}") from err
        self._adapters[target.key] = name
        if victim is not None:
            self.base_model.delete_adapter(self._adapters.pop(victim))
        self.router.attach(self.base_model)
        return name

    def _load_full(self, target: Target) -> Any | None:
        ok, victim = self._victim(self._full, self.max_full)
        if not ok:
            return None
        if victim is not None:  # free memory first: full models are big
            del self._full[victim]
        try:
            model = for_serving(models.load_model(
                target.source, dtype=self.dtype, device=self.device, merge_adapter=True).eval(),
                self.device)
        except Exception as err:
            raise ModelNotFound(f"The model '{target.model_id}' could not be loaded from "
                                f"{target.source.path}: {type(err).__name__}: "
                                f"{_first_line(err)}") from err
        self._full[target.key] = model
        return model

    def full_model(self, lane: str) -> Any:
        """The loaded full model of a ``full:`` lane (pinned while the lane has rows)."""
        return self._full[lane.removeprefix("full:")]

    def loaded_adapters(self) -> list[str]:
        """Keys of the adapters currently loaded, least recently used first (for tests/metrics)."""
        return list(self._adapters)
