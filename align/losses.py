"""Pure loss functions shared by the LLM trainers and the classic RL agents.

Every loss takes tensors and scalar hyperparameters and returns ``(loss, metrics)``: ``loss`` is a 0-dim
tensor to call ``backward`` on, ``metrics`` a ``dict[str, Tensor]`` of detached 0-dim tensors with slash keys
(``loss/policy``, ``clip/fraction``, ...). The helpers (masking, aggregation, log-probs, KL estimators) return
tensors.

Conventions:
- Time is the last dimension. LLM tensors are ``(B, T)`` (batch, completion tokens); classic RL tensors are
  ``(B,)`` (a flat minibatch of transitions) and go through the same functions.
- ``mask`` has the shape of the per-element loss; 1 (or ``True``) means the element counts, 0 means it is
  padding, a prompt token, a tool output, ... Any nonzero value counts: masks are binary, not weights.
  ``mask=None`` means every element counts.
- Inputs that the loss must treat as constants (advantages, old log-probs, returns, old values) are detached
  inside, so a caller who computed them with grad enabled cannot train the critic through the policy loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "aggregate",
    "bradley_terry_loss",
    "dpo_loss",
    "dr_grpo_aggregate",
    "entropy_from_logits",
    "is_correction",
    "ipo_loss",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "policy_gradient_loss",
    "ppo_clip_loss",
    "selective_log_softmax",
    "sequence_aggregate",
    "sequence_logprobs",
    "sft_loss",
    "token_aggregate",
    "token_logprobs",
    "value_loss",
]

Metrics = dict[str, torch.Tensor]

AGGREGATIONS = ("token", "sequence", "dr_grpo")
KL_ESTIMATORS = ("k1", "k2", "k3")
IS_LEVELS = ("token", "sequence")
IS_MODES = ("truncate", "mask")


def _bool_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(x, dtype=torch.bool)
    return mask.bool().expand_as(x)


def masked_sum(
    x: torch.Tensor, mask: torch.Tensor | None, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Sum of the elements of ``x`` (any shape) where ``mask`` (broadcastable; 1 = counts) is nonzero.

    Masked elements are selected out with ``torch.where`` rather than multiplied by 0, so padding that holds
    ``inf`` or ``nan`` (log-prob of a pad token, say) cannot poison the sum.
    """
    m = _bool_mask(x, mask)
    selected = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return selected.sum() if dim is None else selected.sum(dim)


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor | None, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Mean of the elements of ``x`` where ``mask`` is nonzero (as :func:`masked_sum`); 0 where nothing counts.

    An all-zero mask gives 0 (not ``nan``) with a zero gradient: a batch whose completions were all filtered
    must not turn the parameters into ``nan``.
    """
    m = _bool_mask(x, mask)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count.clamp(min=1).to(x.dtype)


def _as_rows(per_token_loss: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    # A 1-D loss (classic RL) is a batch of length-1 sequences, which makes all three aggregations the mean.
    m = _bool_mask(per_token_loss, mask)
    if per_token_loss.dim() == 1:
        return per_token_loss.unsqueeze(-1), m.unsqueeze(-1)
    return per_token_loss, m


def token_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Sum over every counted token in the batch / number of counted tokens (DAPO, Yu et al. 2025, sec. 3.3).

    ``per_token_loss`` and ``mask`` (1 = token counts) are ``(B, T)`` (or ``(B,)``). Every token weighs the same, so long completions are not down-weighted as they are by ``sequence``.
    """
    return masked_mean(per_token_loss, mask)


def sequence_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over each sequence's counted tokens, then over sequences (original GRPO, Shao et al. 2024, eq. 3).

    ``per_token_loss`` and ``mask`` (1 = token counts) are ``(B, T)`` (or ``(B,)``: sequences of length 1).
    A sequence with no counted token contributes 0 but still counts in the mean over ``B``, as in TRL's
    ``loss_type="grpo"``.
    """
    x, m = _as_rows(per_token_loss, mask)
    return masked_mean(x, m, dim=-1).mean()


def dr_grpo_aggregate(
    per_token_loss: torch.Tensor, mask: torch.Tensor | None, max_len: int | None = None
) -> torch.Tensor:
    """Sum over counted tokens / (B * max_len), the constant normaliser of Dr. GRPO (Liu et al. 2025).

    ``per_token_loss`` and ``mask`` (1 = token counts) are ``(B, T)`` (or ``(B,)``); ``max_len`` is usually the
    generation budget ``max_completion_length``, default ``T``. From "Understanding R1-Zero-Like Training: A Critical Perspective". A constant denominator removes the
    length bias of ``sequence`` (short wrong answers are punished more per token than long ones) and the
    batch-dependence of ``token``.
    """
    x, m = _as_rows(per_token_loss, mask)
    length = x.size(-1) if max_len is None else max_len
    num_rows = x.numel() // max(x.size(-1), 1)
    return masked_sum(x, m) / max(num_rows * length, 1)


def aggregate(
    per_token_loss: torch.Tensor, mask: torch.Tensor | None, how: str = "token", max_len: int | None = None
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar with :func:`token_aggregate`, :func:`sequence_aggregate` or
    :func:`dr_grpo_aggregate` (``how``); a ``(B,)`` loss (classic RL) gets the plain mean from all three.

    All three are linear in ``per_token_loss``: ``aggregate(a + b) == aggregate(a) + aggregate(b)``, which
    lets a trainer add a KL penalty aggregated separately.
    """
    if how == "token":
        return token_aggregate(per_token_loss, mask)
    if how == "sequence":
        return sequence_aggregate(per_token_loss, mask)
    if how == "dr_grpo":
        return dr_grpo_aggregate(per_token_loss, mask, max_len)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")


def _broadcast_advantages(advantages: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    # One advantage per sequence, (B,), is spread over that sequence's tokens.
    advantages = advantages.detach()
    if advantages.dim() == logprobs.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    return advantages


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    aggregation: str = "token",
    max_len: int | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """PPO's clipped surrogate objective, negated (Schulman et al. 2017, "Proximal Policy...", eq. 7).

        r = exp(logprobs - old_logprobs)
        L = -w * min(r * A, clip(r, 1 - clip_eps, 1 + clip_eps_high) * A)

    ``weights`` ``w`` (shape of ``logprobs``, or ``(B, 1)``; default 1) are constants that scale each
    element's loss before aggregation, the normaliser unchanged: the importance-sampling correction of
    :func:`is_correction` for samples drawn by another engine.

    One function for classic PPO, RLHF-PPO and GRPO:

    - classic: ``logprobs``, ``old_logprobs``, ``advantages`` ``(B,)``, ``mask=None``;
    - LLM: ``logprobs``, ``old_logprobs`` ``(B, T)`` per completion token, ``advantages`` ``(B, T)`` (PPO with
      GAE) or ``(B,)`` / ``(B, 1)`` (GRPO: one advantage per completion, spread over its tokens), ``mask``
      ``(B, T)`` with 1 on completion tokens that count.

    ``clip_eps`` is ``eps_low``; ``clip_eps_high`` ``None`` means ``clip_eps`` (symmetric). DAPO's "clip-higher"
    (Yu et al. 2025) raises it (e.g. 0.28) so unlikely tokens with positive advantage can grow, against entropy
    collapse. ``aggregation``, ``max_len``: see :func:`aggregate`.

    Metrics (over counted elements):
        ``loss/policy``; ``clip/fraction``: share where the clipped branch is the minimum, so the gradient is
        0 (``A > 0`` and ``r > 1 + eps_high``, or ``A < 0`` and ``r < 1 - eps_low``), split into
        ``clip/low_fraction`` and ``clip/high_fraction``; ``clip/ratio_mean``; ``kl/old_approx``: k3 estimate
        of KL(old || new), ``(r - 1) - log r``.
    """
    eps_low, eps_high = clip_eps, (clip_eps if clip_eps_high is None else clip_eps_high)
    advantages = _broadcast_advantages(advantages, logprobs)
    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    per_token_loss = -torch.min(unclipped, clipped)
    if weights is not None:
        per_token_loss = per_token_loss * weights.detach()
    loss = aggregate(per_token_loss, mask, aggregation, max_len)
    m = _bool_mask(per_token_loss, mask)
    return loss, {
        "loss/policy": loss.detach(),
        **_clip_metrics(ratio, log_ratio, advantages, m, eps_low, eps_high),
    }


@torch.no_grad()
def _clip_metrics(
    ratio: torch.Tensor,
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    m: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> Metrics:
    """The clip fractions, mean ratio and k3 KL(old || new) of :func:`ppo_clip_loss` over the mask ``m``."""
    low = ((ratio < 1.0 - eps_low) & (advantages < 0)).expand_as(m)
    high = ((ratio > 1.0 + eps_high) & (advantages > 0)).expand_as(m)
    return {
        "clip/fraction": masked_mean((low | high).to(ratio.dtype), m),
        "clip/low_fraction": masked_mean(low.to(ratio.dtype), m),
        "clip/high_fraction": masked_mean(high.to(ratio.dtype), m),
        "clip/ratio_mean": masked_mean(ratio, m),
        "kl/old_approx": masked_mean((ratio - 1.0) - log_ratio, m),
    }


def policy_gradient_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    aggregation: str = "token",
    max_len: int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """REINFORCE: L = -A * log pi(a|s) (Williams 1992; Sutton & Barto 2018, eq. 13.8).

    Its gradient is the policy-gradient estimate ``-A * grad log pi``; with ``A = G_t - b(s_t)`` this is
    REINFORCE with baseline, and it equals the gradient of :func:`ppo_clip_loss` at ``r = 1`` (the first PPO
    epoch).

    ``logprobs`` (of the taken actions, current policy) and ``mask`` (1 = counts) are ``(B,)`` or ``(B, T)``;
    ``advantages`` the same, or ``(B,)`` / ``(B, 1)`` broadcast over ``T``. Metrics: ``loss/policy``.
    """
    advantages = _broadcast_advantages(advantages, logprobs)
    per_token_loss = -advantages * logprobs
    loss = aggregate(per_token_loss, mask, aggregation, max_len)
    return loss, {"loss/policy": loss.detach()}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor | None,
    returns: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    clip_eps: float | None = None,
    aggregation: str = "token",
    max_len: int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Squared-error critic loss, optionally with PPO2's value clipping.

        unclipped: 0.5 * (V - R)^2
        clipped:   0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)

    The clipped form is from OpenAI baselines' PPO2 (also TRL's PPO and CleanRL's ``clip_vloss``); it keeps
    the critic near the values that produced the advantages. Andrychowicz et al. 2021 found it rarely helps,
    hence off by default.

    ``values`` (current, with grad), ``old_values`` (at rollout time; needed only with ``clip_eps``),
    ``returns`` (targets, e.g. GAE returns) and ``mask`` (1 = counts) are all ``(B,)`` or ``(B, T)``;
    ``clip_eps=None`` disables clipping. Metrics: ``loss/value``; ``clip/value_fraction``: share of counted elements where the clipped error is the
    larger (0 without clipping).
    """
    returns = returns.detach()
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        per_element = unclipped
        is_clipped = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        if old_values is None:
            raise ValueError("value_loss: clip_eps is set, so old_values is required")
        old_values = old_values.detach()
        values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        clipped = (values_clipped - returns) ** 2
        per_element = torch.max(unclipped, clipped)
        is_clipped = clipped > unclipped
    loss = aggregate(0.5 * per_element, mask, aggregation, max_len)
    metrics = {
        "loss/value": loss.detach(),
        "clip/value_fraction": masked_mean(is_clipped.to(values.dtype), mask).detach(),
    }
    return loss, metrics


def is_correction(
    trainer_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    level: str = "sequence",
    mode: str = "mask",
    cap: float = 3.0,
) -> tuple[torch.Tensor, Metrics]:
    """Importance weights that correct for sampling with another engine than the trainer's forward.

    Yao et al. (2025), "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training": a fast
    sampler (vLLM) draws from mu, not from the trainer's pi_old on the same weights, so the policy
    gradient E_mu[...] is reweighted by rho = pi_old / mu, capped against its variance:

        rho_t = exp(log pi_old(y_t) - log mu(y_t))                          level "token"
        rho   = prod_t rho_t = exp(sum_t (log pi_old(y_t) - log mu(y_t)))   level "sequence": the product
                over the sequence's counted tokens (not the geometric mean: it is the sequence's true
                likelihood ratio, as TRL's sequence modes), shared by all of its tokens
        w     = min(rho, C)                    mode "truncate" (TIS)
        w     = rho * [rho <= C]               mode "mask" (MIS: rejected tokens or sequences weigh 0)

    ``w`` multiplies the per-token policy-gradient loss; a token weighted 0 still counts in the loss's
    normaliser (as in TRL). ``trainer_logprobs`` (pi_old) and ``sampler_logprobs`` (mu) ``(B, T)``; ``mask``
    ``(B, T)``, 1 = trained token. A NaN sampler log-prob (the engine could not score the token) counts as
    no mismatch. Log-ratios are clamped at 50 before ``exp`` so an extreme ratio stays finite (it is capped
    or masked anyway). Returns ``weights`` ``(B, T)`` (0 where ``mask`` is 0) and metrics:

    - ``rollout/mismatch_kl``: k3 estimate of KL(mu || pi_old) per trained token, ``(rho_t - 1) - log rho_t``
      averaged over trained tokens (unbiased under samples from mu, and >= 0 token by token);
    - ``rollout/is_ratio_mean``, ``rollout/is_ratio_max``: of the uncapped ratio rho, over trained tokens
      (token level) or over sequences with a trained token (sequence level);
    - ``rollout/is_masked_frac``: share of trained tokens whose ratio exceeded C, i.e. weight 0 (mask) or
      clipped to C (truncate); at sequence level every token of such a sequence.
    """
    if level not in IS_LEVELS or mode not in IS_MODES:
        raise ValueError(
            f"level must be one of {IS_LEVELS} and mode one of {IS_MODES}, got {level!r}, {mode!r}"
        )
    m = _bool_mask(trainer_logprobs, mask)
    log_rho_t = (trainer_logprobs.detach().float() - sampler_logprobs.detach().float()).nan_to_num(0.0)
    log_rho_t = torch.where(m, log_rho_t, torch.zeros_like(log_rho_t))
    rho_t = torch.exp(log_rho_t.clamp(max=50.0))
    if level == "sequence":
        rho = torch.exp(log_rho_t.sum(-1, keepdim=True).clamp(max=50.0))  # (B, 1)
        counted = m.any(-1, keepdim=True)
    else:
        rho, counted = rho_t, m
    over = rho > cap
    weights = rho.clamp(max=cap) if mode == "truncate" else rho.masked_fill(over, 0.0)
    weights = torch.where(m, weights.expand_as(m), torch.zeros_like(rho_t))
    ratios = rho[counted]
    metrics = {
        "rollout/mismatch_kl": masked_mean((rho_t - 1.0) - log_rho_t, m),
        "rollout/is_ratio_mean": ratios.mean() if ratios.numel() else rho.new_zeros(()),
        "rollout/is_ratio_max": ratios.max() if ratios.numel() else rho.new_zeros(()),
        "rollout/is_masked_frac": masked_mean(over.expand_as(m).float(), m),
    }
    return weights, metrics


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref, per element (Schulman 2020, "Approximating KL Divergence").

    Unbiased for KL(pi || pi_ref) on samples from pi, but high variance and negative on some samples. It is
    the per-token KL penalty that RLHF-PPO folds into the reward (Ouyang et al. 2022, eq. 2). Any shape; the
    caller aggregates.
    """
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log pi - log pi_ref)^2, per element (Schulman 2020).

    Biased but low variance and always >= 0; its gradient is that of KL(pi || pi_ref) to first order. Any
    shape.
    """
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(log_ratio) - log_ratio - 1 with log_ratio = log pi_ref - log pi, per element (Schulman 2020).

    Unbiased for KL(pi || pi_ref) on samples from pi, always >= 0, low variance: the estimator of GRPO (Shao
    et al. 2024, eq. 4). Any shape.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-element KL(pi || pi_ref) estimate chosen by name: ``"k1"``, ``"k2"`` or ``"k3"`` (see above)."""
    estimators = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
    if kind not in estimators:
        raise ValueError(f"kl estimator kind must be one of {KL_ESTIMATORS}, got {kind!r}")
    return estimators[kind](logprobs, ref_logprobs)


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Entropy in nats of ``softmax(logits)`` over the last dim: ``(B, T, V) -> (B, T)`` (any ``(..., V)``),
    float32 for half-precision logits; ``chunk_size`` rows of the flattened logits at a time bound the memory.

    Uses ``log_softmax`` (a logsumexp) for stability; ``-inf`` logits (masked vocabulary) give 0, not ``nan``,
    because ``log p`` is clamped to the finite range before ``p * log p``.
    """
    shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.size(-1))
    pieces = []
    for chunk in flat.split(chunk_size, dim=0):
        if chunk.dtype in _LOW_PRECISION:
            chunk = chunk.float()
        logp = F.log_softmax(chunk, dim=-1)
        finite_logp = logp.clamp(min=torch.finfo(logp.dtype).min)
        pieces.append(-(logp.exp() * finite_logp).sum(-1))
    if not pieces:
        return flat.new_zeros(shape, dtype=torch.float32 if flat.dtype in _LOW_PRECISION else flat.dtype)
    return torch.cat(pieces).reshape(shape)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., index]`` without building the full log-softmax tensor.

    ``logits`` ``(B, T, V)`` and token ids ``index`` ``(B, T)`` give ``(B, T)`` log-probabilities (float32 for
    half-precision logits); any ``(B, ..., V)`` works. ``log_softmax(x)_i = x_i - logsumexp(x)``: gather one logit per position and subtract a logsumexp computed
    one row of the batch at a time, so the peak extra memory is one ``(T, V)`` row instead of ``(B, T, V)``
    (the trick of TRL's ``selective_log_softmax``). Half-precision rows are upcast to float32 because the
    policy ratio ``exp(logp - old_logp)`` of bf16 log-probs is noisy at the 1e-2 level, the size of the PPO
    clip range.
    """
    if logits.dim() < 2:
        logits32 = logits.float() if logits.dtype in _LOW_PRECISION else logits
        return logits32.gather(-1, index.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits32, dim=-1)
    rows = []
    for row_logits, row_index in zip(logits, index):
        if row_logits.dtype in _LOW_PRECISION:
            row_logits = row_logits.float()
        selected = row_logits.gather(-1, row_index.unsqueeze(-1)).squeeze(-1)
        rows.append(selected - torch.logsumexp(row_logits, dim=-1))
    if not rows:
        dtype = torch.float32 if logits.dtype in _LOW_PRECISION else logits.dtype
        return logits.new_zeros(index.shape, dtype=dtype)
    return torch.stack(rows)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each next token of ``input_ids`` ``(B, T)`` under a causal LM's ``logits`` ``(B, T, V)``.

    Logits are divided by the sampling ``temperature``, so the log-probs are those of the distribution the
    completions were sampled from (needed for correct PPO/GRPO ratios). Returns ``(B, T - 1)``: entry ``t`` is ``log p(input_ids[:, t + 1] | input_ids[:, :t + 1])``. The shift
        happens here, so a mask for these log-probs is ``completion_mask[:, 1:]``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    shifted = logits[:, :-1]
    if temperature != 1.0:
        shifted = shifted / temperature
    return selective_log_softmax(shifted, input_ids[:, 1:])


def sequence_logprobs(per_token_logprobs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Log-probability of whole completions: the sum of their counted token log-probs, ``(B, T) -> (B,)``.

    ``mask`` ``(B, T)``: 1 = completion token (prompt and padding are 0). Used by DPO (``log pi(y|x)``) and by sequence-level scores.
    """
    return masked_sum(per_token_logprobs, mask, dim=-1)


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *, aggregation: str = "token"
) -> tuple[torch.Tensor, Metrics]:
    """Token cross-entropy for supervised fine-tuning: -log p(labels[t] | logits[t]).

    ``logits`` ``(B, T, V)``: position ``t`` predicts ``labels[:, t]`` ``(B, T)``; the caller has already shifted
    (for a causal LM: ``logits[:, :-1]`` with ``labels = input_ids[:, 1:]``). ``mask`` ``(B, T)``: 1 = the token
    is trained on (e.g. assistant tokens only), 0 = prompt, padding; labels under 0 are ignored (may be -100).
    ``aggregation``: ``"token"`` (mean over all counted tokens, as HF/TRL), ``"sequence"`` or ``"dr_grpo"``.

    Metrics: ``loss/sft``; ``sft/tokens``, the number of counted tokens.
    """
    m = mask.bool()
    safe_labels = labels.masked_fill(~m, 0)
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), safe_labels.reshape(-1), reduction="none"
    ).view_as(labels)
    loss = aggregate(per_token, m, aggregation)
    return loss, {"loss/sft": loss.detach(), "sft/tokens": m.sum().to(per_token.dtype)}


def _preference_rewards(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> Metrics:
    with torch.no_grad():
        chosen = beta * (policy_chosen_logps - ref_chosen_logps)
        rejected = beta * (policy_rejected_logps - ref_rejected_logps)
        return {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "rewards/accuracy": (chosen > rejected).to(chosen.dtype).mean(),
        }


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Direct Preference Optimization (Rafailov et al. 2023, eq. 7), with conservative-DPO label smoothing.

        h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))
        L = mean(-(1 - ls) * logsigmoid(beta * h) - ls * logsigmoid(-beta * h))

    DPO is the Bradley-Terry likelihood of the preference under the implicit reward
    ``beta * log(pi / pi_ref)``.
    ``label_smoothing`` ``ls`` assumes each label is flipped with probability ``ls`` (cDPO, Mitchell 2023); it
    keeps the loss bounded below so the margin cannot grow forever on noisy pairs.

    All four log-probs are ``(B,)`` sequence log-probs (:func:`sequence_logprobs`) under the policy or the
    frozen reference; a larger ``beta`` keeps pi closer to pi_ref; ``label_smoothing`` is in [0, 0.5).

    Metrics: ``loss/dpo``; ``rewards/chosen``, ``rewards/rejected``, the means of the implicit rewards
    ``beta * (log pi - log pi_ref)``; ``rewards/margins``, their mean difference; ``rewards/accuracy``, the
    share of pairs whose chosen reward is the larger.
    """
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    loss = losses.mean()
    metrics = _preference_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    return loss, {"loss/dpo": loss.detach(), **metrics}


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Identity Preference Optimisation (Azar et al. 2023, "A General Theoretical Paradigm...", eq. 17).

        h = (log pi(y_w) - log pi_ref(y_w)) / n_w - (log pi(y_l) - log pi_ref(y_l)) / n_l
        L = mean((h - 1 / (2 * beta))^2)

    A squared loss that regresses the log-ratio margin to ``1 / (2 beta)`` instead of pushing it to infinity
    as DPO does on deterministic preferences (``beta`` is the paper's tau).

    Log-probs are ``(B,)`` as in :func:`dpo_loss`. ``chosen_lengths``, ``rejected_lengths``: ``(B,)`` token
    counts ``n_w``, ``n_l`` (below 1 read as 1). The paper has none (``n = 1``), but TRL, with the IPO authors'
    agreement, averages the log-ratios per token so ``beta`` means the same at any length; pass the counts to
    match TRL (``loss_type="ipo"``).

    Metrics: ``loss/ipo`` and the ``rewards/*`` of :func:`dpo_loss`, from the un-normalised log-ratios as in
    TRL.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    if chosen_lengths is not None:
        chosen_logratios = chosen_logratios / chosen_lengths.to(chosen_logratios.dtype).clamp(min=1.0)
    if rejected_lengths is not None:
        rejected_logratios = rejected_logratios / rejected_lengths.to(rejected_logratios.dtype).clamp(min=1.0)
    h = chosen_logratios - rejected_logratios
    loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    metrics = _preference_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    return loss, {"loss/ipo": loss.detach(), **metrics}


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Reward-model loss: negative Bradley-Terry log-likelihood of preferences (Ouyang et al. 2022, eq. 1).

        L = mean(-logsigmoid(r_w - r_l - margin)) + center_coef * mean((r_w + r_l)^2)

    ``chosen_rewards``, ``rejected_rewards``: ``(B,)``. ``margin`` (``(B,)`` or scalar) is the required gap,
    larger for more decisive ratings (Llama 2, Touvron et al. 2023, eq. 2). ``center_coef`` weighs a penalty that
    keeps rewards centred on 0 (Eisenstein et al. 2023; TRL's ``center_rewards_coefficient``): BT is invariant
    to a shift of all rewards, so nothing else pins it.

    Metrics: ``loss/reward``; ``reward/accuracy`` (share with r_w > r_l); ``reward/margin`` (mean r_w - r_l,
    without the margin term).
    """
    diff = chosen_rewards - rejected_rewards
    logits = diff if margin is None else diff - margin
    loss = -F.logsigmoid(logits).mean()
    if center_coef:
        loss = loss + center_coef * torch.mean((chosen_rewards + rejected_rewards) ** 2)
    with torch.no_grad():
        metrics = {
            "loss/reward": loss.detach(),
            "reward/accuracy": (diff > 0).to(diff.dtype).mean(),
            "reward/margin": diff.mean(),
        }
    return loss, metrics
