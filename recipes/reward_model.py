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

from align.errors import run_main
from align.recipe_helpers import (
    finish_recipe,
    load_chat_datasets,
    load_classifier_and_tokenizer,
    parse_recipe_config,
)
from align.trainers.reward_model import RewardModelConfig, RewardModelTrainer


def main(args: list[str] | None = None, callbacks: list | None = None) -> dict:
    cfg = parse_recipe_config(RewardModelConfig, args)
    model, tokenizer = load_classifier_and_tokenizer(cfg, num_labels=1)
    train, heldout = load_chat_datasets(cfg, default="prefs")
    trainer = RewardModelTrainer(cfg, model, tokenizer, train, eval_dataset=heldout, callbacks=callbacks)
    before = trainer.evaluate() if not cfg.resume_from_checkpoint else {}
    trainer.train()
    after = trainer.evaluate()
    summary = {
        "eval_accuracy_before": before.get("eval/accuracy"),
        "eval_accuracy_after": after.get("eval/accuracy"),
        "eval_margin_after": after.get("eval/margin"),
        "eval_loss_after": after.get("eval/loss"),
        "eval_pairs": after.get("eval/pairs"),
        "steps": trainer.state.step,
    }
    message = None
    if after:
        was = f"{before['eval/accuracy']:.3f} before -> " if before else ""
        message = (f"held-out pair accuracy: {was}{after['eval/accuracy']:.3f} after {trainer.state.step} "
                   f"steps; outputs in {cfg.output_dir}")  # fmt: skip
    return finish_recipe(trainer, cfg, summary, message)


if __name__ == "__main__":
    run_main(main, "reward_model")
