"""What the on-policy LLM trainers (GRPO, PPO-RLHF) share: prompts in, scored rollouts out.

Both draw a batch of prompt rows from the dataset, sample completions with the current policy, score them
with ``align.rewards`` (the other dataset columns passed by name, TRL's contract), and turn the rollout into
update steps that the base loop takes one optimizer step at a time. Only the last step, the
algorithm (group advantages, or KL-shaped rewards, values and GAE) and its update plan differ; they live
in each trainer's ``_make_plan``.

Prompt length is guarded here, once, before sampling: each drawn prompt is tokenised (chat template
included), and one longer than ``max_prompt_length`` follows ``prompt_truncation``. The sampler is handed
those token ids, so the ids trained on are the ids sampled, and a skipped prompt leaves with all of its
group (it is dropped before its G completions exist). A prompt longer than the model's context would
otherwise reach ``generate`` whole: attention over it grew a process past 10 GB.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from align.config import ConfigError, check_range
from align.forward import base_model
from align.generation import Rollout, SamplingParams, make_generator, stream_seed, tokenize_prompts
from align.losses import is_correction
from align.monitors import repeated_ngram_rate
from align.rewards import CombinedReward
from align.rewards.combine import MissingRewardError
from align.trainer import COMPLETIONS_FILE
from align.trainers.env_rollout import EnvRollouts

__all__ = [
    "RolloutConfig",
    "RolloutMixin",
    "check_prompt_room",
    "combined_reward",
    "model_context_length",
    "resolve_max_prompt_length",
    "rollout_seed",
]

logger = logging.getLogger(__name__)

#: A context length above this is a placeholder (a tokenizer without one says 1e30), not a model's.
_SANE_CONTEXT = 100_000_000

#: TRL's names for our fields (GRPOConfig, PPOConfig), accepted in YAML and on the command line.
TRL_ALIASES = {
    "epsilon": "clip_eps",
    "epsilon_high": "clip_eps_high",
    "cliprange": "clip_eps",
    "cliprange_value": "clip_eps_value",
    "beta": "kl_coef",
    "num_iterations": "num_epochs",
    "num_ppo_epochs": "num_epochs",
    "lam": "gae_lambda",
}


@dataclass
class RolloutConfig:
    """The fields GRPO and PPO-RLHF share: prompt data, rewards, sampling, the sampler backend, and the
    names of the PPO-family hyperparameters (``clip_eps``, ``num_epochs``, ``kl_coef``, as classic PPO
    spells them). Mixed in before ``ModelConfig`` and ``TrainConfig``; a pipeline redefines a field to
    change its default or help. TRL's names (``TRL_ALIASES``) are accepted in YAML and on the command line."""

    ALIASES: ClassVar[dict[str, str]] = TRL_ALIASES

    dataset_name: str | None = None
    """Prompts: a local JSONL/JSON/Parquet file or folder, or a hub dataset; empty = the shipped data."""
    dataset_split: str = "train"
    """Split of dataset_name to train on."""
    eval_dataset_name: str | None = None
    """Held-out prompts for evaluation (default: dataset_name)."""
    eval_split: str = "test"
    """Split of the evaluation dataset."""
    eval_limit: int = 100
    """Evaluate on the first N held-out prompts (0 = all)."""
    reward_funcs: list[str] = field(default_factory=lambda: ["math"])
    """Reward names (align.rewards): math, choice, boxed_format, tags_format, length, rubric:PATH,
    reward_model:PATH (a trained Bradley-Terry model)."""
    reward_weights: list[float] | None = None
    """One weight per reward function (default all 1)."""
    reward_nonfinite: Literal["error", "skip"] = "error"
    """A reward function returning NaN or inf: error = stop, naming the function; skip = drop the
    completion from its group's baseline and the loss, counted in reward/<name>/nonfinite."""
    reward_timeout_s: float | None = None
    """Most seconds for one reward function's call on a batch (empty = no bound); an overrun drops the
    batch's completions from the loss, counted in reward/<name>/timeouts. math bounds each check itself
    (math:<timeout_s>, default 5 s, in a worker process)."""
    num_generations: int = 8
    """Completions sampled per prompt (rows of one prompt are consecutive)."""
    max_new_tokens: int = 64
    """Most tokens per completion; longer ones are cut."""
    temperature: float = 1.0
    """Sampling temperature (also divides the logits in the loss, so ratios are of the sampled policy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 = off)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    num_epochs: int = 1
    """Optimisation passes over each rollout (PPO epochs; GRPO's mu, TRL num_iterations / num_ppo_epochs);
    more than one keeps the rollout's log-probs as the ratio's denominator."""
    clip_eps: float = 0.2
    """Clip range epsilon of the policy ratio (TRL epsilon / cliprange)."""
    kl_coef: float = 0.0
    """beta: weight of the KL penalty to the reference policy (TRL beta / kl_coef); 0 skips the reference."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator (Schulman 2020): k1 = log pi - log pi_ref, k2, or k3 (unbiased, low variance)."""
    generation_backend: Literal["hf", "vllm", "vllm-server"] = "hf"
    """Sampler: transformers generate, vLLM colocated, or a `trl vllm-serve` server."""
    generation_batch_size: int | None = None
    """Most sequences per generate call (memory); default all of a rollout's completions at once."""
    vllm_gpu_memory_utilization: float = 0.3
    """vLLM colocated: fraction of GPU memory for its weights and KV cache."""
    vllm_server_host: str = "127.0.0.1"
    """vllm-server backend: host of `trl vllm-serve`."""
    vllm_server_port: int = 8000
    """vllm-server backend: port of `trl vllm-serve`."""
    log_completions: int = 2
    """Write this many sample completions per logged step to completions.jsonl (0 = none)."""
    max_prompt_length: int | None = None
    """Most prompt tokens (chat template included) given to the sampler; a longer prompt follows
    prompt_truncation. Empty = the model's context length minus max_new_tokens (from the model config's
    max_position_embeddings or the tokenizer's model_max_length, the smaller when both are set)."""
    prompt_truncation: Literal["keep_end", "skip", "error"] = "keep_end"
    """A prompt over max_prompt_length: keep_end = drop its start, keeping the question's end and the chat
    template's generation prompt (TRL truncates from the left too); skip = leave the row out and draw
    another; error = stop, naming the row. Counted in prompts/truncated and prompts/skipped."""

    env_id: str | None = None
    """Train in a registered text environment (align.envs, e.g. align/FrozenLakeText-v0) instead of on
    prompts: a group is num_generations episodes from one reset seed, scored by the environment's rewards
    (reward_funcs is not used); max_new_tokens bounds each turn."""
    max_turns: int = 4
    """Environment runs: most policy turns per episode (more is truncated, flagged)."""
    max_episode_tokens: int = 512
    """Environment runs: most tokens after the first prompt (turns and observations together)."""
    episode_return: Literal["sum", "final"] = "sum"
    """Environment runs: an episode's score is the sum of its turns' rewards, or the last one."""
    eval_episodes: int = 32
    """Environment runs: greedy episodes per evaluation (reset seeds 100000 on)."""
    eval_env_id: str | None = None
    """Environment runs: the environment evaluated on (default env_id), e.g. align/MathToolsTest-v0 for
    held-out problems."""

    # Off-policy correction between the sampler (mu) and the trainer's own forward (pi_old), issue 17.
    is_correction: Literal[
        "auto", "off", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"
    ] = "auto"
    """Importance-sampling correction of the policy loss by pi_old / mu, the trainer's log-probs of the
    sampled tokens over the sampler's (align.losses.is_correction): <level>_<mode>, level token (a ratio
    per token) or sequence (their product), mode truncate (min(ratio, is_cap), TIS) or mask (ratio above
    is_cap weighs 0, MIS). auto = sequence_mask (TRL's default) with a vLLM backend, whose kernels give
    another distribution than the trainer's forward, and off with hf, which samples with the trainer's
    own weights and forward (the same policy up to float rounding; name a mode to correct anyway)."""
    is_cap: float = 3.0
    """C of is_correction: the largest importance ratio kept (truncate) or not rejected (mask); TRL's
    default, loose enough that float-level mismatch never triggers it, tight enough to bound the variance."""

    def validate(self) -> None:
        """Check the shared fields, naming the field, after the checks later in the config's MRO."""
        parent = getattr(super(), "validate", None)
        if parent is not None:
            parent()
        check_range("eval_limit", self.eval_limit, 0)
        check_range("num_generations", self.num_generations, 1)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("temperature", self.temperature, 0.0, low_inclusive=False)
        check_range("top_p", self.top_p, 0.0, 1.0, low_inclusive=False)
        check_range("top_k", self.top_k, 0)
        check_range("num_epochs", self.num_epochs, 1)
        check_range("clip_eps", self.clip_eps, 0.0, 1.0, low_inclusive=False)
        check_range("kl_coef", self.kl_coef, 0.0)
        check_range("generation_batch_size", self.generation_batch_size, 1, allow_none=True)
        check_range("log_completions", self.log_completions, 0)
        check_range("max_prompt_length", self.max_prompt_length, 1, allow_none=True)
        check_range("reward_timeout_s", self.reward_timeout_s, 0.0, low_inclusive=False, allow_none=True)
        # The model's context, when a local config.json gives it before the model loads (checked again on
        # the loaded model and tokenizer when the trainer is built).
        check_prompt_room(
            self.max_prompt_length,
            self.max_new_tokens,
            _local_context_length(getattr(self, "model_name_or_path", None)),
        )
        check_range("max_turns", self.max_turns, 1)
        check_range("max_episode_tokens", self.max_episode_tokens, 1)
        check_range("eval_episodes", self.eval_episodes, 0)
        check_range("is_cap", self.is_cap, 1.0)
        default_rewards = type(self).__dataclass_fields__["reward_funcs"].default_factory()
        if self.env_id is not None and list(self.reward_funcs) != default_rewards:
            raise ConfigError(
                f"reward_funcs {list(self.reward_funcs)}: a run in env_id {self.env_id!r} is rewarded by the "
                "environment; leave reward_funcs out"
            )
        if not self.reward_funcs:
            raise ConfigError("reward_funcs must name at least one reward function")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(
                f"reward_weights has {len(self.reward_weights)} values for {len(self.reward_funcs)} reward_funcs"
            )

    @property
    def is_correction_mode(self) -> tuple[str, str] | None:
        """``(level, mode)`` of the importance-sampling correction this run applies, or None (off): ``auto``
        resolved by ``generation_backend``."""
        name = self.is_correction
        if name == "auto":
            name = "off" if self.generation_backend == "hf" else "sequence_mask"
        if name == "off":
            return None
        level, mode = name.split("_")
        return level, mode


def combined_reward(reward_funcs: Any, config: RolloutConfig) -> CombinedReward:
    """``reward_funcs`` (callables, or a ``CombinedReward`` used as given) combined with the config's
    weights, non-finite policy and timeout."""
    if isinstance(reward_funcs, CombinedReward):
        return reward_funcs
    return CombinedReward(
        list(reward_funcs),
        config.reward_weights,
        nonfinite=config.reward_nonfinite,
        timeout_s=config.reward_timeout_s,
    )


class RolloutMixin:
    """Mixed into a ``Trainer`` subclass (listed first). The subclass sets ``train_dataset``, ``reward`` (a
    ``CombinedReward``) and ``config`` (with ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
    ``num_generations``, ``log_completions``, ``max_prompt_length``, ``prompt_truncation``), defines
    :attr:`prompts_per_rollout` and ``_make_plan(rows, prompt_ids) -> list[UpdateStep]``, sets
    ``max_prompt_length`` (:func:`resolve_max_prompt_length`) before ``Trainer.__init__``, and calls
    :meth:`init_rollouts` after it."""

    #: prompts drawn from the dataset per rollout (per process).
    prompts_per_rollout: int
    #: the resolved prompt budget in tokens (None = no limit known).
    max_prompt_length: int | None

    def init_rollouts(self, policy: Any, tokenizer: Any) -> None:
        """The sampler (``config.generation_backend``)."""
        cfg = self.config
        kwargs: dict[str, Any] = {}
        if cfg.generation_backend == "hf":
            if getattr(cfg, "generation_batch_size", None):
                kwargs["batch_size"] = cfg.generation_batch_size
        elif cfg.generation_backend == "vllm":
            kwargs["gpu_memory_utilization"] = cfg.vllm_gpu_memory_utilization
        else:
            kwargs.update(server_host=cfg.vllm_server_host, server_port=cfg.vllm_server_port)
        self.generator = make_generator(cfg.generation_backend, policy, tokenizer, **kwargs)
        self._prompt_tokenizer = tokenizer
        self._warned_long_prompt = False
        self._weights_version = -1
        self.env_rollouts = EnvRollouts(self) if cfg.env_id else None

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of ``prompts_per_rollout`` untokenised ``(index, row)`` pairs; a short last batch is
        dropped so that every rollout has the same size. None for a run in an environment."""
        if self.config.env_id:
            return None
        return DataLoader(
            _NumberedRows(self.train_dataset),
            batch_size=self.prompts_per_rollout,
            shuffle=True,
            drop_last=True,
            collate_fn=list,  # rows stay dicts of Python objects (chat messages, answers)
        )

    def plan_updates(self) -> list[Any]:
        """Draw the next prompt rows (:meth:`next_prompts`), roll out and score them, and return the
        trainer's update steps on them (``_make_plan``), the first carrying ``prompts/truncated`` and
        ``prompts/skipped``; the rollout counter ``rollout/count`` goes up by one. In an environment
        (``env_id``) the rollout is episodes (:class:`EnvRollouts`), planned by ``_plan_rollout``."""
        if self.env_rollouts is not None:
            self._sync_sampler()
            t0 = time.perf_counter()
            rollout, scores, metrics = self.env_rollouts.play(return_logprobs=self._sampler_logprobs)
            metrics["time/generation_seconds"] = time.perf_counter() - t0
            plan = self._plan_rollout(rollout, scores, metrics)
        else:
            rows, prompt_ids, counts = self.next_prompts()
            plan = self._make_plan(rows, prompt_ids)
            if plan:
                plan[0].metrics.update(counts)
        self.state.counters["rollout/count"] = self.state.counters.get("rollout/count", 0.0) + 1
        return plan

    def next_prompts(self) -> tuple[list[dict[str, Any]], list[list[int]], dict[str, float]]:
        """``prompts_per_rollout`` rows, the token ids of each one's prompt within ``max_prompt_length``,
        and the counts ``prompts/truncated`` and ``prompts/skipped`` (summed over processes).

        Under ``prompt_truncation: skip`` a batch short of prompts is filled from the next batches (the
        rest of the last one drawn goes unused), so a rollout never shrinks, let alone empties; every
        process draws as many batches as the one that needs most, which keeps the data position the same
        on all of them. A whole epoch's worth of draws that cannot fill one rollout is an error."""
        cfg = self.config
        need = self.prompts_per_rollout
        rows: list[dict[str, Any]] = []
        prompt_ids: list[list[int]] = []
        truncated = skipped = draws = 0
        epoch_batches = max(len(self._dataloader), 1)
        while True:
            batch = self.next_batch()
            draws += 1
            if len(rows) < need:
                indices = [index for index, _ in batch]
                batch_rows = [row for _, row in batch]
                encoded = tokenize_prompts(self._prompt_tokenizer, [row["prompt"] for row in batch_rows])
                for index, row, ids in zip(indices, batch_rows, encoded):
                    fitted = self._fit_prompt(int(index), ids)
                    if fitted is None:
                        skipped += 1
                        continue
                    truncated += len(fitted) < len(ids)
                    rows.append(row)
                    prompt_ids.append(fitted)
            if cfg.prompt_truncation != "skip" or not self._any_process(len(rows) < need):
                break
            if draws > epoch_batches:
                raise ConfigError(
                    f"prompt_truncation: skip: only {len(rows)} of the {draws * need} prompts drawn (more than "
                    f"an epoch) have at most max_prompt_length = {self.max_prompt_length} tokens, fewer than "
                    f"the {need} of one rollout; raise max_prompt_length or use prompt_truncation: keep_end"
                )
        counts = torch.tensor([float(truncated), float(skipped)])
        acc = self.accelerator
        if acc.num_processes > 1:
            counts = acc.reduce(counts.to(acc.device), "sum").cpu()
        return (
            rows[:need],
            prompt_ids[:need],
            {
                "prompts/truncated": float(counts[0]),
                "prompts/skipped": float(counts[1]),
            },
        )

    def _fit_prompt(self, index: int, ids: list[int]) -> list[int] | None:
        """Row ``index``'s prompt ids within ``max_prompt_length`` per ``prompt_truncation``: as they are,
        their last ``max_prompt_length`` tokens (keep_end: the generation prompt and the question's end
        stay), None (skip), or a ``ConfigError`` naming the row (error). The first cut or skip is warned."""
        limit, policy = self.max_prompt_length, self.config.prompt_truncation
        if limit is None or len(ids) <= limit:
            return ids
        where = (
            f"the prompt of training row {index} has {len(ids)} tokens, more than max_prompt_length = {limit}"
        )
        if policy == "error":
            raise ConfigError(
                f"{where} (prompt_truncation: error); shorten it, raise max_prompt_length, or use "
                "prompt_truncation: keep_end or skip"
            )
        if not self._warned_long_prompt:
            self._warned_long_prompt = True
            action = f"keeping its last {limit} tokens" if policy == "keep_end" else "leaving the row out"
            counter = "prompts/truncated" if policy == "keep_end" else "prompts/skipped"
            logger.warning(
                "%s: %s (prompt_truncation: %s); every such prompt is counted in %s (warned once)",
                where, action, policy, counter,
            )  # fmt: skip
        return ids[-limit:] if policy == "keep_end" else None

    def _any_process(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (every process gets the same answer)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return flag
        return bool(acc.reduce(torch.tensor(float(flag), device=acc.device), "sum").item() > 0)

    def sampling_params(self, *, return_logprobs: bool) -> SamplingParams:
        """The config's sampling settings for one rollout; ``return_logprobs`` only where the algorithm uses them
        (GRPO's old log-probs with several steps per rollout, mu for ``is_correction``), since computing them slows
        sampling."""
        cfg = self.config
        rows = self.prompts_per_rollout * cfg.num_generations
        return SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            num_generations=cfg.num_generations,
            return_logprobs=return_logprobs,
            # Completion i of the global batch draws from its own stream keyed by (seed, rollout, i): a
            # resumed run and a run on another number of processes sample the same completions.
            seed=rollout_seed(cfg.seed, int(self.state.counters.get("rollout/count", 0))),
            seed_offset=self.accelerator.process_index * rows,
        )

    def sample_and_score(
        self, rows: list[dict[str, Any]], prompt_ids: list[list[int]], policy: Any, *, return_logprobs: bool
    ) -> tuple[Rollout, Any, dict[str, float]]:
        """Sample ``num_generations`` completions per row's prompt, given as its token ids ``prompt_ids``
        (from :meth:`next_prompts`; weights synced to the sampler once per optimizer step), and score them.
        Returns the rollout, the ``RewardOutput`` and timing (and completion text) metrics."""
        G = self.config.num_generations
        t0 = time.perf_counter()
        self._sync_sampler(policy)
        params = self.sampling_params(return_logprobs=return_logprobs)
        rollout: Rollout = self.generator.generate([r["prompt"] for r in rows], params, prompt_ids=prompt_ids)
        t_gen = time.perf_counter() - t0
        columns = {k: [r[k] for r in rows for _ in range(G)] for k in rows[0] if k != "prompt"}
        completions: list[Any] = rollout.completion_texts
        if isinstance(rows[0]["prompt"], list):  # conversational: completions as assistant messages, as TRL
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        t1 = time.perf_counter()
        out = self.reward(rollout.prompts, completions, **columns)
        timing = {"time/generation_seconds": t_gen, "time/reward_seconds": time.perf_counter() - t1}
        # For align.monitors: repetition, and the denominator of the rubrics' flagged counts.
        timing["completions/repeated_ngram_rate"] = repeated_ngram_rate(rollout.completion_texts)
        timing["completions/count"] = float(len(rollout))
        self._check_some_reward(out)
        self._log_samples(rows, rollout, out)
        return rollout, out, timing

    def _importance_weights(
        self, trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The config's importance-sampling correction (``is_correction_mode``, ``is_cap``) of the trainer's
        rollout-time log-probs against the sampler's, ``(B, C)`` each, over ``mask``: weights ``(B, C)`` for
        the policy loss and the ``rollout/*`` mismatch metrics (:func:`align.losses.is_correction`)."""
        cfg = self.config
        if sampler_logprobs is None:
            raise RuntimeError(
                f"is_correction {cfg.is_correction!r} needs the sampler's log-probs, and the sampler returned none"
            )
        level, mode = cfg.is_correction_mode
        weights, metrics = is_correction(
            trainer_logprobs, sampler_logprobs, mask, level=level, mode=mode, cap=cfg.is_cap
        )
        return weights, {k: float(v) for k, v in metrics.items()}

    def _sync_sampler(self, policy: Any = None) -> None:
        """Hand the sampler the policy's weights once per optimizer step."""
        if self._weights_version != self.state.step:
            self.generator.sync_weights(policy if policy is not None else self._sampled_policy)
            self._weights_version = self.state.step

    def _check_some_reward(self, out: Any) -> None:
        """Stop when no completion of the whole rollout (all processes) got a reward: training on it would
        take zero-gradient steps to the end and exit 0."""
        scored = sum(t == t for t in out.total)  # NaN != NaN: a missing reward
        if self._global_sum(float(scored)) > 0:
            return
        nones = ", ".join(
            f"{name}: {sum(s is None for s in v)} of {len(v)} None" for name, v in out.per_func.items()
        )
        raise MissingRewardError(
            f"rollout {int(self.state.counters.get('rollout/count', 0)) + 1}: no completion got a reward "
            f"({nones}; the rest failed, see reward/<name>/nonfinite and /timeouts). Check that the "
            "dataset has the columns the rewards read (answer, solution, answerKey) and that they parse"
        )

    def _log_samples(self, rows: list[dict], rollout: Rollout, out: Any) -> None:
        """The first ``log_completions`` samples of the rollout: step, group (the prompt's index in this
        process's rollout), prompt, completion, total reward and each reward function's score (what
        ``align report``'s samples browser shows)."""
        n = self.config.log_completions
        if not n or (self.state.step + 1) % self.config.logging_steps:
            return
        G = rollout.num_generations
        totals = out.total
        self.log_step_record(
            COMPLETIONS_FILE,
            [
                {
                    "step": self.state.step + 1,
                    "prompt": rows[i // G]["prompt"],
                    "completion": rollout.completion_texts[i],
                    "group": i // G,
                    "reward": totals[i] if totals[i] == totals[i] else None,  # NaN = missing
                    "rewards": {name: scores[i] for name, scores in out.per_func.items()},
                    **{k: v for k, v in rows[i // G].items() if k in ("answer", "answerKey")},
                }
                for i in range(min(n, len(rollout)))
            ],
        )


class _NumberedRows(Dataset):
    """A dataset's rows as ``(index, row)`` pairs, so that a prompt can be named by its row."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.rows[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, Any]]:
        # A datasets.Dataset fetches a batch in one call (torch's fetcher uses __getitems__ when present).
        fetch = getattr(self.rows, "__getitems__", None)
        rows = fetch(indices) if fetch is not None else [self.rows[i] for i in indices]
        return list(zip(indices, rows))


# The prompt budget: max_prompt_length against the model's context.


def _sane(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < _SANE_CONTEXT


def model_context_length(model: Any, tokenizer: Any = None) -> tuple[int, str] | None:
    """The model's context in tokens and where it was read: the model config's ``max_position_embeddings``
    (``n_positions`` for GPT-2-style configs; a multimodal config's text part) or the tokenizer's
    ``model_max_length``, the smaller when both are set and sane; None when neither is."""
    config = getattr(base_model(model), "config", None) if model is not None else None
    get_text = getattr(config, "get_text_config", None)
    config = get_text() if callable(get_text) else config
    found = [
        (value, f"{name} of the model config")
        for name in ("max_position_embeddings", "n_positions")
        if _sane(value := getattr(config, name, None))
    ][:1]
    if _sane(value := getattr(tokenizer, "model_max_length", None)):
        found.append((value, "model_max_length of the tokenizer"))
    return min(found) if found else None


def _local_context_length(model_name_or_path: str | None) -> tuple[int, str] | None:
    """``max_position_embeddings`` from a local model directory's config.json (before the model loads);
    None for hub ids, the embedded model, or anything unreadable (the trainer checks the loaded model)."""
    if not model_name_or_path:
        return None
    path = Path(model_name_or_path) / "config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    for name in ("max_position_embeddings", "n_positions"):
        if _sane(config.get(name)):
            return config[name], f"{name} in {path}"
    return None


def check_prompt_room(
    max_prompt_length: int | None, max_new_tokens: int, context: tuple[int, str] | None
) -> None:
    """``ConfigError`` naming both fields when a prompt of ``max_prompt_length`` tokens (or, unset, any
    prompt at all) and ``max_new_tokens`` do not fit the model's ``context`` (tokens, source)."""
    if context is None:
        return
    size, source = context
    if max_prompt_length is None:
        if max_new_tokens >= size:
            raise ConfigError(
                f"max_new_tokens = {max_new_tokens} leaves no room for a prompt in the model's context of "
                f"{size} tokens ({source}); lower max_new_tokens (max_prompt_length defaults to the rest)"
            )
        return
    if max_prompt_length + max_new_tokens > size:
        raise ConfigError(
            f"max_prompt_length + max_new_tokens = {max_prompt_length} + {max_new_tokens} = "
            f"{max_prompt_length + max_new_tokens} is more than the model's context of {size} tokens "
            f"({source}); lower max_prompt_length or max_new_tokens"
        )


def resolve_max_prompt_length(config: RolloutConfig, model: Any, tokenizer: Any) -> int | None:
    """The prompt budget of a run: ``config.max_prompt_length`` checked against the model's context
    (:func:`model_context_length`), or, unset, that context minus ``max_new_tokens``; None (no limit, said
    once in the log) when the context is unknown. Called when the trainer is built, before anything is
    written."""
    context = model_context_length(model, tokenizer)
    check_prompt_room(config.max_prompt_length, config.max_new_tokens, context)
    if config.max_prompt_length is not None:
        return config.max_prompt_length
    if context is None:
        logger.warning(
            "the model's context length is unknown (no max_position_embeddings in its config, no "
            "model_max_length on its tokenizer): prompts are not limited; set max_prompt_length"
        )
        return None
    return context[0] - config.max_new_tokens


def rollout_seed(seed: int, rollout: int) -> int:
    """The sampling seed of rollout number ``rollout`` of a run seeded with ``seed``."""
    return stream_seed(seed, rollout)
