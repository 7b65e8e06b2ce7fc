"""What the on-policy LLM trainers (GRPO, PPO-RLHF) share: prompts in, scored rollouts out.

Both draw a batch of prompt rows from the dataset, sample completions with the current policy, score them
with ``align.rewards`` (the other dataset columns passed by name, TRL's contract), and turn the rollout into
update steps that the base loop takes one optimizer step at a time. Only the last step, the
algorithm (group advantages, or KL-shaped rewards, values and GAE) and its update plan differ; they live
in each trainer's ``_make_plan``.
"""

from __future__ import annotations

import time
from typing import Any

from torch.utils.data import DataLoader

from align.generation import Rollout, SamplingParams, make_generator, stream_seed
from align.trainer import COMPLETIONS_FILE

__all__ = ["RolloutMixin", "rollout_seed"]


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
