"""Peak memory of PPO-RLHF on CPU: LoRA (one copy of the base weights serves policy and reference) against
full fine-tuning (a trainable policy, its AdamW state, and a frozen reference copy).

    python benchmarks/ppo_memory.py                   # embedded SmolLM2-135M-Instruct, fp32, 2 iterations
    python benchmarks/ppo_memory.py --value_model separate

Each configuration runs in its own subprocess, one after the other, so the peak resident memory
(``ru_maxrss``) is that run's own. The reward is a cheap rule (completion length), so the numbers are the
policy, value and reference models, the optimizer state and the activations, nothing else. Also printed:
the parameter bytes of the base model, and how many distinct base-weight tensors the trainer holds (a
reference copy doubles them).
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

ROOT = Path(__file__).resolve().parents[1]


def _length_reward(prompts, completions, **kw):
    return [min(len(c[0]["content"]) / 100, 1.0) for c in completions]


def worker(lora: bool, value_model: str, steps: int) -> dict:
    import torch
    from datasets import Dataset

    from align.chat_data import load_rows
    from align.config import parse_config
    from align.models import apply_lora, load_causal_lm, load_sequence_classifier, load_tokenizer
    from align.trainers.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(0)
    tok = load_tokenizer(None)
    out = tempfile.mkdtemp()
    cfg = parse_config(
        PPOConfig,
        [
            "--output_dir", out, "--max_steps", str(steps), "--use_lora", str(lora).lower(), "--dtype", "float32",
            "--value_model", value_model, "--rollout_batch_size", "8", "--per_device_train_batch_size", "4",
            "--gradient_accumulation_steps", "2", "--num_ppo_epochs", "1", "--max_new_tokens", "32",
            "--disable_progress_bar", "true", "--reward_funcs", "completion_length", "--learning_rate", "1e-5",
        ],
    )  # fmt: skip
    policy = load_causal_lm(None, dtype="float32")
    if lora:
        policy = apply_lora(policy, **cfg.lora_kwargs())
    value = None
    if value_model == "separate":
        value = load_sequence_classifier(None, dtype="float32", pad_token_id=tok.pad_token_id)
        if lora:
            value = apply_lora(value, task_type="SEQ_CLS", **cfg.lora_kwargs())
    prompts = [{"prompt": r["prompt"]} for r in load_rows(None, "train", default="prefs", limit=64)]
    t0 = time.perf_counter()
    trainer = PPOTrainer(cfg, policy, tok, [_length_reward], Dataset.from_list(prompts), value_model=value)
    trainer.train()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # before anything else is loaded
    ptrs = set()
    for module in (trainer.model, trainer.ref_model):
        if module is not None:
            ptrs |= {p.data_ptr() for p in module.parameters()}
    base = trainer.ref_model if trainer.ref_model is not None else trainer.policy
    base_bytes = sum(p.numel() * p.element_size() for n, p in base.named_parameters() if "lora_" not in n)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "peak_rss_gb": peak,
        "seconds": seconds,
        "distinct_weight_tensors": len(ptrs),
        "reference_copy": trainer.ref_model is not None,
        "trainable_params": trainable,
        "base_weights_gb": base_bytes / 2**30,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--value_model", choices=["shared", "separate"], default="shared")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--_worker", choices=["lora", "full"], default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._worker:
        print(json.dumps(worker(a._worker == "lora", a.value_model, a.steps)))
        return
    results = {}
    for kind in ("lora", "full"):
        cmd = [
            sys.executable,
            __file__,
            "--_worker",
            kind,
            "--value_model",
            a.value_model,
            "--steps",
            str(a.steps),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            sys.exit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{kind:>4}: {json.dumps(results[kind])}")
    ratio = results["lora"]["peak_rss_gb"] / results["full"]["peak_rss_gb"]
    print(
        f"value_model={a.value_model}: LoRA peak {results['lora']['peak_rss_gb']:.2f} GB vs full "
        f"{results['full']['peak_rss_gb']:.2f} GB ({ratio:.2f}x); base weights "
        f"{results['lora']['base_weights_gb']:.2f} GB; reference copy: LoRA {results['lora']['reference_copy']}, "
        f"full {results['full']['reference_copy']}"
    )
    if a.json:
        Path(a.json).write_text(
            json.dumps({"value_model": a.value_model, **results, "ratio": ratio}, indent=2)
        )


if __name__ == "__main__":
    main()
