"""One TRL SFTTrainer + peft run of the benchmark job, in its own process (for its peak memory).

    python benchmarks/_trl_run.py --variant a|b --data chats.jsonl --out DIR --result r.json

Variant ``a``: SFTTrainer at its defaults (what a user gets by passing a model and a conversational
data set): fp32 model, bf16 autocast, gradient checkpointing on, right-padded batches, the loss on
every token (system and user turns included), fused AdamW. ``use_cpu=True`` is set on a CPU
because TRL's default ``bf16=True`` refuses to start there without it (the error asks for it).

Variant ``b``: what a knowledgeable user picks on a CPU:
  * base weights loaded in bf16 (``model_init_kwargs``), LoRA adapters stay fp32 (peft's default),
    bf16 autocast: no fp32 copies of the frozen weights;
  * ``gradient_checkpointing=False`` (memory is not the constraint for a 135M model);
  * ``padding_free=True``: the batch is one row, sequences separated by position ids; SDPA then
    builds a block-diagonal causal mask (transformers' ``find_packed_sequence_indices``), so
    examples never attend to each other. TRL requires ``max_length=None`` in this mode; the data
    set is pre-fitted to 1024 tokens, so nothing is lost;
  * ``assistant_only_loss=True`` with SmolLM2's ChatML template plus ``{% generation %}``
    markers (TRL cannot patch this template itself), so the loss and the head run only on the
    assistant's tokens, like tunehouse.
  Not used: ``packing=True`` (rows of 1024 tokens would change the number of examples per step,
  i.e. the job), ``torch_compile`` (recompiles for every new shape on CPU), Liger kernels (Triton,
  GPU only).

Both variants share the job: LoRA r=16, alpha 32, all linear layers, dropout 0, 1 epoch, batch 8,
learning rate 1e-3 with tunehouse's schedule (``lr_at``: 5% linear warm-up, linear decay to 10%),
weight decay 0, gradient clipping 1.0, seed 42. The adapter is saved after timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _bench_data import cpu_seconds, peak_rss_mb, pytorch_cache_defaults, read_jsonl, set_threads  # noqa: E402

# SmolLM2's own template, with the assistant's content and end-of-turn marked as trained.
CHATML_TRAINING = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def sft_config(variant: str, args: argparse.Namespace, workdir: str):
    import torch
    from trl import SFTConfig

    common = dict(output_dir=workdir, per_device_train_batch_size=args.batch_size, num_train_epochs=1,
                  max_steps=args.steps or -1, learning_rate=args.learning_rate, seed=42,
                  save_strategy="no", report_to="none", disable_tqdm=True,
                  use_cpu=not torch.cuda.is_available())  # TRL's default bf16=True demands it on CPU
    if variant == "a":
        return SFTConfig(**common, max_length=args.max_length)
    template = Path(workdir) / "chatml_training.jinja"
    template.write_text(CHATML_TRAINING)
    best = dict(bf16=True, gradient_checkpointing=False, assistant_only_loss=True,
                chat_template_path=str(template), model_init_kwargs={"dtype": torch.bfloat16})
    if args.b_batching == "padding_free":
        return SFTConfig(**common, **best, max_length=None, padding_free=True)
    return SFTConfig(**common, **best, max_length=args.max_length, train_sampling_strategy="group_by_length")


def build_trainer(variant: str, args: argparse.Namespace, workdir: str):
    from datasets import Dataset
    from peft import LoraConfig
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTTrainer

    from tunehouse.train.hparams import lr_at

    pytorch_cache_defaults()

    class Clock(TrainerCallback):
        """Wall time of the training loop: from just before the first step to the last step's end."""

        start = end = None

        def on_train_begin(self, *a, **k):
            self.start, self.cpu_start = time.perf_counter(), cpu_seconds()

        def on_step_end(self, *a, **k):
            self.end, self.cpu_end = time.perf_counter(), cpu_seconds()

    class SameSchedule(SFTTrainer):
        """tunehouse's learning-rate schedule, so every run follows the same one."""

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = LambdaLR(optimizer or self.optimizer,
                                             lambda s: lr_at(s, num_training_steps, 1.0, 0.05))
            return self.lr_scheduler

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")
    data = Dataset.from_list(read_jsonl(args.data))
    tok = AutoTokenizer.from_pretrained(args.model)
    clock = Clock()
    trainer = SameSchedule(model=args.model, args=sft_config(variant, args, workdir), train_dataset=data,
                           processing_class=tok, peft_config=lora, callbacks=[clock])
    return trainer, clock


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=["a", "b"], required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True, help="base model directory")
    p.add_argument("--out", required=True, help="where the trained adapter is written")
    p.add_argument("--result", required=True, help="JSON file for the measurements")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--b-batching", choices=["grouped", "padding_free"], default="grouped")
    args = p.parse_args()
    threads = set_threads()
    t_load = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        trainer, clock = build_trainer(args.variant, args, workdir)
        load_s = time.perf_counter() - t_load
        out = trainer.train()
        train_s = clock.end - clock.start
        rss = peak_rss_mb()
        tokens = int(trainer._total_train_tokens)
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        trainer.model.save_pretrained(args.out)
    result = {"variant": args.variant, "threads": threads, "steps": int(out.global_step),
              "trained_tokens": tokens, "train_seconds": train_s, "tokens_per_second": tokens / train_s,
              "cpu_seconds": clock.cpu_end - clock.cpu_start, "b_batching": args.b_batching,
              "peak_rss_mb": rss, "load_seconds": load_s, "logged_train_losses": losses,
              "adapter": args.out}
    Path(args.result).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
