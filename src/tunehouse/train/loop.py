"""The one training loop (supervised fine-tuning, LoRA or full).

Per optimiser step: the step's examples (a random batch, see ``data.packing``) are packed back
to back into rows under a token budget (no padding; attention stays inside each example, see
``train.attention``); on a CPU the examples are first split into one group of nearly equal
estimated cost per single-threaded worker (one per core, ``train.parallel``), each group packed
into its own rows, so that the workers finish the step together with few, large rows. Each row
runs forward in bf16 autocast where the hardware has it, the loss is computed only on trained
tokens (``train.model.packed_token_loss``, the head's gradient fused in, ``train.head``) and
normalised by the trained tokens of the whole step; gradients are summed in row order, then
AdamW steps at the scheduled learning rate. Logging, checkpointing and evaluation live in their
own modules; this file only sequences them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunehouse import models
from tunehouse.config import TrainConfig
from tunehouse.data.packing import balanced_split, epoch_batches, pack_groups
from tunehouse.errors import InvalidFile, InvalidRequest
from tunehouse.train import data as tdata
from tunehouse.train.callbacks import TrainCallbacks
from tunehouse.train.hparams import Resolved, lr_at, resolve
from tunehouse.train.model import (
    Packed,
    autocast_context,
    pack,
    packed_token_loss,
    prepare_for_training,
    use_bf16,
    wrap_for_training,
)
from tunehouse.train.outputs import MetricsLog
from tunehouse.train.parallel import MemoryReleaser, StepWorkers, keep_heap_blocks, worker_count
from tunehouse.train.state import RunState, finish_run, restore, save_checkpoint

TOKEN_BUDGET = 2048  # tokens per packed micro-batch on CUDA: bounds activation memory
CPU_ROW_TOKENS = 1024  # tokens per packed row on CPU: few, large rows (each row cost a worker
# about 0.1-0.25 s on top of its tokens, measured; benchmarks/README.md, eleventh revision)


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    total_steps: int
    trained_tokens: int  # non-padding tokens processed (OpenAI's trained_tokens)
    best_step: int | None
    stopped_early: bool
    interrupted: bool
    metrics: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Holds one run's model, data and state; ``run()`` trains to completion or a stop."""

    def __init__(self, cfg: TrainConfig, callbacks: TrainCallbacks):
        self.cfg, self.cb = cfg.check(), callbacks
        self.out = Path(cfg.out)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        for path, param in ((cfg.train_file, "training_file"), (cfg.validation_file, "validation_file")):
            if path and not Path(path).is_file():  # before any slow model loading
                raise InvalidFile(f"{param.replace('_', ' ').capitalize()} {path} does not exist.",
                                  code="file_not_found", param=param)
        self.source = models.resolve(cfg.model)
        self.tokenizer = models.load_tokenizer(self.source)
        self._load_data()
        self.hp: Resolved = resolve(cfg, n_examples=len(self.train_set),
                                    context_length=self.context)
        self.model = self._load_model()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=self.hp.learning_rate, weight_decay=cfg.weight_decay,
                                     betas=(0.9, 0.999), fused=True)
        self.state = RunState()
        self.metrics = MetricsLog(self._prepare_out())
        self.autocast = lambda: autocast_context(cfg.precision, self.device)
        self.workers = StepWorkers(worker_count(self.device, cfg.full, self.hp.batch_size), self,
                                   lambda: self._trainable)
        self._valid_cursor = 0
        self.release_memory = MemoryReleaser()
        if self.device == "cpu":
            keep_heap_blocks()

    # ----- set-up -------------------------------------------------------------------------
    def _load_data(self) -> None:
        cfg = self.cfg
        base = models.resolve(self.source.adapter_of) if self.source.adapter_of else self.source
        self.base_name = base.name
        self.context = _context_of(base.path)
        max_len = self.context if cfg.max_length == "auto" else int(cfg.max_length)
        max_len = min(max_len, 2048) if cfg.max_length == "auto" else max_len
        tdata.check_files(cfg.train_file, cfg.validation_file, self.tokenizer, max_len, cfg.method)
        train_recs = tdata.read_records(cfg.train_file)
        valid_recs: list[dict[str, Any]] = []
        if cfg.validation_file:
            valid_recs = tdata.read_records(cfg.validation_file)
        elif cfg.validation_split > 0:
            train_recs, valid_recs = tdata.split(train_recs, cfg.validation_split, cfg.seed)
        self.train_set = self._encode(train_recs, max_len)
        self.valid_set = self._encode(valid_recs, max_len)
        if not self.train_set:
            raise InvalidRequest("No training example has assistant tokens to learn from.",
                                 param="training_file")

    def _encode(self, records: list[dict[str, Any]], max_len: int) -> list[Any]:
        """Records -> training examples (a ``.length`` each); ``DpoTrainer`` encodes pairs."""
        return tdata.encode_records(records, self.tokenizer, max_len)

    def _load_model(self) -> Any:
        torch.manual_seed(self.cfg.seed)
        # LoRA: frozen base weights stay in bf16 where bf16 matmuls are fast (no per-step casts),
        # the adapters train in fp32. Full fine-tuning keeps fp32 master weights under autocast.
        dtype = torch.float32
        if not self.cfg.full and use_bf16(self.cfg.precision, self.device):
            dtype = torch.bfloat16
        if self.source.adapter_of:  # continue training an existing adapter
            from peft import PeftModel

            base = models.load_model(models.resolve(self.source.adapter_of), device=self.device,
                                     dtype=dtype)
            model = PeftModel.from_pretrained(base, self.source.path, is_trainable=True)
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        else:
            base = models.load_model(self.source, device=self.device, dtype=dtype)
            model = wrap_for_training(base, self.cfg)
        return prepare_for_training(model).train()

    def _prepare_out(self) -> Path:
        ckpts = self.out / "checkpoints"
        if not self.cfg.resume and ckpts.is_dir() and any(ckpts.iterdir()):
            raise InvalidRequest(f"Output directory {self.out} already holds a run; pass --resume "
                                 "to continue it or choose another --out.", param="out")
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out

    # ----- training -------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            self.workers.close()

    def _run(self) -> TrainResult:
        if self.cfg.resume:
            restore(self)
        self.cb.on_message("info", f"Training {self.base_name} on {len(self.train_set)} examples "
                           f"for {self.hp.total_steps} steps ({self.hp.n_epochs} epochs, batch "
                           f"{self.hp.batch_size}, lr {self.hp.learning_rate:g}).")
        lengths = [e.length for e in self.train_set]
        st = self.state
        while st.step < self.hp.total_steps and not st.stopped_early:
            batches = epoch_batches(lengths, self.hp.batch_size, seed=self.cfg.seed, epoch=st.epoch,
                                    group=1)
            for b in range(st.step_in_epoch, len(batches)):
                if self.cb.should_stop():
                    save_checkpoint(self, epoch_end=False)
                    st.interrupted = True
                    return self._result()
                row = self._step(batches[b])
                st.step_in_epoch = b + 1
                epoch_end = st.step_in_epoch == len(batches)
                if epoch_end and self.valid_set:
                    row.update(self._full_validation())
                self.metrics.append(row)
                self.cb.on_metrics(row)
                if epoch_end or st.step % self.hp.save_every == 0 or st.step >= self.hp.total_steps:
                    save_checkpoint(self, epoch_end=epoch_end)
                if st.step >= self.hp.total_steps or st.stopped_early:
                    break
            else:
                st.epoch, st.step_in_epoch = st.epoch + 1, 0
        finish_run(self)
        return self._result()

    def _step(self, batch: list[int]) -> dict[str, Any]:
        t0 = time.perf_counter()
        st, hp = self.state, self.hp
        lr = lr_at(st.step, hp.total_steps, hp.learning_rate, self.cfg.warmup_ratio)
        for g in self.opt.param_groups:
            g["lr"] = lr
        n_targets = sum(self.train_set[i].n_targets for i in batch)
        rows, groups = self._rows(batch, self.train_set)
        stats = self.workers.gradients("_row_loss", rows, n_targets, groups=groups)
        loss_sum, correct, tokens = (sum(col) for col in zip(*stats))
        torch.nn.utils.clip_grad_norm_(self._trainable, self.cfg.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.release_memory()
        st.step += 1
        st.trained_tokens += tokens
        dt = time.perf_counter() - t0
        row = {"step": st.step, "total_steps": hp.total_steps, "epoch": st.epoch + 1,
               "train_loss": loss_sum / n_targets, "train_mean_token_accuracy": correct / n_targets,
               "learning_rate": lr, "tokens": tokens, "trained_tokens": st.trained_tokens,
               "tokens_per_second": tokens / dt if dt > 0 else None, "step_seconds": dt}
        if self.valid_set and st.step % hp.eval_every == 0:
            row.update(self._valid_batch())
        return row

    def _row_loss(self, packed: Packed, n_targets: int) -> tuple[torch.Tensor, tuple[float, int, int]]:
        """A packed row's loss over the step's ``n_targets`` trained tokens (run by a worker)
        and its summed loss, tokens predicted right and tokens."""
        with self.autocast():
            loss, _, c = packed_token_loss(self.model, packed.to(self.device))
        return loss / n_targets, (float(loss.detach()), c, packed.tokens)

    @property
    def _trainable(self) -> list[torch.Tensor]:
        return [p for g in self.opt.param_groups for p in g["params"]]

    def _rows(self, idx: list[int], examples: list[Any]) -> tuple[list[Packed], list[int]]:
        """Examples ``idx`` packed into rows under the token budget, and each row's group.

        On CPU the examples are first split into ``row_groups`` sets of nearly equal estimated
        cost (``balanced_split``), one per worker, so that the workers finish the step together;
        each set is packed into rows on its own, largest first. Rows are listed round-robin over
        the groups (the order their gradients are summed in), so they arrive nearly in order."""
        lengths = [examples[i].length for i in idx]  # this step's only, not the whole set's
        costs = [example_cost(examples[i].length, examples[i].n_targets) for i in idx]
        n_groups = 1 if self.device.startswith("cuda") else self.row_groups
        grouped = []
        for members in balanced_split(costs, n_groups):
            rows = pack_groups(members, lengths, self.token_budget)
            grouped.append(sorted(rows, key=lambda r: (-sum(costs[j] for j in r), r)))
        order = [(rank, g) for g, rows in enumerate(grouped) for rank in range(len(rows))]
        picked = [(g, grouped[g][rank]) for rank, g in sorted(order)]
        packed = [pack([(examples[idx[j]].input_ids, examples[idx[j]].labels) for j in row])
                  for _, row in picked]
        return packed, [g for g, _ in picked]

    @property
    def row_groups(self) -> int:
        """Groups a CPU step's examples are split into: one per worker, and two for one worker,
        so that one or two workers compute the same rows (and, summed in row order, the same
        gradients)."""
        return max(2, self.workers.n)

    @property
    def token_budget(self) -> int:
        """Tokens per packed row (on CPU the same for any number of workers)."""
        return TOKEN_BUDGET if self.device.startswith("cuda") else CPU_ROW_TOKENS

    # ----- validation -----------------------------------------------------------------------
    def _row_valid(self, packed: Packed) -> tuple[float, int, int]:
        """A validation row's summed loss, trained tokens and tokens predicted right (run by a
        worker, in evaluation mode there)."""
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                loss, n, c = packed_token_loss(self.model, packed.to(self.device))
        finally:
            self.model.train()
        return float(loss), n, c

    def _loss_over(self, idx: list[int]) -> tuple[float, float]:
        rows, groups = self._rows(idx, self.valid_set)
        stats = self.workers.map("_row_valid", rows, groups=groups)
        total, n_all, c_all = (sum(col) for col in zip(*stats))
        return total / max(1, n_all), c_all / max(1, n_all)

    def _valid_batch(self) -> dict[str, float]:
        k = min(len(self.valid_set), self.hp.batch_size)
        idx = [(self._valid_cursor + j) % len(self.valid_set) for j in range(k)]
        self._valid_cursor = (self._valid_cursor + k) % len(self.valid_set)
        loss, acc = self._loss_over(idx)
        return {"valid_loss": loss, "valid_mean_token_accuracy": acc}

    def _full_validation(self) -> dict[str, float]:
        loss, acc = self._loss_over(list(range(len(self.valid_set))))
        st = self.state
        if st.best_loss is None or loss < st.best_loss - 1e-6:
            st.best_loss, st.best_step, st.bad_epochs = loss, st.step, 0
        else:
            st.bad_epochs += 1
            if self.cfg.patience and st.bad_epochs >= self.cfg.patience:
                st.stopped_early = True
                self.cb.on_message("info", f"Early stopping at step {st.step}: full validation "
                                   f"loss has not improved for {st.bad_epochs} epoch(s); best "
                                   f"{st.best_loss:.4f} at step {st.best_step}.")
        return {"full_valid_loss": loss, "full_valid_mean_token_accuracy": acc}

    def _result(self) -> TrainResult:
        st = self.state
        return TrainResult(out_dir=str(self.out), steps=st.step, total_steps=self.hp.total_steps,
                           trained_tokens=st.trained_tokens, best_step=st.best_step,
                           stopped_early=st.stopped_early, interrupted=st.interrupted,
                           metrics=self.metrics.rows[-1] if self.metrics.rows else {})


def example_cost(length: int, targets: int) -> float:
    """An example's estimated share of a step's compute, in tokens: its tokens, attention's
    quadratic term and the vocabulary head on its trained tokens (fitted to one-thread timings
    of single- and multi-example rows on a 2-core CPU; ``benchmarks/README.md``)."""
    return length * (1 + length / 2048) + targets / 3


def _context_of(path: str) -> int:
    import json

    cfg_path = Path(path) / "config.json"
    if cfg_path.is_file():
        value = json.loads(cfg_path.read_text()).get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def train(cfg: TrainConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.train_file`` and write ``cfg.out`` (see module doc).

    Raises:
        InvalidFile: the training or validation file fails validation (line-exact message).
        InvalidConfig / InvalidRequest: bad options, or ``out`` holds a run and not ``resume``.
        ModelNotFound: ``cfg.model`` cannot be resolved.
    """
    trainer_cls: type[Trainer] = Trainer
    if cfg.method == "dpo":  # preference pairs: same loop, DPO step (imported late: it subclasses)
        from tunehouse.train.dpo_trainer import DpoTrainer

        trainer_cls = DpoTrainer
    result = trainer_cls(cfg, callbacks or TrainCallbacks()).run()
    if not math.isfinite(result.metrics.get("train_loss", 0.0) or 0.0):
        raise InvalidRequest("Training diverged (loss is not finite); lower the learning rate.",
                             param="learning_rate_multiplier")
    return result
