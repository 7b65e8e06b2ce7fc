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

Outputs in output_dir: metrics.jsonl, config.yaml, summary.json (held-out rewards/accuracy, margins,
chosen and rejected rewards and loss after training; no "before" is measured, since before training the
policy is its reference and every margin is 0), model/ (full weights, or the LoRA adapter).
"""

from align.errors import run_main
from align.recipe_helpers import (
    finish_recipe,
    load_chat_datasets,
    load_policy_and_tokenizer,
    parse_recipe_config,
)
from align.trainers.dpo import DPOConfig, DPOTrainer


def main(args: list[str] | None = None, callbacks: list | None = None) -> dict:
    cfg = parse_recipe_config(DPOConfig, args)
    model, tokenizer = load_policy_and_tokenizer(cfg)
    train, heldout = load_chat_datasets(cfg, default="prefs")
    trainer = DPOTrainer(cfg, model, tokenizer, train, eval_dataset=heldout, callbacks=callbacks)
    trainer.train()
    after = trainer.evaluate()
    summary = {
        "eval_rewards_accuracy": after.get("eval/rewards/accuracy"),
        "eval_rewards_margins": after.get("eval/rewards/margins"),
        "eval_rewards_chosen": after.get("eval/rewards/chosen"),
        "eval_rewards_rejected": after.get("eval/rewards/rejected"),
        "eval_loss": after.get("eval/loss"),
        "eval_pairs": after.get("eval/pairs"),
        "steps": trainer.state.step,
    }
    message = None
    if after:
        message = (f"held-out preference accuracy {after['eval/rewards/accuracy']:.3f} (before training: 0, all "
                   f"margins are 0), mean margin {after['eval/rewards/margins']:.4f} after {trainer.state.step} "
                   f"steps; outputs in {cfg.output_dir}")  # fmt: skip
    return finish_recipe(trainer, cfg, summary, message)


if __name__ == "__main__":
    run_main(main, "dpo")
