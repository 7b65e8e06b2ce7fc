"""GRPO with a rubric reward: weighted criteria scored by rules and by a judge model.

The shipped example rubric (data/rubrics/math_explainer.yaml) asks for a boxed, correct, concise answer
that shows a worked step and reads clearly (the last criterion is judged by a model: the embedded
SmolLM2 by default, scored from its next-token probabilities over the scale). The recipe prints each
criterion's mean score on held-out prompts before and after training:

    accelerate launch recipes/grpo_rubric.py
    accelerate launch recipes/grpo_rubric.py --rubric data/rubrics/math_explainer.yaml --max_steps 20

Outputs as every recipe, plus rubric_scores.json (per-criterion means before and after).
"""

import json
from dataclasses import dataclass
from pathlib import Path

from align.data import load_math_dataset, repo_root
from align.errors import run_main
from align.generation import SamplingParams
from align.recipe_helpers import finish_recipe, load_policy_and_tokenizer, parse_recipe_config
from align.rewards import make_rubric_reward
from align.trainers.grpo import GRPOConfig, GRPOTrainer


@dataclass
class GRPORubricConfig(GRPOConfig):
    """GRPO whose reward is one rubric file."""

    output_dir: str = "outputs/grpo_rubric"
    """Where metrics.jsonl, config.yaml, rubric_scores.json and the final model go."""
    rubric: str = "data/rubrics/math_explainer.yaml"
    """The rubric file (YAML or JSON): named criteria with weights, each a rule or a judge question."""
    instruction: str | None = None
    """Instruction appended to each problem; empty = reason step by step and box the answer."""
    max_new_tokens: int = 96
    """Most tokens per completion."""
    max_steps: int = 20
    """Training steps."""
    per_device_train_batch_size: int = 16
    """Completions per micro-batch (prompts x num_generations)."""
    score_limit: int = 24
    """Held-out prompts scored per criterion before and after training."""


def criterion_means(trainer: GRPOTrainer, rubric, rows, max_new_tokens: int) -> dict[str, float]:
    """Greedy completions on held-out rows, scored criterion by criterion (None left out of the mean)."""
    prompts = [r["prompt"] for r in rows]
    out = trainer.generator.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    completions = [[{"role": "assistant", "content": c}] for c in out.completion_texts]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    scores = rubric.score_criteria(prompts, completions, **columns)
    total = rubric(prompts, completions, **columns)
    rubric.pop_stats()
    means = {name: _mean(vals) for name, vals in scores.items()}
    means["total"] = _mean(total)
    return means


def _mean(values) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def main(args: list[str] | None = None) -> dict:
    cfg = parse_recipe_config(GRPORubricConfig, args)
    path = Path(cfg.rubric)
    if not path.exists() and (repo_root() / path).exists():
        path = repo_root() / path
    rubric = make_rubric_reward(path)
    model, tokenizer = load_policy_and_tokenizer(cfg)
    kw = {} if cfg.instruction is None else {"instruction": cfg.instruction}
    train = load_math_dataset(cfg.dataset_name, cfg.dataset_split, **kw)
    heldout = load_math_dataset(
        cfg.eval_dataset_name or cfg.dataset_name, cfg.eval_split, limit=cfg.score_limit, **kw
    )
    trainer = GRPOTrainer(cfg, model, tokenizer, [rubric], train)
    rows = [heldout[i] for i in range(len(heldout))]
    before = criterion_means(trainer, rubric, rows, cfg.max_new_tokens)
    trainer.train()
    after = criterion_means(trainer, rubric, rows, cfg.max_new_tokens)
    result = {"rubric": str(path), "prompts": len(rows), "before": before, "after": after}
    finish_recipe(trainer, cfg, {"steps": trainer.state.step, **result})
    if trainer.accelerator.is_main_process:
        Path(cfg.output_dir, "rubric_scores.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"rubric {rubric.__name__}: mean score per criterion on {len(rows)} held-out prompts")
        for name in before:
            print(f"  {name:<14} {before[name]:.3f} -> {after[name]:.3f}")
    trainer.record_outputs()
    return result


if __name__ == "__main__":
    run_main(main, "grpo_rubric")
