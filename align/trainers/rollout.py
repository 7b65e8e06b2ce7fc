"""What the on-policy LLM trainers (GRPO, PPO-RLHF) share: prompts in, scored rollouts out.

Both draw a batch of prompt rows from the dataset, sample completions with the current policy, score them
with ``align.rewards`` (the other dataset columns passed by name, TRL's contract), and turn the rollout into
update steps that the base loop takes one optimizer step at a time. Only the last step, the
algorithm (group advantages, or KL-shaped rewards, values and GAE) and its update plan differ; they live
in each trainer's ``_make_plan``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch.utils.data import DataLoader

from align.config import ConfigError, check_range
from align.generation import Rollout, SamplingParams, make_generator, stream_seed
from align.trainer import COMPLETIONS_FILE

__all__ = ["RolloutConfig", "RolloutMixin", "rollout_seed"]

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
        if not self.reward_funcs:
            raise ConfigError("reward_funcs must name at least one reward function")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(
                f"reward_weights has {len(self.reward_weights)} values for {len(self.reward_funcs)} reward_funcs"
            )


class RolloutMixin:
    """Mixed into a ``Trainer`` subclass (listed first). The subclass sets ``train_dataset``, ``reward`` (a
    ``CombinedReward``) and ``config`` (with ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
    ``num_generations``, ``log_completions``), defines :attr:`prompts_per_rollout` and
    ``_make_plan(rows) -> list[UpdateStep]``, and calls :meth:`init_rollouts` after ``Trainer.__init__``."""

    #: prompts drawn from the dataset per rollout (per process).
    prompts_per_rollout: int

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
            kwargs.update(host=cfg.vllm_server_host, port=cfg.vllm_server_port)
        self.generator = make_generator(cfg.generation_backend, policy, tokenizer, **kwargs)
        self._weights_version = -1

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of ``prompts_per_rollout`` raw prompt rows (lists of dicts, untokenised: the
        sampler applies the chat template and the rewards read the other columns); a short last batch is
        dropped so that every rollout has the same size."""
        return DataLoader(
            self.train_dataset,
            batch_size=self.prompts_per_rollout,
            shuffle=True,
            drop_last=True,
            collate_fn=list,  # rows stay dicts of Python objects (chat messages, answers)
        )

    def plan_updates(self) -> list[Any]:
        """Draw the next prompt rows, roll out and score them, and return the trainer's update steps on them
        (``_make_plan``); the rollout counter ``rollout/count`` goes up by one."""
        rows = self.next_batch()
        plan = self._make_plan(rows)
        self.state.counters["rollout/count"] = self.state.counters.get("rollout/count", 0.0) + 1
        return plan

    def sampling_params(self, *, return_logprobs: bool) -> SamplingParams:
        """The config's sampling settings (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
        ``num_generations``) for one rollout; ``return_logprobs`` asks the sampler for the sampled tokens'
        log-probs only where the algorithm uses them (GRPO's old log-probs when it takes several steps per
        rollout), since computing them slows sampling."""
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
        self, rows: list[dict[str, Any]], policy: Any, *, return_logprobs: bool
    ) -> tuple[Rollout, Any, dict[str, float]]:
        """Sample ``num_generations`` completions per row's prompt (weights synced to the sampler once per
        optimizer step) and score them. Returns the rollout, the ``RewardOutput`` and timing metrics."""
        G = self.config.num_generations
        t0 = time.perf_counter()
        if self._weights_version != self.state.step:
            self.generator.sync_weights(policy)
            self._weights_version = self.state.step
        params = self.sampling_params(return_logprobs=return_logprobs)
        rollout: Rollout = self.generator.generate([r["prompt"] for r in rows], params)
        t_gen = time.perf_counter() - t0
        columns = {k: [r[k] for r in rows for _ in range(G)] for k in rows[0] if k != "prompt"}
        completions: list[Any] = rollout.completion_texts
        if isinstance(rows[0]["prompt"], list):  # conversational: completions as assistant messages, as TRL
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        t1 = time.perf_counter()
        out = self.reward(rollout.prompts, completions, **columns)
        timing = {"time/generation_seconds": t_gen, "time/reward_seconds": time.perf_counter() - t1}
        self._log_samples(rows, rollout, out.total)
        return rollout, out, timing

    def _log_samples(self, rows: list[dict], rollout: Rollout, totals: list[float]) -> None:
        n = self.config.log_completions
        if not n or (self.state.step + 1) % self.config.logging_steps:
            return
        G = rollout.num_generations
        self.log_step_record(
            COMPLETIONS_FILE,
            [
                {
                    "step": self.state.step + 1,
                    "prompt": rows[i // G]["prompt"],
                    "completion": rollout.completion_texts[i],
                    "reward": totals[i],
                    **{k: v for k, v in rows[i // G].items() if k in ("answer", "answerKey")},
                }
                for i in range(min(n, len(rollout)))
            ],
        )


def rollout_seed(seed: int, rollout: int) -> int:
    """The sampling seed of rollout number ``rollout`` of a run seeded with ``seed``."""
    return stream_seed(seed, rollout)
