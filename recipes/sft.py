"""Supervised fine-tuning (SFT) on conversations or prompt/completion pairs, full weights or LoRA.

With no arguments it fine-tunes the embedded SmolLM2-135M-Instruct on the project's instruction data
(data/sft, made by data/make_prefs.py) on CPU, and prints the held-out loss before and after:

    accelerate launch recipes/sft.py
    accelerate launch recipes/sft.py --config recipes/configs/sft/smollm2_lora.yaml --max_steps 50

Other data: a local JSONL/JSON/Parquet file or folder, or a hub dataset with a `messages` column,
`prompt`/`completion` columns (strings or messages), Alpaca's `instruction`/`output`, or `text`:

    accelerate launch --config_file accelerate_configs/ddp.yaml recipes/sft.py \\
        --config recipes/configs/sft/qwen2.5-0.5b-instruct_full.yaml
    python recipes/sft.py --dataset_name my_chats.jsonl --max_length 512 --packing true --use_lora true

Outputs in output_dir: metrics.jsonl, config.yaml, summary.json (held-out loss and perplexity before and
after), model/ (full weights, or the LoRA adapter; merged weights with --merge_lora_on_save true).
Resume with --resume_from_checkpoint latest (with --save_steps N to write checkpoints).
"""

from align.errors import run_main
from align.recipe_helpers import (
    finish_recipe,
    load_chat_datasets,
    load_policy_and_tokenizer,
    parse_recipe_config,
)
from align.trainers.sft import SFTConfig, SFTTrainer


def main(args: list[str] | None = None, callbacks: list | None = None) -> dict:
    cfg = parse_recipe_config(SFTConfig, args)
    model, tokenizer = load_policy_and_tokenizer(cfg)
    train, heldout = load_chat_datasets(cfg, default="sft")
    trainer = SFTTrainer(cfg, model, tokenizer, train, eval_dataset=heldout, callbacks=callbacks)
    before = trainer.evaluate() if not cfg.resume_from_checkpoint else {}
    trainer.train()
    after = trainer.evaluate()
    summary = {
        "eval_loss_before": before.get("eval/loss"),
        "eval_loss_after": after.get("eval/loss"),
        "eval_perplexity_before": before.get("eval/perplexity"),
        "eval_perplexity_after": after.get("eval/perplexity"),
        "eval_tokens": after.get("eval/tokens"),
        "steps": trainer.state.step,
    }
    message = None
    if after:
        was = f"{before['eval/loss']:.4f} before -> " if before else ""
        message = (f"held-out loss: {was}{after['eval/loss']:.4f} after {trainer.state.step} steps; "
                   f"outputs in {cfg.output_dir}")  # fmt: skip
    return finish_recipe(trainer, cfg, summary, message)


if __name__ == "__main__":
    run_main(main, "sft")
