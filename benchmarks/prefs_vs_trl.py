"""TRL's SFTTrainer, RewardTrainer and DPOTrainer against align's, side by side: same model, data, settings.

    python benchmarks/prefs_vs_trl.py                          # all three, embedded SmolLM2-135M, CPU, fp32
    python benchmarks/prefs_vs_trl.py --pipelines dpo --steps 8 --batch 4
    python benchmarks/prefs_vs_trl.py --lora                   # LoRA r=16 on all linear layers instead

Each run is its own subprocess, one after the other (never two at once: they would share the cores), so
the peak resident memory is each trainer's own (model, optimizer, reference, activations). Reported per
trainer: seconds per step and tokens per second (the first step is warm-up and left out; tokens are the
non-padding tokens of every row the step processed, as TRL counts them in ``num_tokens``), and peak RSS;
then the ratios align / TRL (throughput > 1 and memory < 1 favour align).

Each epoch is exactly one batch (the first ``--batch`` rows), so every step of either trainer processes the
same rows padded to the same shape, whatever order the two samplers draw them in: the timings and peak
memory compare implementations, not data orders. Settings shared by both sides: the shipped data (data/sft
as single-turn prompt/completion pairs, since TRL 1.16 cannot mask assistant turns of SmolLM2's chat
template; data/prefs pairs), batch size, max_length, learning rate, torch's fused AdamW, no gradient
checkpointing (TRL 1.16 turns it on by default; ``--gradient_checkpointing`` turns it on for both), no
warm-up, no evaluation, no checkpoints, fp32 on CPU. DPO: sigmoid loss, beta 0.1, and for full fine-tuning
a frozen reference copy on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("sft", "rm", "dpo")


def _sft_rows(n: int) -> list[dict]:
    from align.chat_data import load_rows

    rows = []
    for r in load_rows(None, "train", default="sft"):
        m = r["messages"]
        if len(m) == 2:
            rows.append({"prompt": [m[0]], "completion": [m[1]]})
        if len(rows) == n:
            break
    return rows


def _pref_rows(n: int) -> list[dict]:
    from align.chat_data import load_rows

    return [
        {k: r[k] for k in ("prompt", "chosen", "rejected")}
        for r in load_rows(None, "train", default="prefs", limit=n)
    ]


def _model(args: argparse.Namespace, tokenizer):
    from align.models import apply_lora, load_causal_lm, load_sequence_classifier

    if args.pipeline == "rm":
        model = load_sequence_classifier(args.model, dtype="float32", pad_token_id=tokenizer.pad_token_id)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        return apply_lora(model, task_type="SEQ_CLS") if args.lora else model
    model = load_causal_lm(args.model, dtype="float32", gradient_checkpointing=args.gradient_checkpointing)
    return apply_lora(model) if args.lora else model


# --------------------------------------------------------------------------------------------------
# TRL
# --------------------------------------------------------------------------------------------------


def run_trl(args: argparse.Namespace, out: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback

    from align.models import load_tokenizer

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t = time.perf_counter()

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)

    tok = load_tokenizer(args.model, padding_side="right")
    common = dict(
        output_dir=str(out), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        learning_rate=args.lr, max_steps=args.steps, logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=True, bf16=False, seed=args.seed, disable_tqdm=True, lr_scheduler_type="constant",
        max_length=args.max_length, dataloader_drop_last=False, max_grad_norm=1.0,
        # Both sides use torch's fused AdamW (TRL's default optim, and align's SFT/RM/DPO trainers). TRL 1.16
        # turns gradient checkpointing on by default; align only when asked: the same setting on both sides.
        optim="adamw_torch_fused", gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )  # fmt: skip
    n = args.batch  # one batch per epoch: every step runs the same rows (same shapes) on both sides
    model = _model(args, tok)
    timer = Timer()
    if args.pipeline == "sft":
        from trl import SFTConfig, SFTTrainer

        cfg = SFTConfig(**common, completion_only_loss=True, packing=False)
        trainer = SFTTrainer(
            model=model, args=cfg, train_dataset=Dataset.from_list(_sft_rows(n)), processing_class=tok,
            callbacks=[timer],
        )  # fmt: skip
    elif args.pipeline == "rm":
        from trl import RewardConfig, RewardTrainer

        cfg = RewardConfig(**common)
        trainer = RewardTrainer(
            model=model, args=cfg, train_dataset=Dataset.from_list(_pref_rows(n)), processing_class=tok,
            callbacks=[timer],
        )  # fmt: skip
    else:
        from trl import DPOConfig, DPOTrainer

        cfg = DPOConfig(**common, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=False)
        trainer = DPOTrainer(
            model=model, args=cfg, train_dataset=Dataset.from_list(_pref_rows(n)), processing_class=tok,
            callbacks=[timer],
        )  # fmt: skip
    trainer.train()
    logs = [h for h in trainer.state.log_history if "num_tokens" in h and "loss" in h]
    cumulative = [h["num_tokens"] for h in logs]
    tokens = [b - a for a, b in zip([0.0, *cumulative[:-1]], cumulative)]
    return {"step_seconds": timer.times, "tokens": tokens, "loss": [h["loss"] for h in logs]}


# --------------------------------------------------------------------------------------------------
# align
# --------------------------------------------------------------------------------------------------


def run_align(args: argparse.Namespace, out: Path) -> dict:
    from align.config import parse_config
    from align.models import load_tokenizer
    from align.trainer import read_metrics

    tok = load_tokenizer(args.model)
    flags = [
        "--output_dir", str(out), "--per_device_train_batch_size", str(args.batch), "--learning_rate", str(args.lr),
        "--max_steps", str(args.steps), "--seed", str(args.seed), "--disable_progress_bar", "true",
        "--dtype", "float32", "--max_length", str(args.max_length), "--lr_scheduler_type", "constant",
        "--max_grad_norm", "1.0",
    ]  # fmt: skip
    n = args.batch
    model = _model(args, tok)
    if args.pipeline == "sft":
        from align.trainers.sft import SFTConfig, SFTTrainer

        trainer = SFTTrainer(parse_config(SFTConfig, flags), model, tok, _sft_rows(n))
    elif args.pipeline == "rm":
        from align.trainers.reward_model import RewardModelConfig, RewardModelTrainer

        trainer = RewardModelTrainer(parse_config(RewardModelConfig, flags), model, tok, _pref_rows(n))
    else:
        from align.trainers.dpo import DPOConfig, DPOTrainer

        trainer = DPOTrainer(parse_config(DPOConfig, [*flags, "--beta", "0.1"]), model, tok, _pref_rows(n))
    trainer.train()
    rows = read_metrics(out)
    return {
        "step_seconds": [r["time/step_seconds"] for r in rows],
        "tokens": [r["train/tokens"] for r in rows],
        "loss": [r["loss"] for r in rows],
    }


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def _worker(which: str, args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(args.seed)
    out = Path(tempfile.mkdtemp(prefix=f"bench_{args.pipeline}_{which}_")) / "run"
    t0 = time.perf_counter()
    res = (run_trl if which == "trl" else run_align)(args, out)
    res["total_seconds"] = time.perf_counter() - t0
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print("RESULT " + json.dumps(res))


def _summarise(res: dict) -> dict:
    steps = res["step_seconds"][1:] or res["step_seconds"]  # the first step is warm-up
    toks = res["tokens"][1:] or res["tokens"]
    return {
        "sec_per_step": sum(steps) / len(steps),
        "tokens_per_sec": sum(toks) / sum(steps),
        "tokens_per_step": sum(toks) / len(toks),
        "peak_rss_gb": res["peak_rss_gb"],
        "first_loss": res["loss"][0] if res["loss"] else float("nan"),
    }


def _run_one(pipeline: str, which: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--_worker", which, "--pipeline", pipeline, "--steps", str(args.steps),
           "--batch", str(args.batch), "--max_length", str(args.max_length), "--lr", str(args.lr),
           "--seed", str(args.seed)]  # fmt: skip
    cmd += ["--lora"] if args.lora else []
    cmd += ["--gradient_checkpointing"] if args.gradient_checkpointing else []
    cmd += ["--model", args.model] if args.model else []
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        sys.exit(f"{pipeline}/{which} run failed (exit {proc.returncode})")
    return _summarise(json.loads(line[len("RESULT ") :]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8, help="examples (SFT) or pairs (RM, DPO) per step")
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="a model path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--lora", action="store_true", help="LoRA (r=16, all linear layers) on both sides")
    p.add_argument(
        "--gradient_checkpointing", action="store_true", help="activation checkpointing on both sides"
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="alternate TRL/align runs this many times; best of each"
    )
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--_worker", choices=["trl", "align"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--pipeline", choices=PIPELINES, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._worker:
        _worker(args._worker, args)
        return

    settings = {
        k: v
        for k, v in vars(args).items()
        if k in ("steps", "batch", "max_length", "lr", "seed", "lora", "model", "gradient_checkpointing")
    }
    print(f"settings: {json.dumps(settings)}; load average before: {os.getloadavg()[0]:.2f}")
    report: dict[str, dict] = {}
    for pipeline in args.pipelines:
        runs: dict[str, list[dict]] = {"trl": [], "align": []}
        for _ in range(args.repeats):
            for which in ("trl", "align"):
                runs[which].append(_run_one(pipeline, which, args))
        best = {w: max(rs, key=lambda r: r["tokens_per_sec"]) for w, rs in runs.items()}
        for which in ("trl", "align"):
            shown = {k: round(v, 3) for k, v in best[which].items()}
            print(f"{pipeline:>4} {which:>6}: {json.dumps(shown)}")
        a, t = best["align"], best["trl"]
        ratios = {
            "throughput": a["tokens_per_sec"] / t["tokens_per_sec"],
            "sec_per_step": a["sec_per_step"] / t["sec_per_step"],
            "peak_memory": a["peak_rss_gb"] / t["peak_rss_gb"],
        }
        print(f"{pipeline:>4} ratio align/TRL: throughput {ratios['throughput']:.2f}x, seconds per step "
              f"{ratios['sec_per_step']:.2f}x, peak memory {ratios['peak_memory']:.2f}x")  # fmt: skip
        report[pipeline] = {"trl": t, "align": a, "ratios": ratios, "all_runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "results": report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
