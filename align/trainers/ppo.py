r"""RLHF with PPO and a KL penalty to a reference policy: the InstructGPT recipe on the Trainer base.

Ouyang et al. (2022), eq. 2, after Ziegler et al. (2019) and Stiennon et al. (2020):

    objective(phi) = E_{x, y ~ pi_phi} [ r_theta(x, y) - beta * log(pi_phi(y | x) / pi_ref(y | x)) ]
                     + gamma * E_{x ~ D_pretrain} [ log pi_phi(x) ]                              (PPO-ptx)

The sequence-level objective is turned into a token-level MDP (state = prompt + completion so far,
action = next token), so that a value model and GAE can assign credit per token:

    r_t = -beta * KL_t                         for every completion token t < T
    r_T = -beta * KL_T + score(x, y)           on the last real token (minus a penalty if it is not EOS)
    A_t = GAE(gamma, lambda) over r_t and V(s_t);   R_t = A_t + V(s_t)

and then the same clipped surrogate (``align.losses.ppo_clip_loss``), clipped value loss
(``align.losses.value_loss``) and GAE (``align.advantages.gae``) that classic PPO runs on CartPole.
With top-k / top-p sampling the policy's log-probs are those of the truncated, renormalised distribution
sampled from (``align.generation.sampling_logprobs``; the KL reward compares the untruncated models); with
``is_correction`` on (a vLLM sampler, mu) the policy loss is weighted per token by the capped pi_old / mu
(``align.losses.is_correction``), pi_old being recomputed here at rollout time.

One PPO *iteration* (TRL's old PPOTrainer, OpenRLHF): sample completions for ``rollout_batch_size``
prompts; score them; compute old log-probs, reference log-probs and values with no gradient; assemble
per-token rewards; GAE; then ``num_epochs`` passes over the rollout in ``num_mini_batches``
shuffled minibatches, one optimizer step each. A trainer *step* is one optimizer step, so an iteration
is ``num_epochs * num_mini_batches`` steps and ``max_steps`` counts optimizer steps.

Roles (the four models of InstructGPT):

- policy: the trainable causal LM (full weights or a LoRA adapter);
- value model: a scalar head, either on its own backbone (``value_model="separate"``, InstructGPT; it
  can start from the reward model's weights) or on the policy's last hidden state (``"shared"``: one
  backbone for both, the cheapest on CPU);
- reference: the policy before training; under LoRA the policy with its adapter disabled (no copy);
- reward: any reward function of ``align.rewards``, e.g. ``reward_model:<path>`` for a Bradley-Terry
  model from ``recipes/reward_model.py`` (it works on text, so its tokenizer may differ from the
  policy's) or a verifiable reward such as ``math``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from align.advantages import explained_variance, gae, whiten
from align.config import ConfigError, ModelConfig, TrainConfig, check_range
from align.forward import base_model, position_ids, rollout_logprobs, whole_forward
from align.generation import Rollout, sampling_logprobs, truncates
from align.losses import (
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    ppo_clip_loss,
    selective_log_softmax,
    sft_loss,
    value_loss,
)
from align.models import eval_mode, make_reference, reference_model, unwrap_model
from align.rewards import CombinedReward
from align.trainer import NonFiniteError, Trainer, UpdateStep
from align.trainers.common import disable_dropout
from align.trainers.rollout import RolloutConfig, RolloutMixin, combined_reward, resolve_max_prompt_length

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PPOConfig",
    "PPOTrainer",
    "PolicyAndValue",
    "explained_variance",
    "per_token_rewards",
]


@dataclass
class PPOConfig(RolloutConfig, ModelConfig, TrainConfig):
    """PPO-RLHF with a KL penalty. Batch sizes count completions (rows of the rollout)."""

    output_dir: str = "outputs/ppo_rlhf"
    """Where metrics.jsonl, config.yaml, completions.jsonl, reward_kl.png and the final policy go."""
    dataset_name: str | None = None
    """Prompts: a local JSONL/Parquet file or folder, or a hub dataset with a 'prompt' column (chat
    messages or text); empty = the prompts of the shipped preference pairs (data/prefs)."""
    eval_limit: int = 32
    """Evaluate on the first N held-out prompts (0 = all)."""
    eval_samples: int = 1
    """Completions sampled per held-out prompt (temperature 1) for the held-out score and KL."""
    reward_funcs: list[str] = field(default_factory=lambda: ["reward_model:outputs/reward_model/model"])
    """Reward names (align.rewards): reward_model:PATH (a trained Bradley-Terry model), math, choice, ..."""
    reward_model_batch_size: int = 16
    """Sequences per forward pass of a reward_model:PATH reward."""

    value_model: Literal["separate", "shared"] = "separate"
    """Value function: its own backbone with a scalar head (InstructGPT), or a head on the policy's last
    hidden state (one backbone for both)."""
    value_model_name_or_path: str | None = None
    """Backbone (and head) of a separate value model; default: the policy's model. A reward model's path
    starts the value model from the reward model, as InstructGPT does."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    clip_eps_value: float | None = 0.2
    """Value clipping range around the rollout-time values (PPO2; TRL cliprange_value); empty = none."""

    rollout_batch_size: int = 16
    """Completions sampled per process per PPO iteration; must equal per_device_train_batch_size x
    gradient_accumulation_steps x num_mini_batches."""
    num_generations: int = 1
    """Completions sampled per prompt (rows of one prompt are consecutive)."""
    num_mini_batches: int = 1
    """Minibatches per PPO epoch; each is one optimizer step."""
    num_epochs: int = 4
    """Passes over each rollout (PPO epochs; TRL num_ppo_epochs)."""
    max_new_tokens: int = 48
    """Most tokens per completion."""
    gamma: float = 1.0
    """Discount over completion tokens."""
    gae_lambda: float = 0.95
    """GAE lambda (TRL lam)."""
    whiten_advantages: bool = True
    """Normalise advantages over the rollout's completion tokens (zero mean, unit variance)."""
    whiten_rewards: bool = False
    """Rescale per-token rewards to unit variance over the rollout (the mean is kept)."""

    kl_coef: float = 0.05
    """beta: the KL penalty coefficient (the starting value when adaptive_kl is on)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimate folded into the reward: k1 = log pi - log pi_ref (InstructGPT), k2, or k3."""
    adaptive_kl: bool = False
    """Move beta toward kl_target with Ziegler et al.'s proportional controller."""
    kl_target: float = 6.0
    """Target KL per sequence (nats) of the adaptive controller."""
    kl_horizon: int = 10000
    """Horizon of the adaptive controller, in completions."""
    missing_eos_penalty: float | None = None
    """Subtract this from the score of completions that reach max_new_tokens without EOS."""

    ptx_dataset_name: str | None = None
    """PPO-ptx: an SFT dataset (messages or prompt/completion) whose language-modelling loss is mixed in;
    'default' = the shipped data/sft; empty = off."""
    ptx_coef: float = 0.0
    """PPO-ptx: gamma, the weight of the language-modelling loss."""
    ptx_batch_size: int = 4
    """PPO-ptx: SFT rows per micro-batch."""
    ptx_max_length: int = 256
    """PPO-ptx: most tokens per SFT row; longer rows are truncated (keeping the start), as in the SFT recipe."""

    # CPU defaults for the embedded model (recipes/configs/ppo/smollm2.yaml); GPU configs override.
    per_device_train_batch_size: int = 8
    """Completions per micro-batch."""
    gradient_accumulation_steps: int = 2
    """Micro-batches per minibatch (optimizer step)."""
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW."""
    max_steps: int = 40
    """Optimizer steps (an iteration is num_epochs x num_mini_batches steps)."""

    def validate(self) -> None:
        super().validate()
        check_range("rollout_batch_size", self.rollout_batch_size, 1)
        check_range("num_mini_batches", self.num_mini_batches, 1)
        per_iteration = (
            self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches
        )
        if self.rollout_batch_size != per_iteration:
            raise ConfigError(
                f"rollout_batch_size = {self.rollout_batch_size} must equal per_device_train_batch_size x "
                f"gradient_accumulation_steps x num_mini_batches = {self.per_device_train_batch_size} x "
                f"{self.gradient_accumulation_steps} x {self.num_mini_batches} = {per_iteration}"
            )
        if self.rollout_batch_size % self.num_generations:
            raise ConfigError(
                f"rollout_batch_size = {self.rollout_batch_size} must be divisible by num_generations = "
                f"{self.num_generations}"
            )
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("gae_lambda", self.gae_lambda, 0.0, 1.0)
        check_range("clip_eps_value", self.clip_eps_value, 0.0, low_inclusive=False, allow_none=True)
        check_range("vf_coef", self.vf_coef, 0.0)
        check_range("kl_target", self.kl_target, 0.0, low_inclusive=False)
        check_range("kl_horizon", self.kl_horizon, 1)
        check_range("missing_eos_penalty", self.missing_eos_penalty, 0.0, allow_none=True)
        check_range("ptx_coef", self.ptx_coef, 0.0)
        check_range("ptx_batch_size", self.ptx_batch_size, 1)
        check_range("ptx_max_length", self.ptx_max_length, 1)
        check_range("eval_samples", self.eval_samples, 1)
        check_range("reward_model_batch_size", self.reward_model_batch_size, 1)
        if self.ptx_coef > 0 and not self.ptx_dataset_name:
            raise ConfigError(
                "ptx_coef > 0 needs ptx_dataset_name (an SFT dataset, or 'default' for data/sft)"
            )
        if self.value_model == "shared" and self.value_model_name_or_path:
            raise ConfigError(
                "value_model_name_or_path is set but value_model is 'shared' (the head sits on the policy); "
                "use value_model: separate to give the value model its own backbone"
            )


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", section 2.2:

        e_t       = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta_t+1  = beta_t * (1 + K_beta * e_t),    K_beta = n_steps / horizon

    a proportional controller that raises beta when the policy's KL (per sequence, nats) overshoots the
    target and lowers it when it undershoots; ``n_steps`` is the number of completions the KL was measured
    on, so the adaptation rate per completion does not depend on the batch size.
    """

    def __init__(self, kl_coef: float, target: float, horizon: int) -> None:
        super().__init__(kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def per_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The KL-shaped per-token reward of RLHF-PPO (Ouyang et al. 2022, eq. 2; Stiennon et al. 2020, eq. 1).

        kl_t = KL estimate at token t (k1: log pi(y_t) - log pi_ref(y_t))
        r_t  = -kl_coef * kl_t  +  [t = last counted token] * score

    ``scores`` ``(B,)`` (after any EOS penalty); ``logprobs`` and ``ref_logprobs`` ``(B, T)`` at rollout time;
    ``mask`` ``(B, T)`` 1 on counted completion tokens (a row with none gets its score nowhere). Returns
    ``(rewards, kl, non_score)``, each ``(B, T)`` and 0 on padding, ``non_score = -kl_coef * kl``.
    """
    m = mask.bool()
    kl = torch.where(m, kl_estimate(logprobs, ref_logprobs, kl_estimator), torch.zeros_like(logprobs))
    non_score = -kl_coef * kl
    lengths = m.long().sum(-1)
    last = (lengths - 1).clamp(min=0)
    bonus = torch.zeros_like(non_score)
    has_token = lengths > 0
    bonus[has_token, last[has_token]] = scores[has_token].to(bonus.dtype)
    return non_score + bonus, kl, non_score


def _value_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(backbone, head)`` of a transformers sequence classifier (possibly a peft model): the backbone
    gives per-token hidden states, the head (``score``) maps them to per-token values."""
    base = base_model(model)  # a PeftModel injects LoRA layers in place
    head = getattr(base, "score", None)
    backbone = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    if head is None or backbone is None or backbone is base:
        raise TypeError(
            f"value model {type(base).__name__} is not a transformers sequence classifier with a 'score' head "
            "(load it with align.models.load_sequence_classifier(..., num_labels=1))"
        )
    return backbone, head


class PolicyAndValue(nn.Module):
    """The trainable models of PPO behind one ``forward``, so accelerate/DDP wrap and sync them together.

    ``value_model``: a sequence classifier with ``num_labels=1``, or ``None`` for a head on the policy ("shared").
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        if value_model is None:
            hidden = unwrap_model(policy).config.get_text_config().hidden_size
            # Zero init: values start at 0, so the first advantages are the (discounted) rewards themselves.
            self.value_head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
            dtype = next(p.dtype for p in policy.parameters())
            self.value_head.to(dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        num_completion: int,
        *,
        with_logits: bool = True,
        with_values: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits ``(B, C, V)`` (position t predicts completion token t) and values ``(B, C)``, ``values[:, t] =
        V(prompt + completion[:t])``, from ``input_ids`` ``(B, P + C)``: left-padded prompt, right-padded completion.
        """
        C = num_completion
        logits = values = None
        shared = self.value_model is None
        if with_logits or (with_values and shared):
            logits, hidden = whole_forward(
                self.policy,
                input_ids,
                attention_mask,
                C,
                with_logits=with_logits,
                hidden=with_values and shared,
            )
            if hidden is not None:
                values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        if with_values and not shared:
            backbone, head = _value_parts(self.value_model)
            hidden = backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids(attention_mask),
                use_cache=False,
            ).last_hidden_state[:, -(C + 1) : -1]
            values = head(hidden).squeeze(-1)
        return logits, values


@dataclass
class PPOMicroBatch:
    """Rows of a rollout for the loss. Shapes: (B, P) prompt, (B, C) completion and per-token tensors."""

    input_ids: torch.Tensor
    """(B, P + C), as attention_mask."""
    attention_mask: torch.Tensor
    completion_ids: torch.Tensor
    mask: torch.Tensor
    """(B, C) 1 = counted completion token."""
    old_logprobs: torch.Tensor
    """(B, C) log-probs at rollout time (the policy before this iteration's updates)."""
    old_values: torch.Tensor
    """(B, C) values at rollout time."""
    advantages: torch.Tensor
    returns: torch.Tensor
    """(B, C) value targets."""
    ptx_scale: float = 0.0
    """Factor of the PPO-ptx term in this micro-batch's loss (see ``PPOTrainer._minibatch_plan``)."""
    is_weights: torch.Tensor | None = None
    """(B, C) importance weights pi_old / mu of the policy loss (``is_correction``), None when off."""


def _check_inputs(config: PPOConfig, train_dataset: Any, value_model: Any, ptx_dataset: Any) -> None:
    """Refuse what PPOTrainer cannot train on, before any model is wrapped."""
    if config.env_id is None:
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError("PPOTrainer: train_dataset is empty; it needs rows with a 'prompt' column")
        columns = getattr(train_dataset, "column_names", None) or list(train_dataset[0])
        if "prompt" not in columns:
            raise ValueError(f"PPOTrainer: train_dataset needs a 'prompt' column; it has {columns}")
    if config.value_model == "separate" and value_model is None:
        raise ValueError(
            "value_model='separate' needs a value model (align.models.load_sequence_classifier(path, "
            "num_labels=1)); or set value_model='shared' for a head on the policy"
        )
    if config.value_model == "shared" and value_model is not None:
        raise ValueError("a value model was given but config.value_model is 'shared'")
    if config.ptx_coef > 0 and not ptx_dataset:
        raise ValueError("ptx_coef > 0 needs ptx_dataset (tokenised SFT rows)")


class PPOTrainer(RolloutMixin, Trainer):
    """PPO-RLHF on the Trainer base (see the module docstring for the roles of the models).

    ``train_dataset`` rows have a ``prompt`` and the columns the rewards read; ``ptx_dataset`` holds tokenised
    SFT rows (``align.chat_data.tokenize_sft``) for PPO-ptx.
    """

    progress_keys = ("score/mean", "kl", "beta", "eval/score")
    plan_types = (PPOMicroBatch,)

    def __init__(
        self,
        config: PPOConfig,
        model: nn.Module,
        tokenizer: Any,
        reward_funcs: Sequence[Callable] | CombinedReward,
        train_dataset: Any,
        *,
        value_model: nn.Module | None = None,
        evaluator: Callable | None = None,
        ref_model: nn.Module | None = None,
        ptx_dataset: list[dict[str, list[int]]] | None = None,
        callbacks: list | None = None,
    ) -> None:
        _check_inputs(config, train_dataset, value_model, ptx_dataset)
        self.max_prompt_length = resolve_max_prompt_length(config, model, tokenizer)
        self.train_dataset = train_dataset
        self.reward = combined_reward(reward_funcs, config) if config.env_id is None else None
        # The reference is taken before training (and before wrapping): under LoRA it is None.
        ref = ref_model if ref_model is not None else make_reference(model)
        self.ptx_dataset = ptx_dataset
        # Dropout off (as TRL's PPO does): the first epoch's ratio is then exactly 1 and the rollout-time
        # log-probs and values are those of the model being trained.
        for module in (model, value_model):
            if module is not None:
                disable_dropout(module)
        super().__init__(
            config,
            PolicyAndValue(model, value_model),
            tokenizer=tokenizer,
            callbacks=callbacks,
            evaluator=evaluator,
        )
        self.config: PPOConfig = config
        self.ref_model = (
            self.accelerator.prepare_model(ref, evaluation_mode=True) if ref is not None else None
        )
        self.kl_ctl: FixedKLController = (
            AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
            if config.adaptive_kl
            else FixedKLController(config.kl_coef)
        )
        self.init_rollouts(self.policy, tokenizer)
        self._ptx_iter: Any = None
        self._ptx_epoch = 0
        self._iteration_start: float | None = None

    @property
    def policy(self) -> nn.Module:
        """The policy inside the (possibly wrapped) policy-and-value module."""
        return unwrap_model(self.model).policy

    @property
    def prompts_per_rollout(self) -> int:
        return self.config.rollout_batch_size // self.config.num_generations

    @torch.no_grad()
    def _rollout_forward(
        self, rollout: Rollout
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Old log-probs of the sampled (top-k / top-p truncated) distribution, values, reference log-probs,
        and the policy's untruncated log-probs (for the KL with the reference), ``(N, C)`` each."""
        cfg = self.config
        ids, attn = rollout.input_ids(), rollout.attention_mask()
        C = rollout.completion_ids.shape[1]
        old, full, vals = [], [], []
        with eval_mode(self.model):
            for s in range(0, len(rollout), cfg.per_device_train_batch_size):
                sl = slice(s, s + cfg.per_device_train_batch_size)
                logits, values = self.model(ids[sl], attn[sl], C)
                logits = logits.float() / cfg.temperature
                old.append(self._sampled_logprobs(logits, rollout.completion_ids[sl]))
                whole = truncates(cfg.top_k, cfg.top_p)
                full.append(selective_log_softmax(logits, rollout.completion_ids[sl]) if whole else old[-1])
                vals.append(values.float())
            with reference_model(self.policy, self.ref_model) as ref:
                refs = rollout_logprobs(
                    ref, rollout, cfg.per_device_train_batch_size, temperature=cfg.temperature
                )
        return torch.cat(old), torch.cat(vals), refs, torch.cat(full)

    def _sampled_logprobs(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, C) log-probs under the distribution sampled from: renormalised over the top-k / top-p set."""
        return sampling_logprobs(logits, ids, top_k=self.config.top_k, top_p=self.config.top_p)

    def _sum_over_processes(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over processes, so statistics (whitening) are those of the whole rollout."""
        acc = self.accelerator
        return acc.reduce(t.to(acc.device), "sum") if acc.num_processes > 1 else t

    def _check_values(self, values: torch.Tensor, mask: torch.Tensor, where: str) -> None:
        bad = ~torch.isfinite(values) & mask.bool()
        if bool(bad.any()):
            raise NonFiniteError(
                f"step {self.state.step + 1}: the value model produced {int(bad.sum())} non-finite values ({where}); "
                "lower learning_rate or vf_coef, enable clip_eps_value, or check the value model's weights"
            )

    @torch.no_grad()
    def _make_plan(self, rows: list[dict[str, Any]], prompt_ids: list[list[int]]) -> list[UpdateStep]:
        self._start_clock()
        rollout, out, timing = self.sample_and_score(
            rows, prompt_ids, self.policy, return_logprobs=self._sampler_logprobs
        )
        return self._plan_rollout(rollout, out.total, {**self.reward.metrics(), **timing})

    def _start_clock(self) -> None:
        if self._iteration_start is None:
            # The first iteration's clock starts here, so evaluations before training do not count as its time.
            self._iteration_start = time.perf_counter()

    @property
    def _sampled_policy(self) -> nn.Module:
        return self.policy

    @property
    def _sampler_logprobs(self) -> bool:
        # pi_old is recomputed in the same forward as the values; mu is needed only for is_correction.
        return self.config.is_correction_mode is not None

    def _scores(self, score_list: list[float], rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, scored)`` ``(N,)``: a completion without a reward (NaN: see align.rewards.combine) is
        masked out of the loss, its normaliser, the whitening and GAE; its score is set to 0 only so that the
        arithmetic stays finite. The EOS penalty is applied here."""
        scores = torch.tensor(score_list, dtype=torch.float32, device=rollout.completion_ids.device)
        scored = ~torch.isnan(scores)
        scores = torch.where(scored, scores, torch.zeros_like(scores))
        if self.config.missing_eos_penalty is not None:
            scores = scores - self.config.missing_eos_penalty * (~rollout.is_eos).float()
        return scores, scored

    def _update_kl_controller(self, seq_kl: torch.Tensor, scored: torch.Tensor) -> float:
        """Feed the KL controller the mean sequence KL of every process's scored completions; returns it."""
        acc = self.accelerator
        stats = torch.tensor([float(seq_kl[scored].sum()), float(scored.sum())], device=acc.device)
        stats = acc.reduce(stats, "sum") if acc.num_processes > 1 else stats
        mean_seq_kl = float(stats[0] / stats[1])
        self.kl_ctl.update(mean_seq_kl, int(stats[1]))
        return mean_seq_kl

    @torch.no_grad()
    def _plan_rollout(
        self, rollout: Rollout, score_list: list[float], given: dict[str, float]
    ) -> list[UpdateStep]:
        """KL-shaped per-token rewards from the scores ``(N,)`` (NaN = no reward; placed on each row's last
        trained token, so an episode's return comes after its last turn), values, GAE over the trained tokens
        (an episode's observation tokens are skipped, so GAE runs across turns over the policy's own tokens),
        and the minibatch steps. ``given`` (rewards, timings) joins the first step's metrics."""
        cfg = self.config
        self._start_clock()
        timing = {k: v for k, v in given.items() if k.startswith("time/")}
        scores, scored = self._scores(score_list, rollout)
        mask = rollout.train_mask * scored[:, None].to(rollout.completion_mask.dtype)
        logprobs, values, ref_logprobs, full_logprobs = self._rollout_forward(rollout)
        self._check_values(values, mask, "at rollout time")
        is_weights, is_metrics = torch.ones_like(logprobs), {}
        if cfg.is_correction_mode is not None:
            is_weights, is_metrics = self._importance_weights(logprobs, rollout.logprobs, mask)
        beta = self.kl_ctl.value
        rewards, kl, non_score = per_token_rewards(
            scores, full_logprobs, ref_logprobs, mask, kl_coef=beta, kl_estimator=cfg.kl_estimator
        )
        if cfg.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False, reduce=self._sum_over_processes)
        advantages, returns = gae(rewards, values, gamma=cfg.gamma, lam=cfg.gae_lambda, mask=mask)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask, reduce=self._sum_over_processes)

        mean_seq_kl = self._update_kl_controller(kl.sum(-1), scored)
        lengths = rollout.completion_lengths.float()
        now = time.perf_counter()
        metrics = {
            **given,
            **is_metrics,
            "score/mean": float(scores[scored].mean()) if scored.any() else float("nan"),
            "score/std": float(scores[scored].std()) if int(scored.sum()) > 1 else 0.0,
            "reward/non_score": float(non_score.sum(-1).mean()),
            "reward/rlhf": float((scores + non_score.sum(-1))[scored].mean())
            if scored.any()
            else float("nan"),
            "kl": mean_seq_kl,
            "beta": beta,
            "value/mean": float(masked_mean(values, mask)),
            "value/explained_variance": explained_variance(values, returns, mask),
            "completions/mean_length": float(lengths.mean()),
            "completions/eos_fraction": float(rollout.is_eos.float().mean()),
            "completions/tokens": float(lengths.sum()),
            "throughput/completion_tokens_per_second": float(lengths.sum())
            / max(now - self._iteration_start, 1e-9),
        }
        self._iteration_start = now

        tensors = (logprobs, values, advantages, returns, is_weights)
        return self._minibatch_plan(rollout, mask, tensors, metrics, timing)

    def _minibatch_plan(
        self,
        rollout: Rollout,
        mask: torch.Tensor,
        tensors: tuple[torch.Tensor, ...],
        metrics: dict[str, float],
        timing: dict,
    ) -> list[UpdateStep]:
        """``num_epochs`` x ``num_mini_batches`` optimizer steps over shuffled minibatches of the rollout,
        each split into ``gradient_accumulation_steps`` micro-batches weighted by their counted tokens
        (``mask`` ``(B, C)``: the completion tokens that count, none for a completion without a reward)."""
        cfg, acc = self.config, self.accelerator
        ids, attn = rollout.input_ids(), rollout.attention_mask()
        N = len(rollout)
        per_minibatch = N // cfg.num_mini_batches
        W, n_acc = acc.num_processes, cfg.gradient_accumulation_steps
        # The rollout's statistics describe every optimizer step of this iteration, so each step logs them
        # (KL, beta and the non-score reward every step); the iteration's counters and timings (tokens,
        # seconds, throughput) go on its first step only, so that summing them over steps stays true.
        per_iteration = {"completions/tokens", "throughput/completion_tokens_per_second", *timing}
        shared = {k: v for k, v in metrics.items() if k not in per_iteration}
        generator = torch.Generator().manual_seed(cfg.seed + self.state.step)
        steps: list[UpdateStep] = []
        for _epoch in range(cfg.num_epochs):
            order = torch.randperm(N, generator=generator).to(mask.device)
            for m in range(cfg.num_mini_batches):
                mb_rows = order[m * per_minibatch : (m + 1) * per_minibatch]
                total = self._global_sum(float(mask[mb_rows].sum()))
                micro = []
                for chunk in torch.tensor_split(mb_rows, n_acc):
                    if chunk.numel():
                        mb = self._slice(ids, attn, rollout, chunk, *tensors, mask)
                        w = float(mask[chunk].sum())
                        # PPO-ptx is one term per optimizer step, not a token mean: scale it so that the
                        # base's weighting (w / total, summed over micro-batches and processes) gives it
                        # ptx_coef / (micro-batches x processes) per micro-batch.
                        mb.ptx_scale = total / max(w * n_acc * W, 1e-9)
                        micro.append((mb, w))
                steps.append(UpdateStep(micro, dict(shared) if steps else metrics, total))
        return steps

    def _slice(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor,
        rollout: Rollout,
        rows: torch.Tensor,
        logprobs: torch.Tensor,
        values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        is_weights: torch.Tensor,
        mask: torch.Tensor,
    ) -> PPOMicroBatch:
        """Rows of the rollout, trimmed to their own longest completion and prompt (less padding to run)."""
        P = rollout.prompt_ids.shape[1]
        # The attended span, not the trained tokens' count: an episode's trained tokens have gaps.
        c_len = max(int(rollout.completion_mask[rows].sum(1).max()), 1)
        p_mask = rollout.prompt_mask[rows]
        p_start = int((p_mask.sum(0) > 0).nonzero().min()) if p_mask.any() else 0
        keep = torch.cat([torch.arange(p_start, P), torch.arange(P, P + c_len)]).to(ids.device)
        return PPOMicroBatch(
            input_ids=ids[rows][:, keep],
            attention_mask=attn[rows][:, keep],
            completion_ids=rollout.completion_ids[rows][:, :c_len],
            mask=mask[rows][:, :c_len],
            old_logprobs=logprobs[rows][:, :c_len],
            old_values=values[rows][:, :c_len],
            advantages=advantages[rows][:, :c_len],
            returns=returns[rows][:, :c_len],
            is_weights=is_weights[rows][:, :c_len] if self.config.is_correction_mode is not None else None,
        )

    def compute_loss(self, mb: PPOMicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        """token-mean(-min(r A, clip(r) A)) + vf_coef * token-mean(value loss) (+ the PPO-ptx term)."""
        cfg = self.config
        C = mb.completion_ids.shape[1]
        logits, values = self.model(mb.input_ids, mb.attention_mask, C)
        logits = logits.float() / cfg.temperature
        values = values.float()
        self._check_values(values, mb.mask, "in the loss")
        logprobs = self._sampled_logprobs(logits, mb.completion_ids)
        pg_loss, m_pg = ppo_clip_loss(
            logprobs,
            mb.old_logprobs,
            mb.advantages,
            mb.mask,
            clip_eps=cfg.clip_eps,
            aggregation="token",
            weights=mb.is_weights,
        )
        v_loss, m_v = value_loss(
            values, mb.old_values, mb.returns, mb.mask, clip_eps=cfg.clip_eps_value, aggregation="token"
        )
        loss = pg_loss + cfg.vf_coef * v_loss
        metrics: dict[str, Any] = {**m_pg, **m_v}
        with torch.no_grad():
            metrics["entropy"] = masked_mean(entropy_from_logits(logits.detach()), mb.mask)
        if cfg.ptx_coef > 0:
            ptx, m_ptx = self._ptx_loss()
            loss = loss + cfg.ptx_coef * mb.ptx_scale * ptx
            metrics.update(m_ptx)
        return loss, metrics

    def _ptx_loss(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """PPO-ptx: next-token loss of the policy on the next SFT micro-batch (InstructGPT eq. 2, gamma term)."""
        from align.chat_data import collate_sft

        if self._ptx_iter is None:
            g = torch.Generator().manual_seed(self.config.seed + self._ptx_epoch)
            order = torch.randperm(len(self.ptx_dataset), generator=g).tolist()
            self._ptx_iter = iter(
                [
                    order[i : i + self.config.ptx_batch_size]
                    for i in range(0, len(order), self.config.ptx_batch_size)
                ]
            )
        try:
            idx = next(self._ptx_iter)
        except StopIteration:
            self._ptx_iter, self._ptx_epoch = None, self._ptx_epoch + 1
            return self._ptx_loss()
        batch = collate_sft([self.ptx_dataset[i] for i in idx], self.tokenizer.pad_token_id)
        device = self.accelerator.device
        logits = self.policy(
            input_ids=batch["input_ids"].to(device),
            attention_mask=None if batch["attention_mask"] is None else batch["attention_mask"].to(device),
            position_ids=batch["position_ids"].to(device),
            use_cache=False,
        ).logits
        ids, mask = batch["input_ids"].to(device), batch["mask"].to(device)
        loss, m = sft_loss(logits[:, :-1].float(), ids[:, 1:], mask[:, 1:])
        return loss, {"loss/ptx": m["loss/sft"]}

    def on_step_end(self, metrics: dict[str, float]) -> None:
        metrics["beta/current"] = self.kl_ctl.value

    def extra_state_dict(self) -> dict[str, Any]:
        return {"kl_ctl": self.kl_ctl.state_dict(), "ptx_epoch": self._ptx_epoch}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        if "kl_ctl" in state:
            self.kl_ctl.load_state_dict(state["kl_ctl"])
        self._ptx_epoch = int(state.get("ptx_epoch", 0))

    def save_model(self, path: str | Path, *, merge_lora: bool | None = None) -> Path:
        """Save the policy (adapter or full weights, with the tokenizer) to ``path``; a separate value model
        goes to ``path/../value_model`` and a shared value head to ``path/value_head.safetensors``."""
        from align.models import save_pretrained

        path = Path(path)
        merge_lora = self.config.merge_lora_on_save if merge_lora is None else merge_lora
        acc = self.accelerator
        acc.wait_for_everyone()
        inner = unwrap_model(self.model)
        if acc.is_main_process:
            save_pretrained(inner.policy, self.tokenizer, path, merge_lora=merge_lora, exist_ok=True)
            if inner.value_model is not None:
                save_pretrained(inner.value_model, self.tokenizer, path.parent / "value_model", exist_ok=True)
            else:
                from safetensors.torch import save_file

                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in inner.value_head.state_dict().items()},
                    path / "value_head.safetensors",
                )
        acc.wait_for_everyone()
        return path
