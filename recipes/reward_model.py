"""A Bradley-Terry reward model on preference pairs, full weights or LoRA.

With no arguments it trains a reward model on the embedded SmolLM2-135M-Instruct (a fresh score head on
its backbone) with the project's preference pairs (data/prefs: the chosen answer satisfies a checkable
property that the rejected one does not), on CPU, and prints held-out pair accuracy before and after:

    accelerate launch recipes/reward_model.py
    accelerate launch recipes/reward_model.py --config recipes/configs/reward_model/smollm2_lora.yaml

Hub data in TRL's preference schema (prompt/chosen/rejected, or chosen/rejected conversations):

    accelerate launch --config_file accelerate_configs/zero2.yaml recipes/reward_model.py \\
        --config recipes/configs/reward_model/qwen2.5-0.5b-instruct_full.yaml

The saved model/ is a reward function for GRPO and PPO: the reward name `reward_model:<output_dir>/model`
(align.rewards.reward_model). Outputs in output_dir: metrics.jsonl, config.yaml, summary.json (held-out
accuracy before and after), model/ (full weights, or the LoRA adapter with the trained score head).
"""

import json
import sys
from pathlib import Path

from align.chat_data import load_train_and_eval
from align.config import ConfigError, parse_config
from align.models import apply_lora, load_sequence_classifier, load_tokenizer
from align.trainers.reward_model import RewardModelConfig, RewardModelTrainer
from align.trainers.sft import save_final_model


def main(args: list[str] | None = None) -> dict:
    try:
        cfg = parse_config(RewardModelConfig, args)
    except ConfigError as e:
        sys.exit(f"reward_model: {e}")
    tokenizer = load_tokenizer(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    model = load_sequence_classifier(
        cfg.model_name_or_path,
        num_labels=1,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
        pad_token_id=tokenizer.pad_token_id,
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.use_lora:
        model = apply_lora(model, task_type="SEQ_CLS", **cfg.lora_kwargs())
    train, heldout = load_train_and_eval(
        cfg.dataset_name, cfg.dataset_split, cfg.eval_dataset_name, cfg.eval_split, default="prefs"
    )
    trainer = RewardModelTrainer(cfg, model, tokenizer, train, eval_dataset=heldout)
    before = trainer.evaluate() if not cfg.resume_from_checkpoint else {}
    trainer.train()
    after = trainer.evaluate()
    save_final_model(trainer, Path(cfg.output_dir) / "model", merge_lora=cfg.merge_lora_on_save)
    summary = {
        "eval_accuracy_before": before.get("eval/accuracy"),
        "eval_accuracy_after": after.get("eval/accuracy"),
        "eval_margin_after": after.get("eval/margin"),
        "eval_loss_after": after.get("eval/loss"),
        "eval_pairs": after.get("eval/pairs"),
        "steps": trainer.state.step,
        **{k: v for k, v in trainer.data_metrics.items() if "skipped" in k or "truncated" in k},
    }
    if trainer.accelerator.is_main_process:
        Path(cfg.output_dir, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if after:
            was = f"{summary['eval_accuracy_before']:.3f} before -> " if before else ""
            print(f"held-out pair accuracy: {was}{summary['eval_accuracy_after']:.3f} after "
                  f"{summary['steps']} steps; outputs in {cfg.output_dir}")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
