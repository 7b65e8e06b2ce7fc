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

import json
import sys
from pathlib import Path

from align.chat_data import load_train_and_eval
from align.config import ConfigError, parse_config
from align.models import apply_lora, load_causal_lm, load_tokenizer
from align.trainers.sft import SFTConfig, SFTTrainer, save_final_model


def main(args: list[str] | None = None) -> dict:
    try:
        cfg = parse_config(SFTConfig, args)
    except ConfigError as e:
        sys.exit(f"sft: {e}")
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
        cfg.dataset_name, cfg.dataset_split, cfg.eval_dataset_name, cfg.eval_split, default="sft"
    )
    trainer = SFTTrainer(cfg, model, tokenizer, train, eval_dataset=heldout)
    before = trainer.evaluate() if not cfg.resume_from_checkpoint else {}
    trainer.train()
    after = trainer.evaluate()
    save_final_model(trainer, Path(cfg.output_dir) / "model", merge_lora=cfg.merge_lora_on_save)
    summary = {
        "eval_loss_before": before.get("eval/loss"),
        "eval_loss_after": after.get("eval/loss"),
        "eval_perplexity_before": before.get("eval/perplexity"),
        "eval_perplexity_after": after.get("eval/perplexity"),
        "eval_tokens": after.get("eval/tokens"),
        "steps": trainer.state.step,
        **{k: v for k, v in trainer.data_metrics.items() if "skipped" in k or "truncated" in k},
    }
    if trainer.accelerator.is_main_process:
        Path(cfg.output_dir, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if after:
            was = f"{summary['eval_loss_before']:.4f} before -> " if before else ""
            print(f"held-out loss: {was}{summary['eval_loss_after']:.4f} after {summary['steps']} steps; "
                  f"outputs in {cfg.output_dir}")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
