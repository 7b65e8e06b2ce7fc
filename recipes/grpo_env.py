"""GRPO in a text environment: the language model plays a registered gymnasium environment turn by turn.

With no arguments it trains the embedded SmolLM2-135M-Instruct on text FrozenLake 4x4 (not slippery) on
CPU: a group is num_generations episodes from one reset seed, an episode's return is its score, and the
ids trained on are the ids sampled (observations are appended as the chat template's tokens and masked
out of the loss). It prints, before and after training, the greedy success rate, return, invalid-action
rate and mean turns, beside what value iteration (the optimum) and a random policy achieve on the same MDP:

    python recipes/grpo_env.py
    python recipes/grpo_env.py --config recipes/configs/grpo/maze_text.yaml
    python recipes/grpo_env.py --env_id align/TaxiText-v0 --max_turns 20

Outputs in output_dir: metrics.jsonl, config.yaml, completions.jsonl (episodes), summary.json, model/.
"""

from dataclasses import dataclass

from align.errors import run_main
from align.eval.env import env_evaluator
from align.multiturn import EpisodeLimits
from align.recipe_helpers import finish_recipe, load_policy_and_tokenizer, parse_recipe_config
from align.trainers.env_rollout import make_env
from align.trainers.grpo import GRPOConfig, GRPOTrainer


@dataclass
class GRPOEnvConfig(GRPOConfig):
    """GRPO over episodes of a registered text environment."""

    output_dir: str = "outputs/grpo_env"
    """Where metrics.jsonl, config.yaml, completions.jsonl, checkpoints/ and the final model go."""
    env_id: str | None = "align/FrozenLakeText-v0"
    """The registered text environment (align.envs): align/FrozenLakeText-v0, align/MazeText-v0, ..."""
    instruction: str | None = None
    """Not used: the environment writes the prompts."""
    num_generations: int = 8
    """G: episodes per reset seed; the group whose mean return is the baseline."""
    per_device_train_batch_size: int = 16
    """Episodes per micro-batch (reset seeds x num_generations)."""
    max_new_tokens: int = 24
    """Most tokens per turn (an action inside <action></action> needs about ten)."""
    max_turns: int = 8
    """Most moves per episode (the 4x4 lake needs 6)."""
    max_episode_tokens: int = 1024
    """Most tokens after the first prompt (turns and observations)."""
    temperature: float = 1.0
    """Sampling temperature."""
    learning_rate: float = 1e-5
    max_steps: int = 20
    """Optimizer steps (each rollout gives num_epochs of them)."""
    eval_episodes: int = 16
    """Greedy episodes per evaluation."""


def reference(env_id: str, horizon: int) -> dict[str, float]:
    """Value iteration's and a random policy's success on the MDP behind a grid-world text environment
    (empty for other environments)."""
    from align.envs.text import reference_scores, text_env_of

    env = make_env(env_id)
    try:
        text_env_of(env)
    except ValueError:  # not a grid world (e.g. the tool environment): no MDP to solve
        return {}
    return reference_scores(env, horizon=horizon)


def run(cfg: GRPOConfig) -> dict:
    """Train ``cfg`` (a GRPO config with ``env_id``) and report the greedy evaluation before and after."""
    ref = reference(cfg.env_id, cfg.max_turns)
    model, tokenizer = load_policy_and_tokenizer(cfg)
    limits = EpisodeLimits(cfg.max_turns, cfg.max_new_tokens, cfg.max_episode_tokens)
    eval_id = cfg.eval_env_id or cfg.env_id
    evaluator = env_evaluator(
        eval_id, num_episodes=cfg.eval_episodes, limits=limits, episode_return=cfg.episode_return
    )
    trainer = GRPOTrainer(cfg, model, tokenizer, [], None, evaluator=evaluator)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    keys = ("success_rate", "return", "invalid_action_rate", "turns", "tool_calls", "tool_errors")
    summary = {
        "env_id": cfg.env_id,
        "eval_env_id": eval_id,
        **{f"{k}_before": before.get(f"eval/{k}") for k in keys if f"eval/{k}" in before},
        **{f"{k}_after": after.get(f"eval/{k}") for k in keys if f"eval/{k}" in after},
        **{k: ref[k] for k in ("optimal_success", "random_success", "horizon") if k in ref},
        "eval_episodes": cfg.eval_episodes,
        "steps": trainer.state.step,
    }
    changes = ", ".join(
        f"{k.replace('_', ' ')} {summary[k + '_before']:.3f} -> {summary[k + '_after']:.3f}"
        for k in keys
        if k + "_before" in summary and k + "_after" in summary
    )
    optimum = (
        f"; value iteration {ref['optimal_success']:.3f}, random policy {ref['random_success']:.3f} within "
        f"{ref['horizon']} moves"
        if ref
        else ""
    )
    message = (
        f"{eval_id} (greedy, {cfg.eval_episodes} episodes, before -> after {trainer.state.step} steps): "
        f"{changes}{optimum}; outputs in {cfg.output_dir}"
    )
    return finish_recipe(trainer, cfg, summary, message)


def main(args: list[str] | None = None) -> dict:
    return run(parse_recipe_config(GRPOEnvConfig, args))


if __name__ == "__main__":
    run_main(main, "grpo_env")
