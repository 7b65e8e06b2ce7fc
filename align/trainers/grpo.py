r"""GRPO: PPO whose baseline is the mean reward of a group of completions for the same prompt.

Shao et al. (2024), DeepSeekMath, eq. 3, with the variants used since:

    J(theta) = E_q E_{o_1..o_G ~ pi_old(.|q)} [ agg_{i,t} min(r_{i,t} A_i, clip(r_{i,t}, 1-eps, 1+eps_high) A_i)
                                               - beta * KL_k3(pi_theta || pi_ref)_{i,t} ]
    r_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_old(o_{i,t} | q, o_{i,<t})
    A_i     = (R_i - mean_j R_j) / (std_j R_j + eps)          ("group"; Dr. GRPO drops the std: "none")

``agg`` is the loss aggregation: "token" (DAPO: mean over every counted token of the batch),
"sequence" (the original: mean per completion, then over completions), "dr_grpo" (sum / (N * max_len)).
With top-k / top-p sampling, pi_theta and pi_old are the truncated, renormalised distributions sampled
from (``align.generation.sampling_logprobs``); the KL compares the untruncated models. With
``is_correction`` on (a vLLM sampler, mu), each token's clipped term is multiplied by the capped weight
pi_old / mu (``align.losses.is_correction``), pi_old being the trainer's own forward at rollout time.

Everything algorithmic is a call into ``align.losses`` and ``align.advantages``: the same
``ppo_clip_loss`` trains CartPole in ``align.rl``. This file only arranges the data:

1. ``plan_updates`` (``align.trainers.rollout``) draws the next prompts from the dataset; ``_make_plan``
   samples G completions each (``align.generation``), scores them (``align.rewards``), computes group
   advantages, reference log-probs when beta > 0, old log-probs when mu > 1 or is_correction is on (and
   then the importance weights), and returns mu optimizer
   steps (``UpdateStep``), each over ``gradient_accumulation_steps`` micro-batches.
2. Groups whose rewards are all equal have zero advantage, so with beta = 0 they carry no gradient at all:
   we drop them before the policy forward pass (they still count in the step's normaliser, so the update
   is exactly the one computed with them).
3. ``compute_loss`` returns a micro-batch's mean loss; the base weighs it by its tokens (or completions)
   over the whole generation batch of every process, so accumulation and process count do not change the
   update.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from align.advantages import group_advantages, group_std
from align.config import ConfigError, ModelConfig, TrainConfig, check_range
from align.forward import completion_logits
from align.generation import Rollout, sampling_logprobs, truncates
from align.losses import (
    aggregate,
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    ppo_clip_loss,
    selective_log_softmax,
)
from align.models import make_reference, reference_model
from align.rewards import CombinedReward
from align.trainer import Trainer, UpdateStep
from align.trainers.rollout import RolloutConfig, RolloutMixin, combined_reward, resolve_max_prompt_length


@dataclass
class GRPOConfig(RolloutConfig, ModelConfig, TrainConfig):
    """GRPO with verifiable or rubric rewards. Batch sizes count completions, as in TRL."""

    output_dir: str = "outputs/grpo_math"
    """Where metrics.jsonl, config.yaml, completions.jsonl, checkpoints/ and the final model go."""
    dataset_name: str | None = None
    """Prompts: a local JSONL/Parquet file or folder, or a hub dataset (MATH-500 or GSM8K schema); empty =
    the shipped data/math."""
    instruction: str | None = "Give the final answer as \\boxed{N}."
    """Instruction appended to each math problem; empty = reason step by step and box the answer (MATH-style)."""
    eval_limit: int = 100
    """Evaluate on the first N held-out problems (0 = all)."""
    num_generations: int = 8
    """G: completions sampled per prompt; the group whose mean reward is the baseline."""
    temperature: float = 0.7
    """Sampling temperature (also used to scale logits in the loss, so ratios are of the sampled policy).
    0.7, not TRL's 1.0: a small model solves few samples at 1.0, and groups with equal rewards carry no
    gradient (see the README's main-job row)."""
    clip_eps_high: float | None = None
    """Upper clip range (DAPO's clip-higher, e.g. 0.28; TRL epsilon_high); default = clip_eps."""
    scale_rewards: Literal["group", "none"] = "group"
    """Divide group-centred rewards by the group std ('group', GRPO) or not ('none', Dr. GRPO)."""
    loss_type: Literal["token", "sequence", "dr_grpo"] = "token"
    """Loss aggregation: token (DAPO), sequence (original GRPO), dr_grpo (constant normaliser)."""
    mask_truncated_completions: bool = False
    """Leave completions cut at max_new_tokens out of the loss (DAPO's overlong filtering)."""
    share_prompt_prefix: bool = True
    """Run each prompt once per group in the loss forward and reuse its KV cache (same logits, less compute)."""
    skip_zero_std_groups: bool = True
    """With kl_coef = 0, do not run the policy on groups whose rewards are all equal (their gradient is zero)."""
    eval_max_new_tokens: int | None = None
    """Token budget for held-out evaluation (default max_new_tokens)."""

    # Defaults for the main job on CPU (recipes/configs/grpo/smollm2_cpu.yaml); GPU configs override.
    per_device_train_batch_size: int = 32
    """Completions per micro-batch (prompts x num_generations)."""
    learning_rate: float = 2e-5
    warmup_steps: int = 2
    """Linear warm-up steps."""
    max_steps: int = 30
    """Optimizer steps (each generation batch gives num_epochs of them)."""

    def validate(self) -> None:
        super().validate()
        if self.instruction == "":
            self.instruction = None
        if self.num_generations < 2:
            raise ConfigError(
                f"num_generations must be >= 2 (GRPO's baseline is the mean of the group), got {self.num_generations}"
            )
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if per_step % self.num_generations:
            raise ConfigError(
                f"per_device_train_batch_size x gradient_accumulation_steps = {self.per_device_train_batch_size} x "
                f"{self.gradient_accumulation_steps} = {per_step} completions per step must be divisible by "
                f"num_generations = {self.num_generations}"
            )
        check_range("clip_eps_high", self.clip_eps_high, 0.0, low_inclusive=False, allow_none=True)

    @property
    def prompts_per_step(self) -> int:
        """Prompts per process per generation batch."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps // self.num_generations


@dataclass
class MicroBatch:
    """Rows of a rollout ready for the loss. Shapes: (B, P) prompt, (B, C) completion, (B,) advantages."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    """(B, C) 1 = token counts in the loss (may exclude truncated completions)."""
    attention_completion_mask: torch.Tensor
    """(B, C) 1 = sampled token (what the policy attends to)."""
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None
    ref_logprobs: torch.Tensor | None
    is_weights: torch.Tensor | None = None
    """(B, C) importance weights pi_old / mu of the policy loss (``is_correction``), None when off."""


class GRPOTrainer(RolloutMixin, Trainer):
    """Group Relative Policy Optimization on the Trainer base (see the module docstring).

    ``train_dataset`` rows have a ``prompt`` and the columns the rewards read; ``ref_model`` (for kl_coef > 0)
    defaults to a copy of the policy, or under LoRA to the adapter off.
    """

    progress_keys = ("reward/mean", "kl", "completions/mean_length", "eval/accuracy")
    plan_types = (MicroBatch,)

    def __init__(
        self,
        config: GRPOConfig,
        model: torch.nn.Module,
        tokenizer: Any,
        reward_funcs: Sequence[Callable] | CombinedReward,
        train_dataset: Any,
        *,
        ref_model: torch.nn.Module | None = None,
        evaluator: Callable | None = None,
        callbacks: list | None = None,
    ) -> None:
        if config.env_id is None and "prompt" not in train_dataset.column_names:
            raise ValueError(f"train_dataset needs a 'prompt' column; it has {train_dataset.column_names}")
        self.max_prompt_length = resolve_max_prompt_length(config, model, tokenizer)
        self.train_dataset = train_dataset
        self.reward = combined_reward(reward_funcs, config) if config.env_id is None else None
        super().__init__(config, model, tokenizer=tokenizer, callbacks=callbacks, evaluator=evaluator)
        self.config: GRPOConfig = config
        self.ref_model = None
        if config.kl_coef > 0:
            ref = ref_model if ref_model is not None else make_reference(self.model)
            self.ref_model = (
                self.accelerator.prepare_model(ref, evaluation_mode=True) if ref is not None else None
            )
        self.init_rollouts(self.model, tokenizer)

    @property
    def prompts_per_rollout(self) -> int:
        return self.config.prompts_per_step

    @torch.no_grad()
    def _make_plan(self, rows: list[dict[str, Any]], prompt_ids: list[list[int]]) -> list[UpdateStep]:
        """Sample and score G completions per prompt row (given as its prompt's token ids ``prompt_ids``)
        and plan ``num_epochs`` (mu) optimizer steps on them, each over ``gradient_accumulation_steps``
        micro-batches weighted by their counted tokens (``loss_type: token``) or completions, normalised
        over the whole generation batch."""
        rollout, out, timing = self.sample_and_score(
            rows, prompt_ids, self.model, return_logprobs=self._sampler_logprobs
        )
        return self._plan_rollout(rollout, out.total, {**self.reward.metrics(), **timing})

    @property
    def _sampled_policy(self) -> torch.nn.Module:
        return self.model

    @property
    def _sampler_logprobs(self) -> bool:
        # The sampler's log-probs: old log-probs when a second pass needs them, mu for is_correction.
        return self.config.num_epochs > 1 or self.config.is_correction_mode is not None

    @torch.no_grad()
    def _plan_rollout(
        self, rollout: Rollout, scores: list[float], metrics: dict[str, float]
    ) -> list[UpdateStep]:
        """Group advantages of ``scores`` ``(N,)`` (NaN = no reward) and the update steps on ``rollout``
        (G completions or episodes per group); ``metrics`` (rewards, timings) go on the first step."""
        cfg = self.config
        G = cfg.num_generations
        rewards = torch.tensor(scores, dtype=torch.float32, device=rollout.completion_ids.device)
        scale = "std" if cfg.scale_rewards == "group" else "none"
        advantages = group_advantages(rewards, G, scale=scale)
        zero_std = group_std(rewards, G) < 1e-6  # (num_prompts,)

        # A completion without a reward (NaN: see align.rewards.combine) is out of its group's baseline
        # (group_advantages skips NaN), out of the loss and out of its normaliser.
        scored = ~torch.isnan(rewards)
        mask = rollout.train_mask * scored[:, None].to(rollout.completion_mask.dtype)
        if cfg.mask_truncated_completions:
            mask = mask * rollout.is_eos[:, None].to(mask.dtype)
        keep = scored.clone()
        if cfg.kl_coef == 0 and cfg.skip_zero_std_groups:
            keep &= ~zero_std.repeat_interleave(G)
        # Rows dropped for a zero advantage (no KL term) still count in the mean's normaliser: the update
        # is exactly the one computed with them.
        token_mean = cfg.loss_type == "token"
        total = self._global_sum(float(mask.sum()) if token_mean else float(scored.sum()))

        metrics = {**metrics, **self._rollout_metrics(rollout, zero_std, keep)}
        idx = keep.nonzero().squeeze(-1)
        chunks = [c for c in torch.tensor_split(idx, cfg.gradient_accumulation_steps) if c.numel()]
        batches = [self._slice(rollout, c, mask, advantages) for c in chunks]
        weights = [
            float(mb.completion_mask.sum()) if token_mean else float(len(c)) for mb, c in zip(batches, chunks)
        ]
        if not batches:  # every group was uniform: one row at weight 0 keeps every process in the step
            batches, weights, chunks = (
                [self._slice(rollout, idx.new_zeros(1), mask, advantages)],
                [0.0],
                [idx.new_zeros(1)],
            )
        correct = cfg.is_correction_mode is not None
        trainer_lps, sampler_lps = [], []
        for mb, rows_idx in zip(batches, chunks):
            if cfg.kl_coef > 0:
                mb.ref_logprobs = self._logprobs(mb, reference=True)
            sampled = (
                None
                if rollout.logprobs is None
                else rollout.logprobs[rows_idx][:, : mb.completion_ids.shape[1]]
            )
            # With the correction, pi_old is the trainer's own forward (mu only enters the weights).
            own = self._logprobs(mb) if correct or (cfg.num_epochs > 1 and sampled is None) else None
            if cfg.num_epochs > 1:
                mb.old_logprobs = own if own is not None else sampled
            trainer_lps.append(own)
            sampler_lps.append(sampled)
        if correct:
            metrics.update(self._set_is_weights(batches, trainer_lps, sampler_lps))
        micro = list(zip(batches, weights))
        # Later passes reuse the tensors; generation metrics are logged once, with the pass that sampled.
        return [UpdateStep(micro, metrics if i == 0 else {}, total) for i in range(cfg.num_epochs)]

    def _set_is_weights(
        self,
        batches: list[MicroBatch],
        trainer_lps: list[torch.Tensor],
        sampler_lps: list[torch.Tensor | None],
    ) -> dict[str, float]:
        """Importance weights of every micro-batch from one call over the rollout's trained rows (each padded to
        the longest completion), so the ``rollout/*`` metrics are those of the whole rollout."""
        if any(lp is None for lp in sampler_lps):
            sampler_lps = [None]  # _importance_weights names the missing log-probs
        C = max(lp.shape[1] for lp in trainer_lps)

        def rows(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(t, (0, C - t.shape[1])) for t in tensors])

        mu = rows(sampler_lps) if sampler_lps[0] is not None else None
        masks = [mb.completion_mask for mb in batches]
        weights, metrics = self._importance_weights(rows(trainer_lps), mu, rows(masks))
        for mb, w in zip(batches, weights.split([len(m) for m in masks])):
            mb.is_weights = w[:, : mb.completion_ids.shape[1]]
        return metrics

    def _rollout_metrics(
        self, rollout: Rollout, zero_std: torch.Tensor, keep: torch.Tensor
    ) -> dict[str, float]:
        """Rewards per function, zero-variance groups, completion lengths and the rows left out."""
        lengths = rollout.completion_lengths.float()
        return {
            "reward/zero_std_group_fraction": float(zero_std.float().mean()),
            "completions/mean_length": float(lengths.mean()),
            "completions/max_length": float(lengths.max()),
            "completions/min_length": float(lengths.min()),
            "completions/clipped_ratio": float((~rollout.is_eos).float().mean()),
            "completions/tokens": float(lengths.sum()),
            "completions/skipped_fraction": float((~keep).float().mean()),
        }

    def _slice(
        self, rollout: Rollout, rows: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor
    ) -> MicroBatch:
        """Rows of the rollout, trimmed to their own longest prompt and completion (less padding to run)."""
        p_mask = rollout.prompt_mask[rows]
        c_mask = mask[rows]
        p_start = int((p_mask.sum(0) > 0).nonzero().min()) if p_mask.any() else 0
        c_len = max(int(rollout.completion_mask[rows].sum(1).max()), 1)
        prompt_ids = rollout.prompt_ids[rows][:, p_start:]
        completion_ids = rollout.completion_ids[rows][:, :c_len]
        return MicroBatch(
            prompt_ids=prompt_ids,
            prompt_mask=p_mask[:, p_start:],
            completion_ids=completion_ids,
            completion_mask=c_mask[:, :c_len],
            attention_completion_mask=rollout.completion_mask[rows][:, :c_len],
            advantages=advantages[rows],
            old_logprobs=None,
            ref_logprobs=None,
        )

    def _forward(self, model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
        """Logits for the completion tokens, (B, C, V), at the sampling temperature."""
        # Sharded engines (DeepSpeed, FSDP) gather parameters per forward call: keep one call there.
        share = self.config.share_prompt_prefix and self._plain_ddp()
        logits = completion_logits(
            model,
            mb.prompt_ids,
            mb.prompt_mask,
            mb.completion_ids,
            # Attend to the whole sampled completion (as during sampling), not the loss mask.
            mb.attention_completion_mask,
            share_prompt=share,
            prompt_model=self.accelerator.unwrap_model(model) if share else None,
        )
        return logits / self.config.temperature

    def _sampled_logprobs(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, C) log-probs under the distribution sampled from: renormalised over the top-k / top-p set."""
        return sampling_logprobs(logits.float(), ids, top_k=self.config.top_k, top_p=self.config.top_p)

    @torch.no_grad()
    def _logprobs(self, mb: MicroBatch, reference: bool = False) -> torch.Tensor:
        """The policy's log-probs of the sampled distribution (pi_old), or the reference's over its whole
        vocabulary (the KL penalty compares the untruncated models: the reference has no kept set)."""
        if reference:
            with reference_model(self.model, self.ref_model) as ref:
                logits = self._forward(ref, mb)
            return selective_log_softmax(logits.float(), mb.completion_ids)
        return self._sampled_logprobs(self._forward(self.model, mb), mb.completion_ids)

    def compute_loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        """agg(-min(r A, clip(r) A)) + beta agg(KL) over one micro-batch (see the module docstring)."""
        cfg = self.config
        logits = self._forward(self.model, mb)
        logprobs = self._sampled_logprobs(logits, mb.completion_ids)  # (B, C)
        old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
        mask = mb.completion_mask
        pg_loss, m = ppo_clip_loss(
            logprobs,
            old,
            mb.advantages,
            mask,
            clip_eps=cfg.clip_eps,
            clip_eps_high=cfg.clip_eps_high,
            aggregation=cfg.loss_type,
            max_len=cfg.max_new_tokens,
            weights=mb.is_weights,
        )
        loss = pg_loss
        metrics: dict[str, Any] = dict(m)
        if cfg.kl_coef > 0:
            assert mb.ref_logprobs is not None
            full = (
                selective_log_softmax(logits.float(), mb.completion_ids)
                if truncates(cfg.top_k, cfg.top_p)
                else logprobs
            )
            kl = kl_estimate(full, mb.ref_logprobs, cfg.kl_estimator)
            kl_loss = aggregate(kl, mask, cfg.loss_type, cfg.max_new_tokens)
            loss = loss + cfg.kl_coef * kl_loss
            metrics["kl"] = masked_mean(kl.detach(), mask)
        with torch.no_grad():
            metrics["entropy"] = masked_mean(entropy_from_logits(logits.detach().float()), mask)
        return loss, metrics

    def on_step_end(self, metrics: dict[str, float]) -> None:
        tokens = metrics.get("completions/tokens")
        if tokens is not None and metrics.get("time/step_seconds"):
            metrics["throughput/completion_tokens_per_second"] = tokens / metrics["time/step_seconds"]


__all__ = ["GRPOConfig", "GRPOTrainer", "MicroBatch"]
