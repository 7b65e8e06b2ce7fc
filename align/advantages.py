"""Returns and advantages: the credit-assignment half of policy-gradient methods, as pure tensor functions.

Time is the LAST dimension everywhere: rewards are ``(B, T)`` or ``(T,)``. LLM completions are ``(B, T)``
token sequences; a classic RL rollout buffer is stored as ``(num_envs, T)``; both go through the same code.

``mask`` (``(B, T)``, 1 = the step exists) marks padding. Masked positions are treated as absent, not as zero
reward steps: the recursions pass straight over them, so a right-padded batch gives exactly what each sequence
trimmed to its length would give, and masked outputs are 0. For group methods (GRPO, RLOO) rewards are
``(B,)``, one per completion.

Returns and advantages are constants for the losses, so returns, GAE and the group baselines detach their
inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from align.losses import masked_sum

__all__ = [
    "discounted_returns",
    "explained_variance",
    "gae",
    "group_advantages",
    "group_std",
    "rloo_advantages",
    "whiten",
]


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None
) -> float:
    """``1 - Var(R - V) / Var(R)`` over counted elements: 1 = a perfect critic, 0 = no better than the mean,
    negative = worse. NaN when the returns do not vary."""
    m = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
    r, v = returns[m].float(), values[m].float()
    var_r = r.var(unbiased=False)
    if r.numel() < 2 or float(var_r) == 0.0:
        return float("nan")
    return float(1.0 - (r - v).var(unbiased=False) / var_r)


def _leading_zeros(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)


def _flag(flags: torch.Tensor | None, like: torch.Tensor, *, default: bool = False) -> torch.Tensor:
    if flags is None:
        return torch.full_like(like, default, dtype=torch.bool)
    return flags.bool().expand_as(like)


@torch.no_grad()
def discounted_returns(
    rewards: torch.Tensor,
    *,
    gamma: float,
    dones: torch.Tensor | None = None,
    last_value: torch.Tensor | float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reward-to-go ``G_t = r_t + gamma * (1 - done_t) * G_{t+1}`` (Sutton & Barto 2018, eq. 3.9).

    The Monte-Carlo return REINFORCE weights ``log pi`` by. ``rewards``, ``dones`` (1 where the episode ended
    after step ``t``), ``mask`` and the result are ``(B, T)`` or ``(T,)``. ``last_value`` ``(B,)`` (scalar for
    ``(T,)``; ``None`` = 0) is ``G`` after the last step, e.g. ``V(s_T)`` for a rollout cut mid-episode, ignored
    where the last step is done. Masked steps are skipped (the step before continues with the next counted
    step, or ``last_value``) and their return is 0.
    """
    rewards = rewards.detach()
    not_done = (~_flag(dones, rewards)).to(rewards.dtype)
    exists = _flag(mask, rewards, default=True)
    carry = _leading_zeros(rewards)
    if last_value is not None:
        carry = carry + torch.as_tensor(last_value, dtype=rewards.dtype, device=rewards.device).detach()
    returns = torch.zeros_like(rewards)
    for t in reversed(range(rewards.size(-1))):
        g = rewards[..., t] + gamma * not_done[..., t] * carry
        carry = torch.where(exists[..., t], g, carry)
        returns[..., t] = torch.where(exists[..., t], g, torch.zeros_like(g))
    return returns


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    next_values: torch.Tensor | None = None,
    terminated: torch.Tensor | None = None,
    truncated: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous Control", eq. 16).

        delta_t = r_t + gamma * (1 - terminated_t) * V'_t - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - end_t) * A_{t+1},     end_t = terminated_t or truncated_t

    ``lam = 0`` is the one-step TD error, ``lam = 1`` the Monte-Carlo return minus ``V``. Terminated and
    truncated differ (Pardo et al. 2018, "Time Limits in RL"): after ``terminated`` the next state has value
    0; ``truncated`` (a time limit) stops ``A`` at the boundary, but the next state's real value still
    bootstraps ``delta``.

    Every tensor is ``(B, T)`` or ``(T,)``; ``terminated``/``truncated`` are 1 after step ``t``. ``next_values``
    (``V'_t``, needed with ``truncated``) defaults to the value of the next counted step, 0 after the last (a
    completion is terminal after its last real token); classic RL passes ``cat(values[:, 1:], V(s_T))`` with the
    real final observation's value at truncated steps (after a vectorised env's auto-reset, ``values[t + 1]``
    belongs to the next episode). Masked steps are skipped, so right padding needs nothing else. Returns
    ``(advantages, returns)`` with ``returns = advantages + values`` (the value targets), 0 on masked steps.
    """
    if truncated is not None and next_values is None:
        raise ValueError(
            "gae: truncated is given but next_values is not; a truncated step must bootstrap from the value "
            "of its real final observation, which only the caller knows"
        )
    rewards, values = rewards.detach(), values.detach()
    not_term = (~_flag(terminated, rewards)).to(rewards.dtype)
    not_end = not_term * (~_flag(truncated, rewards)).to(rewards.dtype)
    exists = _flag(mask, rewards, default=True)
    next_adv = next_value = _leading_zeros(rewards)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(rewards.size(-1))):
        bootstrap = next_values[..., t].detach() if next_values is not None else next_value
        delta = rewards[..., t] + gamma * not_term[..., t] * bootstrap - values[..., t]
        adv = delta + gamma * lam * not_end[..., t] * next_adv
        here = exists[..., t]
        next_adv = torch.where(here, adv, next_adv)
        next_value = torch.where(here, values[..., t], next_value)
        advantages[..., t] = torch.where(here, adv, torch.zeros_like(adv))
    returns = torch.where(exists, advantages + values, torch.zeros_like(values))
    return advantages, returns


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"group_size={group_size} must be positive and divide the number of rewards ({rewards.numel()}); "
            "rewards are laid out as consecutive groups of group_size completions of one prompt"
        )
    return rewards.detach().view(-1, group_size)


def _nan_std(grouped: torch.Tensor) -> torch.Tensor:
    # Bessel-corrected, like torch.std and TRL's nanstd; a group with fewer than 2 rewards has no spread: 0.
    valid = ~torch.isnan(grouped)
    count = valid.sum(dim=1)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    sq = torch.where(valid, (grouped - mean) ** 2, torch.zeros_like(grouped)).sum(dim=1)
    var = sq / (count - 1).clamp(min=1).to(grouped.dtype)
    return torch.where(count > 1, var.sqrt(), torch.zeros_like(var))


def group_std(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Standard deviation of each group's rewards, ``(B,) -> (B // group_size,)``.

    Bessel-corrected (as TRL's GRPO), ``nan`` rewards left out, 0 for a group with fewer than 2 rewards. A
    group with std 0 (all completions right, or all wrong) gives no GRPO gradient; trainers log how many there
    are.
    """
    return _nan_std(_grouped(rewards, group_size))


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: str = "std", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024, "DeepSeekMath", sec. 4.1.2).

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)    scale="std"  (GRPO)
        A_i =  r_i - mean(r_group)                             scale="none" (Dr. GRPO, Liu et al. 2025)

    The mean of the other completions for the same prompt replaces a learned value baseline. Dividing by the
    std makes questions that are too easy or too hard (low spread) weigh as much as the others, a difficulty
    bias that Dr. GRPO removes.

    ``rewards`` ``(B,)`` are consecutive groups of ``group_size`` completions of one prompt (``[p0, p0, p1, p1,
    ...]``); the ``(B,)`` result is broadcast over tokens by :func:`align.losses.ppo_clip_loss`. ``eps`` (1e-4, as
    TRL) makes zero-spread groups give 0, not ``nan``. The std is Bessel-corrected, as TRL's GRPOTrainer; ``nan``
    rewards (no reward function could score them) are left out of their group's mean and std and get advantage
    0, as in TRL; counting them is the caller's job.
    """
    grouped = _grouped(rewards, group_size)
    advantages = grouped - torch.nanmean(grouped, dim=1, keepdim=True)
    if scale == "std":
        advantages = advantages / (_nan_std(grouped).unsqueeze(1) + eps)
    elif scale != "none":
        raise ValueError(f"scale must be one of ('std', 'none'), got {scale!r}")
    advantages = torch.where(torch.isnan(grouped), torch.zeros_like(advantages), advantages)
    return advantages.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE Leave-One-Out advantage (Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019).

        A_i = r_i - (1 / (k - 1)) * sum_{j != i} r_j  =  k / (k - 1) * (r_i - mean(r_group))

    The baseline of each sample is the mean of the other ``k - 1``, so it is independent of the sample and the
    estimator stays unbiased (GRPO's mean includes ``r_i`` itself). ``(B,) -> (B,)``, laid out as in
    :func:`group_advantages`, with ``group_size = k >= 2``.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 for a leave-one-out baseline, got {group_size}")
    grouped = _grouped(rewards, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def whiten(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    shift_mean: bool = True,
    eps: float = 1e-8,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Normalise to zero mean and unit variance over the counted elements: ``(x - mean) / sqrt(var + eps)``.

    The standard PPO advantage normalisation (OpenAI baselines, CleanRL ``norm_adv``, TRL's
    ``masked_whiten``). Variance is Bessel-corrected as in TRL; fewer than 2 counted elements count as
    variance 0.

    ``x`` and ``mask`` (1 = counts in the statistics; masked outputs are 0) have any shape, e.g. ``(B, T)``.
    ``shift_mean=False`` rescales but keeps the mean (TRL's reward whitening: a reward's sign carries
    information). ``reduce`` sums a tensor over processes (``lambda t: accelerator.reduce(t, "sum")``), so every
    process normalises with the statistics of the whole batch.
    """
    m = _flag(mask, x, default=True)
    total = lambda t: t if reduce is None else reduce(t)  # noqa: E731
    count = total(m.sum().to(x.dtype))
    mean = total(masked_sum(x, m)) / count.clamp(min=1)
    sq = total(masked_sum((x - mean) ** 2, m))
    var = torch.where(count > 1, sq / (count - 1).clamp(min=1), torch.zeros_like(sq))
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros_like(whitened))
