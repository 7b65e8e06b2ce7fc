"""Direct Preference Optimization (sigmoid, label-smoothed or IPO), full weights or LoRA.

With no arguments it fine-tunes all weights of the embedded SmolLM2-135M-Instruct on the
project's preference pairs (data/prefs) on CPU and prints held-out preference accuracy (the share of
pairs whose implicit reward margin is positive) and margins:

    accelerate launch recipes/dpo.py
    accelerate launch recipes/dpo.py --config recipes/configs/dpo/smollm2_lora.yaml --max_steps 40

The reference policy is the LoRA adapter disabled (--use_lora true), else a frozen copy; with
--precompute_ref_logprobs true its log-probs are computed once before training and no reference model is
kept. Hub pairs (TRL's schema), on GPUs:

    accelerate launch --config_file accelerate_configs/zero2.yaml recipes/dpo.py \\
        --config recipes/configs/dpo/qwen2.5-0.5b-instruct_full.yaml

Outputs in output_dir: metrics.jsonl, config.yaml, summary.json (held-out rewards/accuracy and margins
before and after), model/ (full weights, or the LoRA adapter).
"""

import json
import sys
from pathlib import Path

from align.chat_data import load_train_and_eval
from align.config import ConfigError, parse_config
from align.models import apply_lora, load_causal_lm, load_tokenizer
from align.trainers.dpo import DPOConfig, DPOTrainer
from align.trainers.sft import save_final_model


def main(args: list[str] | None = None) -> dict:
    try:
        cfg = parse_config(DPOConfig, args)
    except ConfigError as e:
        sys.exit(f"dpo: {e}")
    tokenizer = load_tokenizer(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    model = load_causal_lm(
        cfg.model_name_or_path,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
        gradient_checkpointing=cfg.gradient_checkpointing,
        attn_implementation=cfg.attn_implementation,
    )
    if cfg.use_lora:
        model = apply_lora(model, **cfg.lora_kwargs())
    train, heldout = load_train_and_eval(
        cfg.dataset_name, cfg.dataset_split, cfg.eval_dataset_name, cfg.eval_split, default="prefs"
    )
    trainer = DPOTrainer(cfg, model, tokenizer, train, eval_dataset=heldout)
    trainer.train()
    after = trainer.evaluate()
    save_final_model(trainer, Path(cfg.output_dir) / "model", merge_lora=cfg.merge_lora_on_save)
    summary = {
        "eval_rewards_accuracy": after.get("eval/rewards/accuracy"),
        "eval_rewards_margins": after.get("eval/rewards/margins"),
        "eval_rewards_chosen": after.get("eval/rewards/chosen"),
        "eval_rewards_rejected": after.get("eval/rewards/rejected"),
        "eval_loss": after.get("eval/loss"),
        "eval_pairs": after.get("eval/pairs"),
        "steps": trainer.state.step,
        **{k: v for k, v in trainer.data_metrics.items() if "skipped" in k or "truncated" in k},
    }
    if trainer.accelerator.is_main_process:
        Path(cfg.output_dir, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if after:
            print(f"held-out preference accuracy {summary['eval_rewards_accuracy']:.3f} (before training: 0, all "
                  f"margins are 0), mean margin {summary['eval_rewards_margins']:.4f} after {summary['steps']} "
                  f"steps; outputs in {cfg.output_dir}")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
