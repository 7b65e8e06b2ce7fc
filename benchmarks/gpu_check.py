"""A short GPU check: align's GRPO (HF generate and colocated vLLM), SFT and DPO, beside TRL's GRPOTrainer.

    python benchmarks/gpu_check.py --out gpu_check.json           # a CUDA machine, bf16, about 5 minutes
    python benchmarks/gpu_check.py --only grpo-hf trl-hf --steps 8
    python benchmarks/gpu_check.py --dry-run                      # CPU, fp32, tiny sizes: checks the script

Parts (each in its own subprocess, one after the other, so a crash, a hang or an out-of-memory stays in its
part, and each peak of GPU memory is that run's own):

    grpo-hf     align GRPOTrainer, transformers generate                 (recipes/grpo_math.py's trainer)
    grpo-vllm   align GRPOTrainer, generation_backend vllm (colocated)   needs vllm
    trl-hf      TRL GRPOTrainer, transformers generate
    trl-vllm    TRL GRPOTrainer, use_vllm=True, vllm_mode="colocate"     needs vllm
    sft         align SFTTrainer on data/sft                              (recipes/sft.py's trainer)
    dpo         align DPOTrainer on data/prefs, frozen reference copy     (recipes/dpo.py's trainer)

The align parts build their configs with the recipes' own config classes (``parse_config`` on the same
flags a user would pass), load the model with the recipes' ``load_policy_and_tokenizer`` and run the
trainers; no evaluation and no saving, so the time and memory are training's. Precision on a GPU: bf16
weights and bf16 autocast (align ``--dtype bfloat16 --mixed_precision bf16``; TRL: the same bf16 model and
``bf16=True``). GRPO on both sides: the shipped arithmetic (data/math), the math reward, ``--prompts`` x
``--num_generations`` completions per step of at most ``--max_new_tokens`` tokens, beta 0.04, lr 1e-5,
temperature 1, no gradient checkpointing; vLLM with the same ``--vllm_gpu_memory_utilization``.

Reported per part: tokens per second (GRPO: completion tokens sampled per second of step time; SFT/DPO:
non-padding tokens trained on per second), seconds per step (the first step is warm-up and left out when
there are two or more), peak GPU memory (``torch.cuda.max_memory_allocated``, reset at the start; with
colocated vLLM it includes vLLM's KV cache, a fixed share of the card), peak resident memory; and the
ratios align / TRL for the same generation backend (throughput > 1 and memory < 1 favour align). A part
that fails is a table row "failed: <reason>" and the others still run. ``--budget_s`` bounds the whole
check: the cheap parts run first, the vLLM parts last, and a part that would start past the budget is
skipped. The table is printed at the end (markdown), the numbers go to ``--out`` (JSON).

The model is the embedded SmolLM2-135M-Instruct unless ``--model`` names a local directory;
``--random_weights`` keeps that model's architecture and tokenizer but starts from random weights (saved
to a temporary directory so vLLM can load them too): the same shapes, hence the same cost per token, for a
machine that the 540 MB checkpoint cannot reach (completion lengths then differ from the real model's).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("grpo-hf", "grpo-vllm", "trl-hf", "trl-vllm", "sft", "dpo")
VLLM_PARTS = ("grpo-vllm", "trl-vllm")
RUN_ORDER = ("grpo-hf", "sft", "dpo", "trl-hf", "grpo-vllm", "trl-vllm")  # cheap and sure first
RATIOS = {"grpo-hf": "trl-hf", "grpo-vllm": "trl-vllm"}  # align part -> its TRL counterpart
DESCRIPTION = {
    "grpo-hf": "align GRPO, HF generate",
    "grpo-vllm": "align GRPO, vLLM colocated",
    "trl-hf": "TRL GRPO, HF generate",
    "trl-vllm": "TRL GRPO, vLLM colocated",
    "sft": "align SFT",
    "dpo": "align DPO",
}
# (steps, prompts, num_generations, max_new_tokens, batch, max_length) on a GPU and in a dry run
SIZES = {
    "gpu": {
        "steps": 5,
        "prompts": 16,
        "num_generations": 8,
        "max_new_tokens": 256,
        "batch": 16,
        "max_length": 512,
    },
    "dry": {
        "steps": 2,
        "prompts": 2,
        "num_generations": 2,
        "max_new_tokens": 16,
        "batch": 2,
        "max_length": 64,
    },
}
BETA, LR, SEED = 0.04, 1e-5, 0


# --------------------------------------------------------------------------------------------------
# Workers (one part each, in a subprocess)
# --------------------------------------------------------------------------------------------------


def _precision(args: argparse.Namespace) -> tuple[str, str]:
    """(weights dtype, align mixed_precision): bf16 on a GPU, fp32 in a dry run."""
    return ("float32", "no") if args.dry_run else ("bfloat16", "bf16")


def _align_flags(args: argparse.Namespace, out: Path) -> list[str]:
    dtype, mixed = _precision(args)
    flags = [
        "--output_dir", str(out), "--max_steps", str(args.steps), "--seed", str(SEED),
        "--learning_rate", str(LR), "--disable_progress_bar", "true", "--dtype", dtype,
        "--mixed_precision", mixed, "--lr_scheduler_type", "constant",
    ]  # fmt: skip
    return flags + (["--model_name_or_path", args.model] if args.model else [])


def _math_dataset():
    from align.data import load_math_dataset

    return load_math_dataset(None, "train").select_columns(["prompt", "answer"])


def run_align_grpo(args: argparse.Namespace, out: Path, backend: str) -> dict:
    from align.config import parse_config
    from align.recipe_helpers import load_policy_and_tokenizer
    from align.rewards import math_reward
    from align.trainer import read_metrics
    from align.trainers.grpo import GRPOConfig, GRPOTrainer

    flags = _align_flags(args, out) + [
        "--per_device_train_batch_size", str(args.prompts * args.num_generations),
        "--num_generations", str(args.num_generations), "--max_new_tokens", str(args.max_new_tokens),
        "--beta", str(BETA), "--temperature", "1.0", "--log_completions", "0",
        "--generation_backend", backend,
        "--vllm_gpu_memory_utilization", str(args.vllm_gpu_memory_utilization),
    ]  # fmt: skip
    cfg = parse_config(GRPOConfig, flags)
    model, tok = load_policy_and_tokenizer(cfg)
    trainer = GRPOTrainer(cfg, model, tok, [math_reward], _math_dataset())
    trainer.train()
    rows = read_metrics(out)
    return {
        "step_seconds": [r["time/step_seconds"] for r in rows],
        "tokens": [r["completions/tokens"] for r in rows],
    }


def run_trl_grpo(args: argparse.Namespace, out: Path, use_vllm: bool) -> dict:
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from align.models import load_causal_lm, load_tokenizer
    from align.rewards import math_reward

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t = time.perf_counter()

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)

    dtype, _ = _precision(args)
    batch = args.prompts * args.num_generations
    extra = {}
    if use_vllm:
        extra = {
            "use_vllm": True,
            "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": args.vllm_gpu_memory_utilization,
        }
    cfg = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_generations=args.num_generations, max_completion_length=args.max_new_tokens, beta=BETA,
        learning_rate=LR, lr_scheduler_type="constant", max_steps=args.steps, logging_steps=1,
        report_to="none", save_strategy="no", use_cpu=args.dry_run, bf16=not args.dry_run, seed=SEED,
        temperature=1.0, disable_tqdm=True, gradient_checkpointing=False, **extra,
    )  # fmt: skip
    timer = Timer()
    trainer = GRPOTrainer(
        model=load_causal_lm(args.model, dtype=dtype),
        reward_funcs=[math_reward],
        args=cfg,
        train_dataset=_math_dataset(),
        processing_class=load_tokenizer(args.model),
        callbacks=[timer],
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"step_seconds": timer.times, "tokens": [h["completions/mean_length"] * batch for h in logs]}


def run_align_prefs(args: argparse.Namespace, out: Path, pipeline: str) -> dict:
    from align.config import parse_config
    from align.recipe_helpers import load_chat_datasets, load_policy_and_tokenizer
    from align.trainer import read_metrics

    flags = _align_flags(args, out) + [
        "--per_device_train_batch_size", str(args.batch), "--max_length", str(args.max_length),
    ]  # fmt: skip
    if pipeline == "sft":
        from align.trainers.sft import SFTConfig as Config
        from align.trainers.sft import SFTTrainer as Trainer
    else:
        from align.trainers.dpo import DPOConfig as Config
        from align.trainers.dpo import DPOTrainer as Trainer

        flags += ["--beta", "0.1"]
    cfg = parse_config(Config, flags)
    model, tok = load_policy_and_tokenizer(cfg)
    train, _ = load_chat_datasets(cfg, default="sft" if pipeline == "sft" else "prefs")
    Trainer(cfg, model, tok, train).train()
    rows = read_metrics(out)
    return {
        "step_seconds": [r["time/step_seconds"] for r in rows],
        "tokens": [r["train/tokens"] for r in rows],
    }


def _worker(part: str, args: argparse.Namespace) -> None:
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(SEED)
    out = Path(tempfile.mkdtemp(prefix=f"gpu_check_{part}_")) / "run"
    t0 = time.perf_counter()
    if part.startswith("grpo-"):
        res = run_align_grpo(args, out, "hf" if part == "grpo-hf" else "vllm")
    elif part.startswith("trl-"):
        res = run_trl_grpo(args, out, use_vllm=part == "trl-vllm")
    else:
        res = run_align_prefs(args, out, part)
    res["total_seconds"] = time.perf_counter() - t0
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    res["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    if cuda:
        free, total = torch.cuda.mem_get_info()
        res["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024**3
        res["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved() / 1024**3
        res["gpu_used_at_end_gb"] = (total - free) / 1024**3  # also what the torch allocator does not see
    shutil.rmtree(out.parent, ignore_errors=True)
    print("RESULT " + json.dumps(res), flush=True)
    sys.stdout.flush()
    os._exit(0)  # vLLM's engine threads and process groups can hold a normal exit up


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def _summarise(res: dict) -> dict:
    steps = res["step_seconds"][1:] or res["step_seconds"]  # the first step is warm-up
    toks = res["tokens"][1:] or res["tokens"]
    if not steps or not toks:
        raise ValueError("no steps were logged")
    summary = {
        "status": "ok",
        "steps_timed": len(steps),
        "sec_per_step": sum(steps) / len(steps),
        "tokens_per_sec": sum(toks) / sum(steps),
        "tokens_per_step": sum(toks) / len(toks),
        "peak_rss_gb": res["peak_rss_gb"],
        "total_seconds": res["total_seconds"],
        "device": res["device"],
    }
    for key in ("peak_gpu_gb", "peak_gpu_reserved_gb", "gpu_used_at_end_gb"):
        if key in res:
            summary[key] = res[key]
    return summary


def _reason(stderr: str, stdout: str) -> str:
    """One line saying why a worker failed: its last exception line, else its last line of output."""
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^([\w.]+(Error|Exception|Interrupt)|[\w.]*Error:)", ln)]
    reason = (errors or lines or ["no output"])[-1]
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _run_part(part: str, args: argparse.Namespace, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--_worker", part, "--steps", str(args.steps)]
    for key in (
        "prompts",
        "num_generations",
        "max_new_tokens",
        "batch",
        "max_length",
        "vllm_gpu_memory_utilization",
    ):
        cmd += [f"--{key}", str(getattr(args, key))]
    cmd += ["--model", args.model] if args.model else []
    cmd += ["--dry-run"] if args.dry_run else []
    # The repository first, then whatever PYTHONPATH already holds (packages carried to a GPU machine, say).
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": pythonpath, "TQDM_DISABLE": "1"}
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a dry run is a CPU run, on any machine
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {
            "status": f"failed: timed out after {timeout:.0f} s",
            "wall_seconds": time.perf_counter() - t0,
        }
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        if args.verbose:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        return {"status": f"failed: {_reason(proc.stderr, proc.stdout)}", "wall_seconds": wall}
    try:
        summary = _summarise(json.loads(line[len("RESULT ") :]))
    except (ValueError, KeyError) as error:
        return {"status": f"failed: {type(error).__name__}: {error}", "wall_seconds": wall}
    return {**summary, "wall_seconds": wall}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict:
    """Library versions and the GPU, without creating a CUDA context in this (the parent) process."""
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "trl", "accelerate", "peft", "datasets", "vllm"):
        info[name] = _version(name)
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        info["gpu"] = (
            smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
        )
    except (OSError, subprocess.TimeoutExpired):
        info["gpu"] = None
    return info


def _random_model(source: str | None) -> str:
    """The architecture and tokenizer of `source` (None: the embedded model) with random weights, saved
    (bf16 safetensors) to a temporary directory whose path is returned."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from align.models import load_tokenizer, resolve_model_path

    torch.manual_seed(SEED)
    config = AutoConfig.from_pretrained(resolve_model_path(source))
    for key in ("quantization_config",):
        if hasattr(config, key):
            delattr(config, key)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    path = tempfile.mkdtemp(prefix="gpu_check_random_model_")
    model.save_pretrained(path)
    load_tokenizer(source).save_pretrained(path)
    return path


def _fmt(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _table(results: dict[str, dict], ratios: dict[str, dict]) -> str:
    head = "| part | what | status | tokens/s | s/step | peak GPU mem (GB) | peak RSS (GB) | align/TRL |"
    rows = [head, "|" + "---|" * 8]
    for part, res in results.items():
        ratio = ratios.get(part)
        shown = "" if ratio is None else f"{ratio['throughput']:.2f}x tok/s"
        if ratio is not None and ratio.get("peak_gpu_memory") is not None:
            shown += f", {ratio['peak_gpu_memory']:.2f}x GPU mem"
        elif ratio is not None:
            shown += f", {ratio['peak_rss']:.2f}x RSS"
        ok = res["status"] == "ok"
        rows.append(
            f"| {part} | {DESCRIPTION[part]} | {res['status']} | {_fmt(res.get('tokens_per_sec')) if ok else ''} "
            f"| {_fmt(res.get('sec_per_step'), 2) if ok else ''} | {_fmt(res.get('peak_gpu_gb'), 2)} "
            f"| {_fmt(res.get('peak_rss_gb'), 2)} | {shown} |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="CPU, fp32, tiny sizes")
    p.add_argument("--only", nargs="+", choices=PARTS, default=None, help="run these parts only")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per part (default 5; dry run 2)")
    p.add_argument("--prompts", type=int, default=None, help="GRPO prompts per step (default 16; dry run 2)")
    p.add_argument("--num_generations", type=int, default=None, help="GRPO completions per prompt (8; 2)")
    p.add_argument("--max_new_tokens", type=int, default=None, help="GRPO completion budget (256; 16)")
    p.add_argument("--batch", type=int, default=None, help="SFT examples / DPO pairs per step (16; 2)")
    p.add_argument("--max_length", type=int, default=None, help="SFT / DPO sequence budget (512; 64)")
    p.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.3)
    p.add_argument(
        "--model", default=None, help="a local model directory (default: the embedded SmolLM2-135M)"
    )
    p.add_argument("--random_weights", action="store_true", help="the model's architecture, random weights")
    p.add_argument(
        "--budget_s", type=float, default=None, help="whole check's time budget (450 s; dry 900 s)"
    )
    p.add_argument("--part_timeout_s", type=float, default=None, help="one part's limit (240 s; dry 300 s)")
    p.add_argument("--out", default=None, help="write the numbers to this JSON file")
    p.add_argument("--verbose", action="store_true", help="print a failed part's output tail")
    p.add_argument("--_worker", choices=PARTS, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    for key, value in SIZES["dry" if args.dry_run else "gpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args._worker:
        _worker(args._worker, args)
        return

    t_start = time.perf_counter()
    budget = args.budget_s or (900.0 if args.dry_run else 450.0)
    part_timeout = args.part_timeout_s or (300.0 if args.dry_run else 240.0)
    versions = _versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None), flush=True)
    if not args.dry_run and versions["gpu"] is None:
        print("warning: nvidia-smi found no GPU; the parts will run wherever torch puts them", flush=True)
    random_dir, model_source = None, args.model
    if args.random_weights:
        random_dir = _random_model(args.model)
        args.model = random_dir
        print(f"model: random weights in {random_dir}", flush=True)
    settings = {
        k: getattr(args, k) for k in (*SIZES["gpu"], "vllm_gpu_memory_utilization", "model", "dry_run")
    }
    settings.update(
        model=model_source, random_weights=args.random_weights, beta=BETA, learning_rate=LR, seed=SEED
    )
    settings["precision"] = "fp32 (dry run, CPU)" if args.dry_run else "bf16 weights + bf16 autocast"
    print(f"settings: {json.dumps(settings)}", flush=True)

    wanted = [part for part in RUN_ORDER if args.only is None or part in args.only]
    has_vllm = importlib.util.find_spec("vllm") is not None
    results: dict[str, dict] = {}
    for part in wanted:
        left = budget - (time.perf_counter() - t_start)
        if part in VLLM_PARTS and not has_vllm:
            results[part] = {"status": "skipped: vllm not importable"}
        elif left < 30:
            results[part] = {"status": f"skipped: out of the {budget:.0f} s budget"}
        else:
            results[part] = _run_part(part, args, min(part_timeout, left))
        res = results[part]
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}
        print(f"{part:>9}: {json.dumps(shown)}", flush=True)
    if random_dir:
        shutil.rmtree(random_dir, ignore_errors=True)

    ratios: dict[str, dict] = {}
    for mine, theirs in RATIOS.items():
        a, t = results.get(mine, {}), results.get(theirs, {})
        if a.get("status") == "ok" and t.get("status") == "ok":
            gpu = a.get("peak_gpu_gb"), t.get("peak_gpu_gb")
            ratios[mine] = {
                "vs": theirs,
                "throughput": a["tokens_per_sec"] / t["tokens_per_sec"],
                "sec_per_step": a["sec_per_step"] / t["sec_per_step"],
                "peak_gpu_memory": gpu[0] / gpu[1] if None not in gpu and gpu[1] > 0 else None,
                "peak_rss": a["peak_rss_gb"] / t["peak_rss_gb"],
            }
    ordered = {part: results[part] for part in PARTS if part in results}
    total = time.perf_counter() - t_start
    print()
    print(_table(ordered, ratios))
    print(f"\ntotal {total:.0f} s; tokens/s: GRPO completion tokens sampled, SFT/DPO tokens trained on, per "
          "second of step time (first step left out); align/TRL: same generation backend", flush=True)  # fmt: skip
    if args.out:
        report = {"settings": settings, "versions": versions, "results": ordered, "ratios": ratios,
                  "total_seconds": total}  # fmt: skip
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
