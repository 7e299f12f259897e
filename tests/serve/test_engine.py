"""The inference engine on a tiny random Llama with two random LoRA adapters.

Every greedy answer is checked against what a plain merged model (``merge_and_unload``)
generates with ``transformers``' own ``generate`` for the same prompt, so batching, padding,
KV-cache surgery and adapter routing are all held to an independent reference.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tunehouse import models
from tunehouse.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound
from tunehouse.serve import Engine
from tunehouse.serve.sampling import TextTracker, choose_tokens, make_generator

PROMPTS = [
    [{"role": "user", "content": "hello there"}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "A much longer question, to make the prompts differ in length?"}],
]
MAX = 12


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter on ``base_dir`` with random B weights, saved like a training output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunehouse.models.tiny import build_tokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=gen) * 0.5
    peft_model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    (out / "tunehouse.json").write_text(json.dumps({"base_model": str(base_dir)}))
    return out


@pytest.fixture(scope="module")
def dirs(tiny_model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"base": tiny_model_dir, "a": make_adapter(tiny_model_dir, root / "a", 1),
            "b": make_adapter(tiny_model_dir, root / "b", 2)}


@pytest.fixture(scope="module")
def engine(dirs):
    threads = torch.get_num_threads()
    # float32: answers are compared with float32 merged models token for token
    eng = Engine(str(dirs["base"]), dtype="float32", threads=1)  # tiny matmuls: one thread
    eng.register("ft:tiny:a", str(dirs["a"]))
    eng.register("ft:tiny:b", str(dirs["b"]))
    yield eng
    eng.close()
    torch.set_num_threads(threads)


def model_ids(engine: Engine) -> list[str]:
    return [engine.base_model_id, "ft:tiny:a", "ft:tiny:b"]


def reference_greedy(path: Path, messages: list[dict], max_new: int) -> str:
    """Greedy text from a merged model and ``transformers.generate`` (no engine code)."""
    from tunehouse.data.tokenize import encode_prompt

    source = models.resolve(str(path))
    model = models.load_model(source, merge_adapter=True).eval()
    tok = models.load_tokenizer(source)
    ids = torch.tensor([encode_prompt(tok, messages)])
    stops = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                             do_sample=False, eos_token_id=stops, pad_token_id=stops[1])
    new = out[0, ids.shape[1]:].tolist()
    new = new[:next((i for i, t in enumerate(new) if t in stops), len(new))]
    return tok.decode(new, skip_special_tokens=True)


@pytest.fixture(scope="module")
def references(dirs, engine) -> dict[tuple[str, int], str]:
    paths = dict(zip(model_ids(engine), [dirs["base"], dirs["a"], dirs["b"]], strict=True))
    return {(m, i): reference_greedy(paths[m], p, MAX)
            for m in paths for i, p in enumerate(PROMPTS)}


def test_adapters_differ_and_match_merged_models_in_one_batch(engine, references):
    # all six requests are queued at once, so they share batches across adapters
    streams = {(m, i): engine.stream(m, p, temperature=0, max_tokens=MAX)
               for m in model_ids(engine) for i, p in enumerate(PROMPTS)}
    texts = {k: "".join(d.text for d in s) for k, s in streams.items()}
    assert texts == references
    for i in range(len(PROMPTS)):
        assert len({texts[(m, i)] for m in model_ids(engine)}) == 3  # adapters change outputs


def test_twenty_threads_over_two_adapters_and_base(engine, references):
    jobs = [(model_ids(engine)[k % 3], k % len(PROMPTS)) for k in range(20)]

    def ask(job: tuple[str, int]) -> str:
        m, i = job
        return engine.chat(m, PROMPTS[i], temperature=0, max_tokens=MAX).choices[0].text

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, jobs))
    assert answers == [references[j] for j in jobs]


def test_stream_deltas_concatenate_to_chat_text(engine):
    chat = engine.chat("ft:tiny:a", PROMPTS[1], temperature=0, max_tokens=20)
    deltas = list(engine.stream("ft:tiny:a", PROMPTS[1], temperature=0, max_tokens=20))
    assert "".join(d.text for d in deltas) == chat.choices[0].text
    assert [d.finish_reason for d in deltas][-1] == chat.choices[0].finish_reason == "length"
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert chat.completion_tokens == chat.choices[0].completion_tokens == 20
    assert chat.prompt_tokens == engine.count_prompt_tokens("ft:tiny:a", PROMPTS[1])


def test_stop_string_spanning_tokens_is_cut_and_never_streamed(engine, references):
    # The first adapter answer with two whole characters after its first one: a random-init
    # byte model may emit invalid UTF-8 (U+FFFD), which no stop string can match.
    model, i, at = next((m, i, at) for m in ("ft:tiny:b", "ft:tiny:a") for i in range(len(PROMPTS))
                        for at in range(1, len(references[(m, i)]) - 1)
                        if "\ufffd" not in references[(m, i)][at:at + 2])
    full = references[(model, i)]
    stop = full[at:at + 2]  # two byte-tokens: the match spans a token boundary
    want = full[:full.find(stop)]
    result = engine.chat(model, PROMPTS[i], temperature=0, max_tokens=MAX,
                         stop=["never-there", stop])
    assert (result.choices[0].text, result.choices[0].finish_reason) == (want, "stop")
    deltas = list(engine.stream(model, PROMPTS[i], temperature=0, max_tokens=MAX,
                                stop=stop))
    assert "".join(d.text for d in deltas) == want
    assert deltas[-1].finish_reason == "stop"


def test_seed_reproduces_samples_and_n_gives_independent_choices(engine):
    def sample(seed: int) -> list[str]:
        result = engine.chat("ft:tiny:a", PROMPTS[0], temperature=1.0, top_p=0.9, n=3,
                             seed=seed, max_tokens=16)
        assert [c.index for c in result.choices] == [0, 1, 2]
        assert result.completion_tokens == sum(c.completion_tokens for c in result.choices)
        return [c.text for c in result.choices]

    first = sample(7)
    assert sample(7) == first
    assert len(set(first)) == 3
    assert sample(8) != first


def test_finish_length_and_default_max_tokens(engine):
    assert engine.context_length("ft:tiny:a") == 512
    result = engine.chat(engine.base_model_id, PROMPTS[0], temperature=0, max_tokens=3)
    assert result.choices[0].finish_reason == "length"
    assert result.completion_tokens == 3


def test_context_length_exceeded_uses_openai_wording(engine):
    prompt = engine.count_prompt_tokens("ft:tiny:a", PROMPTS[0])
    with pytest.raises(ContextLengthExceeded) as err:
        engine.chat("ft:tiny:a", PROMPTS[0], max_tokens=500)
    assert str(err.value) == (
        f"This model's maximum context length is 512 tokens. However, you requested "
        f"{prompt + 500} tokens ({prompt} in the messages, 500 in the completion). "
        "Please reduce the length of the messages or completion.")
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(ContextLengthExceeded, match="resulted in 6[0-9][0-9] tokens"):
        engine.chat("ft:tiny:a", [{"role": "user", "content": "x" * 600}])


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": float("inf")}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 129}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [1]}, "stop"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"seed": "x"}, "seed"),
])
def test_out_of_range_parameters_name_the_param(engine, kwargs, param):
    with pytest.raises(InvalidRequest) as err:
        engine.chat("ft:tiny:a", PROMPTS[0], **kwargs)
    assert err.value.param == param
    assert param in str(err.value)


def test_unknown_model_bad_messages_and_unregister(engine, dirs):
    with pytest.raises(ModelNotFound, match="'ft:nope' does not exist"):
        engine.chat("ft:nope", PROMPTS[0])
    with pytest.raises(InvalidRequest) as err:
        engine.chat("ft:tiny:a", [])
    assert err.value.param == "messages"
    with pytest.raises(ModelNotFound):
        engine.register("ft:x", str(dirs["a"] / "missing"))
    engine.register("ft:tiny:tmp", str(dirs["a"]))
    assert engine.unregister("ft:tiny:tmp") is True
    with pytest.raises(ModelNotFound):
        engine.count_prompt_tokens("ft:tiny:tmp", PROMPTS[0])


def test_async_streams_share_one_event_loop(engine, references):
    async def text(model: str, i: int) -> str:
        stream = engine.stream(model, PROMPTS[i], temperature=0, max_tokens=MAX)
        return "".join([d.text async for d in stream])

    async def all_texts() -> dict[tuple[str, int], str]:
        jobs = [(m, i) for m in model_ids(engine) for i in range(len(PROMPTS))] * 2
        texts = await asyncio.gather(*(text(m, i) for m, i in jobs))
        assert texts[:len(texts) // 2] == texts[len(texts) // 2:]
        return dict(zip(jobs, texts, strict=True))

    assert asyncio.run(all_texts()) == references


def test_closing_a_stream_cancels_it(engine):
    stream = engine.stream("ft:tiny:a", PROMPTS[0], temperature=0, max_tokens=400)
    next(iter(stream))
    stream.close()
    started = time.monotonic()
    assert engine.chat("ft:tiny:b", PROMPTS[0], temperature=0, max_tokens=2).completion_tokens == 2
    assert time.monotonic() - started < 20


def test_lru_evicts_adapters_and_full_models_are_served(dirs, references, tmp_path):
    full = models.load_model(models.resolve(str(dirs["a"])), merge_adapter=True)
    full.save_pretrained(tmp_path / "full")
    models.load_tokenizer(models.resolve(str(dirs["a"]))).save_pretrained(tmp_path / "full")
    with Engine(str(dirs["base"]), dtype="float32", max_adapters=1, threads=1) as eng:
        eng.register("a", str(dirs["a"]))
        eng.register("b", str(dirs["b"]))
        eng.register("full-a", str(tmp_path / "full"))
        for name, ref in [("a", "ft:tiny:a"), ("b", "ft:tiny:b"), ("a", "ft:tiny:a"),
                          ("full-a", "ft:tiny:a")]:
            text = eng.chat(name, PROMPTS[0], temperature=0, max_tokens=MAX).choices[0].text
            assert text == references[(ref, 0)], name
            assert len(eng.loaded_adapters()) == 1
        assert eng.loaded_adapters()[0].startswith(str(dirs["a"].resolve()))


def test_engine_on_an_adapter_dir_loads_its_base(dirs, references):
    with Engine(str(dirs["b"]), dtype="float32", threads=1) as eng:
        assert eng.base_model_id == str(dirs["base"])
        text = eng.chat(str(dirs["b"]), PROMPTS[0], temperature=0, max_tokens=MAX)
        assert text.choices[0].text == references[("ft:tiny:b", 0)]


def test_text_tracker_never_splits_utf8_and_holds_back_stop_prefixes(tiny_tokenizer):
    text = "héllo wörld € ok"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # multi-byte characters span several tokens
    tracker = TextTracker(tiny_tokenizer)
    deltas = [tracker.push(i) for i in ids] + [tracker.finish()]
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)
    tracker = TextTracker(tiny_tokenizer, stop=["o w"])
    deltas = [tracker.push(i) for i in ids]
    assert "".join(deltas) + tracker.finish() == "héll"
    assert tracker.stopped


def test_choose_tokens_greedy_top_p_and_seeded():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 1.9, -5.0]])
    gens = [make_generator(1, 0), make_generator(1, 1)]
    assert choose_tokens(logits, [0.0, 0.0], [1.0, 1.0], [None, None]) == [1, 0]
    assert choose_tokens(logits, [1.0, 1.0], [1e-6, 1e-6], gens) == [1, 0]  # top token only
    draws = [choose_tokens(logits, [2.0, 2.0], [1.0, 1.0], [make_generator(5, 0)] * 2)
             for _ in range(2)]
    assert draws[0] == draws[1]


@pytest.mark.integration
def test_embedded_model_knows_the_capital_of_france(monkeypatch):
    from th_support import embedded_home

    monkeypatch.setenv("TUNEHOUSE_HOME", embedded_home())
    with Engine(None) as eng:
        result = eng.chat(eng.base_model_id,
                          [{"role": "user", "content": "What is the capital of France?"}],
                          temperature=0, max_tokens=24)
    assert re.search(r"\bParis\b", result.choices[0].text), result.choices[0].text
