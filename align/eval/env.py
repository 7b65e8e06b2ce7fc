"""Greedy episodes in a text environment: the evaluation of a policy trained with ``env_id``.

The same episode loop as training (``align.multiturn``), at temperature 0, from fixed reset seeds away
from training's (100000 on), so every evaluation of a run plays the same starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from align.multiturn import EpisodeLimits
from align.trainers.env_rollout import EVAL_SEED_BASE, evaluate_episodes

__all__ = ["env_evaluator"]


def env_evaluator(
    env_id: str, *, num_episodes: int, limits: EpisodeLimits, episode_return: str = "sum"
) -> Callable[[Any], dict[str, float]]:
    """The in-training evaluation of a run in ``env_id`` (``Trainer(evaluator=...)``): ``num_episodes``
    greedy episodes with the trainer's sampler and tokenizer, as ``eval/success_rate`` (where the
    environment reports success), ``eval/return``, ``eval/invalid_action_rate``, ``eval/turns``,
    ``eval/truncated_fraction`` (and tool counts for tool environments)."""

    def evaluate(trainer: Any) -> dict[str, float]:
        if num_episodes == 0:
            return {}
        trainer.generator.sync_weights(trainer._sampled_policy)
        metrics = evaluate_episodes(
            trainer.generator,
            trainer._prompt_tokenizer,
            env_id,
            num_episodes=num_episodes,
            limits=limits,
            episode_return=episode_return,
            seed_base=EVAL_SEED_BASE,
        )
        return {f"eval/{k}": v for k, v in metrics.items()}

    return evaluate
