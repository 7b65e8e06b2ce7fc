"""Rollouts in a text environment for the on-policy LLM trainers (GRPO, PPO-RLHF).

With ``env_id`` set, a rollout is not a batch of dataset prompts but ``prompts_per_rollout`` reset seeds,
each played ``num_generations`` times (a GRPO group is G episodes from the same start). Episodes are
multi-turn and token in, token out (``align.multiturn``); an episode's score is its return (the sum of the
rewards of its turns, or the final one) and the trainers turn it into advantages as they do a completion's
reward. Everything after the first prompt is the "completion", with observation tokens attended to and
masked out of the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from align.config import ConfigError
from align.generation import eos_token_ids, stream_seed
from align.monitors import repeated_ngram_rate
from align.multiturn import Episode, EpisodeLimits, episodes_to_rollout, run_episodes
from align.rewards.combine import MissingRewardError
from align.trainer import COMPLETIONS_FILE

__all__ = ["EnvRollouts", "episode_metrics", "episode_scores", "evaluate_episodes", "reset_seeds"]

#: Reset seeds of evaluation episodes start here, away from training's.
EVAL_SEED_BASE = 100_000


def reset_seeds(seed: int, rollout: int, first_group: int, groups: int, group_size: int) -> list[int]:
    """Reset seeds of one rollout's episodes on one process: group ``k`` (global index ``first_group + k``)
    is ``group_size`` episodes from the seed keyed by (seed, rollout, group), so a resumed run and a run on
    another number of processes reset the same starts."""
    return [
        stream_seed(seed, rollout, first_group + k) % (2**31)
        for k in range(groups)
        for _ in range(group_size)
    ]


def episode_scores(episodes: Sequence[Episode], mode: str) -> list[float]:
    """Each episode's score: the sum of its rewards (``mode`` "sum") or its last reward ("final")."""
    if mode not in ("sum", "final"):
        raise ValueError(f"episode_return must be 'sum' or 'final', got {mode!r}")
    return [
        ep.episode_return if mode == "sum" else (ep.rewards[-1] if ep.rewards else 0.0) for ep in episodes
    ]


def _info_total(ep: Episode, key: str) -> float:
    return float(sum(float(info.get(key, 0) or 0) for info in ep.infos))


def episode_metrics(
    episodes: Sequence[Episode], scores: Sequence[float], prefix: str = "env"
) -> dict[str, float]:
    """Means over episodes: ``<prefix>/return``, ``/success_rate`` (the last step's ``info["success"]``; an
    episode without one, e.g. cut by a limit, is not a success), ``/turns``, ``/invalid_action_rate`` (per turn), ``/truncated_fraction``,
    and tool counts per episode (``/tool_calls``, ``/tool_errors``) where the environment reports them."""
    n = max(len(episodes), 1)
    turns = sum(ep.turns for ep in episodes)
    out = {
        f"{prefix}/return": float(sum(scores)) / n,
        f"{prefix}/turns": turns / n,
        f"{prefix}/invalid_action_rate": sum(_info_total(ep, "invalid_action") for ep in episodes)
        / max(turns, 1),
        f"{prefix}/truncated_fraction": sum(ep.truncated for ep in episodes) / n,
    }
    # An episode cut by our limits (turns, tokens) ends without the environment's verdict: not a success.
    out[f"{prefix}/success_rate"] = sum(bool(ep.infos[-1].get("success", False)) for ep in episodes) / n
    for key in ("tool_calls", "tool_errors"):
        if any(key in info for ep in episodes for info in ep.infos):
            out[f"{prefix}/{key}"] = sum(_info_total(ep, key) for ep in episodes) / n
    return out


def make_env(env_id: str) -> Any:
    """``gymnasium.make(env_id)`` for a registered environment with text actions (importing ``align.envs``
    registers the project's); an unknown id is a ``ConfigError`` naming the registered ``align/`` ids."""
    import gymnasium as gym

    import align.envs  # noqa: F401 - registers the project's text environments

    if env_id not in gym.registry:
        known = ", ".join(sorted(k for k in gym.registry if k.startswith("align/")))
        raise ConfigError(
            f"env_id: no environment {env_id!r} is registered; registered text environments: {known}"
        )
    return gym.make(env_id)


class EnvRollouts:
    """Plays a trainer's rollouts in ``config.env_id`` (one environment object per episode slot)."""

    def __init__(self, trainer: Any) -> None:
        cfg = trainer.config
        self.trainer = trainer
        self.rows = trainer.prompts_per_rollout * cfg.num_generations
        self.envs = [make_env(cfg.env_id) for _ in range(self.rows)]
        self.limits = EpisodeLimits(
            max_turns=cfg.max_turns,
            max_tokens_per_turn=cfg.max_new_tokens,
            max_episode_tokens=cfg.max_episode_tokens,
        )
        self.eos_ids = eos_token_ids(trainer._prompt_tokenizer, trainer.model)

    def play(self, return_logprobs: bool) -> tuple[Any, list[float], dict[str, float]]:
        """One rollout: ``(rollout, scores, metrics)``; counts ``env/episodes`` and ``env/steps``."""
        t = self.trainer
        cfg, acc = t.config, t.accelerator
        count = int(t.state.counters.get("rollout/count", 0))
        groups = t.prompts_per_rollout
        seeds = reset_seeds(cfg.seed, count, acc.process_index * groups, groups, cfg.num_generations)
        params = t.sampling_params(return_logprobs=return_logprobs)
        tok = t._prompt_tokenizer
        episodes = run_episodes(t.generator, tok, self.envs, seeds, params, self.limits, eos_ids=self.eos_ids)
        rollout = episodes_to_rollout(
            episodes, tok, pad_id=t.generator.pad_id, num_generations=cfg.num_generations, device=acc.device
        )
        scores = episode_scores(episodes, cfg.episode_return)
        if t._global_sum(float(sum(s == s for s in scores))) == 0:  # NaN != NaN: no reward
            raise MissingRewardError(
                f"rollout {count + 1}: no episode of {cfg.env_id} got a reward (the environment returned NaN "
                "for all of them: e.g. gold answers its verifier cannot read)"
            )
        counters = t.state.counters
        counters["env/episodes"] = counters.get("env/episodes", 0.0) + t._global_sum(float(len(episodes)))
        counters["env/steps"] = counters.get("env/steps", 0.0) + t._global_sum(
            float(sum(e.turns for e in episodes))
        )
        self._log(episodes, scores, seeds)
        metrics = episode_metrics(episodes, scores)
        # For align.monitors: repetition within each policy reply (a reply repeating the last is a policy).
        replies = [m["content"] for ep in episodes for m in ep.messages if m.get("role") == "assistant"]
        metrics["completions/repeated_ngram_rate"] = repeated_ngram_rate(replies)
        return rollout, scores, metrics

    def _log(self, episodes: list[Episode], scores: list[float], seeds: list[int]) -> None:
        """The first ``log_completions`` episodes' conversations to completions.jsonl, on logging steps."""
        t = self.trainer
        n = t.config.log_completions
        if not n or (t.state.step + 1) % t.config.logging_steps:
            return
        t.log_step_record(
            COMPLETIONS_FILE,
            [
                {"step": t.state.step + 1, "reset_seed": seed, "messages": ep.messages, "return": score,
                 "turns": ep.turns, "truncated": ep.truncated, "success": ep.infos[-1].get("success")}
                for ep, score, seed in list(zip(episodes, scores, seeds))[:n]
            ],
        )  # fmt: skip


def evaluate_episodes(
    generator: Any,
    tokenizer: Any,
    env_id: str,
    *,
    num_episodes: int,
    limits: EpisodeLimits,
    episode_return: str = "sum",
    seed_base: int = EVAL_SEED_BASE,
) -> dict[str, float]:
    """Greedy episodes from the reset seeds ``seed_base .. seed_base + num_episodes - 1``:
    :func:`episode_metrics` under the prefix ``eval``."""
    from align.generation import SamplingParams

    envs = [make_env(env_id) for _ in range(num_episodes)]
    seeds = [seed_base + i for i in range(num_episodes)]
    params = SamplingParams(max_new_tokens=limits.max_tokens_per_turn, temperature=0.0, return_logprobs=False)
    episodes = run_episodes(
        generator, tokenizer, envs, seeds, params, limits, eos_ids=getattr(generator, "eos_ids", ())
    )
    return {
        k.split("/", 1)[1]: v
        for k, v in episode_metrics(episodes, episode_scores(episodes, episode_return)).items()
    }
