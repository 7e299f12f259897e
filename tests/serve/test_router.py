"""Mixed-adapter batches through ``AdapterRouter`` against PEFT's own per-row path.

The adapters differ in rank, scaling and target modules (one has no LoRA on the MLP, one has
a LoRA bias, which the stacked path cannot express and must leave to PEFT), so every branch of
the stacking is exercised. The reference is ``PeftModel(adapter_names=...)``, PEFT's documented
mixed-batch inference, and each row run alone with its adapter active.
"""

from __future__ import annotations

import pytest
import torch

from tunehouse.serve.router import BASE_ADAPTER, AdapterRouter, build_stack, is_plain


def _randomise_b(model, name: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for pname, param in model.named_parameters():
        if f"lora_B.{name}." in pname:
            param.data = torch.randn(param.shape, generator=gen) * 0.3


@pytest.fixture(scope="module")
def peft_model(tiny_model_dir):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    configs = {
        "sales": LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"),
        "legal": LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"]),
        "biased": LoraConfig(r=2, lora_alpha=2, target_modules=["k_proj", "up_proj"],
                             lora_bias=True),
    }
    model = get_peft_model(base, configs["sales"], adapter_name="sales")
    for name, cfg in configs.items():
        if name != "sales":
            model.add_adapter(name, cfg)
    for seed, name in enumerate(configs):
        _randomise_b(model, name, seed)
    assert isinstance(model, PeftModel)
    return model.eval()


def _inputs(rows: int, length: int = 7) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(rows)
    ids = torch.randint(3, 200, (rows, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row, as in the engine's batches
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize(("rows", "stacked"), [
    # hooked layers: q, v, o, gate, down of 2 blocks; k_proj and up_proj carry the adapter
    # with a LoRA bias, so they keep PEFT's path for every batch
    (["sales", "legal", BASE_ADAPTER, "legal", "sales"], 10),
    (["sales", "biased", "legal", BASE_ADAPTER], 10),
    ([BASE_ADAPTER, "legal"], 6),  # legal: q, v, o only
    (["sales", "sales"], 10),  # one adapter: no mask
    (["biased", "biased"], 0),
    ([BASE_ADAPTER, BASE_ADAPTER], 0),
])
def test_mixed_batch_matches_peft_adapter_names(peft_model, rows, stacked):
    router = AdapterRouter()
    router.attach(peft_model)
    inputs = _inputs(len(rows))
    try:
        with torch.inference_mode():
            got = router.forward(peft_model, rows, **inputs).logits
        assert router.stacked_layers() == stacked
    finally:
        router.detach()
    with torch.inference_mode():
        want = peft_model(**inputs, adapter_names=rows).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # and the same as every row alone with its adapter active (adapters really differ)
    with torch.inference_mode():
        for i, name in enumerate(rows):
            one = {k: v[i:i + 1] for k, v in inputs.items()}
            if name == BASE_ADAPTER:
                with peft_model.disable_adapter():
                    alone = peft_model(**one).logits
            else:
                peft_model.set_adapter(name)
                alone = peft_model(**one).logits
            torch.testing.assert_close(got[i:i + 1], alone, rtol=1e-4, atol=1e-4)
    if set(rows) - {BASE_ADAPTER} == {"sales", "legal"}:
        assert not torch.allclose(got[rows.index("sales")], got[rows.index("legal")])


def test_stacks_cover_plain_lora_and_leave_bias_layers_to_peft(peft_model):
    from peft.tuners.lora.layer import Linear

    layers = {n.split("base_model.model.")[-1]: m for n, m in peft_model.named_modules()
              if type(m) is Linear}
    q_proj = layers["model.layers.0.self_attn.q_proj"]
    assert is_plain(q_proj)
    assert not is_plain(layers["model.layers.0.self_attn.k_proj"])  # LoRA bias: PEFT's path
    q = build_stack(q_proj, ("legal", "sales"))
    assert q.layout == (("legal", 4), ("sales", 2))
    assert q.a is not None and q.b is not None and q.a.shape[1] == q.b.shape[0] == 6
    assert build_stack(layers["model.layers.0.mlp.down_proj"], ("legal",)).a is None


def test_hooked_model_refuses_calls_around_the_router(peft_model):
    router = AdapterRouter()
    router.attach(peft_model)
    try:
        with torch.inference_mode(), pytest.raises(RuntimeError, match="AdapterRouter.forward"):
            peft_model(**_inputs(1))
    finally:
        router.detach()
    with torch.inference_mode():
        assert peft_model(**_inputs(1)).logits.shape[0] == 1
