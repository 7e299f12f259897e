"""Peak memory (RSS) of a LoRA DPO run vs a supervised run on the same token sequences.

DPO needs a reference model. tunehouse uses the training network itself with the LoRA adapter
disabled and precomputes the reference log-probabilities once, so a DPO run should cost about
what supervised training on the same sequences costs (target: at most 1.3x peak RSS).

"Same sequences": the first ``--pairs`` preference pairs are trained with DPO, batch ``B``;
the supervised run trains on the ``2 x pairs`` chat examples prompt+preferred and
prompt+non-preferred with batch ``2B``, so every step processes the same tokens. Each
measurement runs in a fresh process (``ru_maxrss`` is per process); a third process only loads
the model, to show the fixed cost both runs share.

    python benchmarks/dpo_memory.py                       # embedded model, 16 pairs, 2 steps
    python benchmarks/dpo_memory.py --pairs 64 --batch-size 16 --steps 4
    python benchmarks/dpo_memory.py --model tests-tiny    # a tiny random model (smoke test)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "preference-polite" / "train.jsonl"
TARGET = 1.3


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(mode: str, train_file: str, model: str | None, batch: int, steps: int, out: str
          ) -> None:
    """Run one measurement in this process and print its result as one JSON line."""
    from tunehouse.config import TrainConfig

    t0 = time.perf_counter()
    if mode == "load":
        import torch

        from tunehouse import models
        from tunehouse.train.model import use_bf16

        dtype = torch.bfloat16 if use_bf16("auto", "cpu") else torch.float32
        models.load_model(models.resolve(model), dtype=dtype)
        result = {"steps": 0, "tokens": 0}
    else:
        from tunehouse.train.loop import train

        cfg = TrainConfig(train_file=train_file, model=model, out=out, method=mode,
                          batch_size=batch, epochs=1, max_steps=steps, progress=False)
        res = train(cfg.check())
        result = {"steps": res.steps, "tokens": res.trained_tokens}
    print(json.dumps({"mode": mode, "peak_rss_mib": round(_peak_rss_mib(), 1),
                      "seconds": round(time.perf_counter() - t0, 1), **result}))


def write_files(pairs: int, directory: Path) -> tuple[Path, Path]:
    """The first ``pairs`` preference pairs, and the same sequences as chat examples."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:pairs]]
    prefs = directory / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chats = [{"messages": r["input"]["messages"] + r[key]} for r in rows
             for key in ("preferred_output", "non_preferred_output")]
    sft = directory / "sft.jsonl"
    sft.write_text("".join(json.dumps(c) + "\n" for c in chats))
    return prefs, sft


def _run(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model (default: embedded); 'tests-tiny' "
                    "builds a tiny random Llama")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8, help="DPO pairs per step")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child", nargs=5, metavar=("MODE", "FILE", "MODEL", "BATCH", "OUT"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, file, model, batch, out = a.child
        child(mode, file, None if model == "-" else model, int(batch), a.steps, out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = a.model
        if model == "tests-tiny":
            from tunehouse.models.tiny import save_tiny_model

            model = str(save_tiny_model(work / "tiny"))
        prefs, sft = write_files(a.pairs, work)
        m = model or "-"
        load = _run(["--child", "load", "-", m, "0", "-"])
        runs = {
            "supervised": _run(["--steps", str(a.steps), "--child", "supervised", str(sft), m,
                                str(2 * a.batch_size), str(work / "sft-run")]),
            "dpo": _run(["--steps", str(a.steps), "--child", "dpo", str(prefs), m,
                         str(a.batch_size), str(work / "dpo-run")]),
        }
    print(f"model {a.model or 'embedded default'}: {a.pairs} pairs, DPO batch {a.batch_size} "
          f"(supervised batch {2 * a.batch_size}), {a.steps} steps")
    print(f"  load model only   peak RSS {load['peak_rss_mib']:8.1f} MiB")
    for name, r in runs.items():
        print(f"  {name:<17} peak RSS {r['peak_rss_mib']:8.1f} MiB  ({r['steps']} steps, "
              f"{r['tokens']} tokens, {r['seconds']} s)")
    ratio = runs["dpo"]["peak_rss_mib"] / runs["supervised"]["peak_rss_mib"]
    above = [r["peak_rss_mib"] - load["peak_rss_mib"] for r in runs.values()]
    print(f"  DPO / supervised peak RSS: {ratio:.2f}x (target <= {TARGET}x); above the loaded "
          f"model: supervised {above[0]:.0f} MiB, DPO {above[1]:.0f} MiB")
    sys.exit(0 if ratio <= TARGET else 1)


if __name__ == "__main__":
    main()
