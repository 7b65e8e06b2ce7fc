"""TRL's GRPOTrainer and align's GRPOTrainer side by side: same model, data, rewards and settings.

    python benchmarks/grpo_vs_trl.py                      # embedded SmolLM2-135M-Instruct, CPU
    python benchmarks/grpo_vs_trl.py --steps 8 --max_new_tokens 64 --beta 0

Each trainer runs in its own subprocess, one after the other (never concurrently: they would share the
cores), so peak resident memory is each process's own. Reported per trainer: seconds per step (the first
step is warm-up and left out), completion tokens per second, peak RSS; then the ratios align / TRL.
Settings follow FACTS.md's reference run: 2 prompts x 4 generations per step (batch 8), 48 new tokens,
beta 0.04, lr 1e-5, fp32.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _common(args: argparse.Namespace) -> dict:
    return {
        "steps": args.steps,
        "batch": args.batch,
        "num_generations": args.num_generations,
        "max_new_tokens": args.max_new_tokens,
        "beta": args.beta,
        "lr": args.lr,
        "seed": args.seed,
    }


def _dataset():
    from align.data import load_math_dataset

    ds = load_math_dataset(None, "train")
    return ds.select_columns(["prompt", "answer"])


def run_trl(args: argparse.Namespace, out: Path) -> dict:
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from align.models import load_causal_lm, load_tokenizer
    from align.rewards import math_reward

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            now = time.perf_counter()
            self.times.append(now - self.t)
            self.t = now

    tok = load_tokenizer(None)
    model = load_causal_lm(None, dtype="float32")
    cfg = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        num_generations=args.num_generations,
        max_completion_length=args.max_new_tokens,
        beta=args.beta,
        learning_rate=args.lr,
        max_steps=args.steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        temperature=1.0,
        disable_tqdm=True,
    )
    timer = Timer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[math_reward],
        args=cfg,
        train_dataset=_dataset(),
        processing_class=tok,
        callbacks=[timer],
    )
    timer.t = time.perf_counter()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    tokens = [h["completions/mean_length"] * args.batch for h in logs]
    rewards = [h.get("reward", float("nan")) for h in logs]
    return {"step_seconds": timer.times, "completion_tokens": tokens, "rewards": rewards}


def run_align(args: argparse.Namespace, out: Path) -> dict:
    from align.config import parse_config
    from align.models import load_causal_lm, load_tokenizer
    from align.rewards import math_reward
    from align.trainer import read_metrics
    from align.trainers.grpo import GRPOConfig, GRPOTrainer

    cfg = parse_config(
        GRPOConfig,
        [
            "--output_dir", str(out), "--per_device_train_batch_size", str(args.batch),
            "--num_generations", str(args.num_generations), "--max_new_tokens", str(args.max_new_tokens),
            "--beta", str(args.beta), "--learning_rate", str(args.lr), "--max_steps", str(args.steps),
            "--seed", str(args.seed), "--disable_progress_bar", "true", "--dtype", "float32",
            "--log_completions", "0", "--temperature", "1.0",
        ],
    )  # fmt: skip
    tok = load_tokenizer(None)
    model = load_causal_lm(None, dtype="float32")
    trainer = GRPOTrainer(cfg, model, tok, [math_reward], _dataset())
    trainer.train()
    rows = read_metrics(out)
    return {
        "step_seconds": [r["time/step_seconds"] for r in rows],
        "completion_tokens": [r["completions/tokens"] for r in rows],
        "rewards": [r.get("reward/mean", float("nan")) for r in rows],
    }


def _worker(which: str, args: argparse.Namespace) -> None:
    import tempfile

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(tempfile.mkdtemp(prefix=f"bench_{which}_"))
    t0 = time.perf_counter()
    res = (run_trl if which == "trl" else run_align)(args, out / "run")
    res["total_seconds"] = time.perf_counter() - t0
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print("RESULT " + json.dumps(res))


def _summarise(res: dict) -> dict:
    steps = res["step_seconds"][1:] or res["step_seconds"]  # first step is warm-up
    toks = res["completion_tokens"][1:] or res["completion_tokens"]
    sec = sum(steps) / len(steps)
    return {
        "sec_per_step": sec,
        "tokens_per_sec": sum(toks) / sum(steps),
        "peak_rss_gb": res["peak_rss_gb"],
        "mean_reward": sum(res["rewards"]) / max(len(res["rewards"]), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8, help="completions per step (prompts x num_generations)")
    p.add_argument("--num_generations", type=int, default=4)
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch's default)")
    p.add_argument("--only", choices=["trl", "align"], default=None, help="run one side only")
    p.add_argument("--_worker", choices=["trl", "align"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._worker:
        _worker(args._worker, args)
        return

    print(f"settings: {json.dumps(_common(args))}")
    results = {}
    for which in [args.only] if args.only else ["trl", "align"]:
        cmd = [sys.executable, __file__, "--_worker", which] + [
            f"--{k}={v}" for k, v in vars(args).items() if k not in ("only", "_worker") and v is not None
        ]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            sys.exit(f"{which} run failed (exit {proc.returncode})")
        results[which] = _summarise(json.loads(line[len("RESULT ") :]))
        print(f"{which:>6}: {json.dumps({k: round(v, 3) for k, v in results[which].items()})}")
    if len(results) == 2:
        a, t = results["align"], results["trl"]
        print(
            f"ratio align/TRL: throughput {a['tokens_per_sec'] / t['tokens_per_sec']:.2f}x, "
            f"seconds per step {a['sec_per_step'] / t['sec_per_step']:.2f}x, "
            f"peak memory {a['peak_rss_gb'] / t['peak_rss_gb']:.2f}x"
        )


if __name__ == "__main__":
    main()
