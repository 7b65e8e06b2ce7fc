"""GRPO on math problems with verifiable rewards: the main job.

With no arguments it trains the embedded SmolLM2-135M-Instruct on the project's generated arithmetic
(data/math) on CPU, and prints held-out accuracy before and after:

    accelerate launch recipes/grpo_math.py
    accelerate launch recipes/grpo_math.py --config recipes/configs/grpo/smollm2_cpu.yaml --max_steps 50

Real models on GPUs (MATH-style data from the hub or a local file):

    accelerate launch --config_file accelerate_configs/zero2.yaml recipes/grpo_math.py \\
        --config recipes/configs/grpo/qwen2.5-1.5b-instruct_full.yaml
    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/grpo_math.py \\
        --config recipes/configs/grpo/qwen2.5-0.5b-instruct_lora.yaml

Outputs in output_dir: metrics.jsonl, config.yaml, completions.jsonl, summary.json (accuracy before and
after), model/ (full weights or the LoRA adapter).
"""

from align.data import load_math_dataset
from align.errors import run_main
from align.eval.heldout import heldout_evaluator
from align.recipe_helpers import finish_recipe, load_policy_and_tokenizer, parse_recipe_config
from align.rewards import get_reward_funcs, make_math_reward
from align.trainers.grpo import GRPOConfig, GRPOTrainer


def main(args: list[str] | None = None) -> dict:
    cfg = parse_recipe_config(GRPOConfig, args)
    model, tokenizer = load_policy_and_tokenizer(cfg)
    kw = {} if cfg.instruction is None else {"instruction": cfg.instruction}
    train = load_math_dataset(cfg.dataset_name, cfg.dataset_split, **kw)
    heldout = load_math_dataset(cfg.eval_dataset_name or cfg.dataset_name, cfg.eval_split, **kw)
    trainer = GRPOTrainer(
        cfg,
        model,
        tokenizer,
        get_reward_funcs(cfg.reward_funcs),
        train,
        evaluator=heldout_evaluator(
            heldout,
            make_math_reward(),
            max_new_tokens=cfg.eval_max_new_tokens or cfg.max_new_tokens,
            limit=cfg.eval_limit or None,
        ),
    )
    before = trainer.evaluate() if cfg.eval_limit >= 0 else {}
    trainer.train()
    after = trainer.evaluate()
    summary = {
        "heldout_accuracy_before": before.get("eval/accuracy"),
        "heldout_accuracy_after": after.get("eval/accuracy"),
        "heldout_problems": min(cfg.eval_limit or len(heldout), len(heldout)),
        "steps": trainer.state.step,
    }
    message = (
        f"held-out accuracy: {summary['heldout_accuracy_before']:.3f} before -> "
        f"{summary['heldout_accuracy_after']:.3f} after {summary['steps']} steps "
        f"({summary['heldout_problems']} problems); outputs in {cfg.output_dir}"
    )
    summary = finish_recipe(trainer, cfg, summary, message)
    return summary


if __name__ == "__main__":
    run_main(main, "grpo_math")
