"""Our losses against TRL 1.16's on the same batch.

DPO and the reward model call TRL's own loss methods on a bare trainer (``object.__new__`` plus the attributes
the method reads), with a stand-in model that returns fixed log-probs or rewards. GRPO's advantage and loss
live inside long methods that need a full rollout, so their lines are copied verbatim (file and line cited).
"""

from types import SimpleNamespace

import pytest
import torch
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.reward_trainer import RewardTrainer
from trl.trainer.utils import nanstd

from align.advantages import group_advantages
from align.losses import (
    aggregate,
    bradley_terry_loss,
    dpo_loss,
    ipo_loss,
    kl_k3,
    ppo_clip_loss,
    sequence_logprobs,
)
from tests.support import bare_trl_trainer


def close(actual: torch.Tensor, expected: torch.Tensor | float) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)


class _FixedOutputs:
    """Stands in for the model: whatever the inputs, returns the given outputs."""

    training = True

    def __init__(self, **outputs: torch.Tensor) -> None:
        self.outputs = SimpleNamespace(**outputs)

    def __call__(self, **kwargs) -> SimpleNamespace:
        return self.outputs


def _preference_batch(num_pairs: int, seed: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, as TRL concatenates them; prompt of 2 tokens, right padding."""
    gen = torch.Generator().manual_seed(seed)
    rows, length = 2 * num_pairs, 8
    completion_lengths = torch.randint(1, length - 2, (rows,), generator=gen)
    positions = torch.arange(length)[None, :]
    completion_mask = ((positions >= 2) & (positions < 2 + completion_lengths[:, None])).long()
    # TRL's fused head gives log-probs for positions 1.. and zero where the label is -100
    per_token_logps = -torch.rand(rows, length - 1, generator=gen) * 2.0 * completion_mask[:, 1:]
    return dict(
        completion_mask=completion_mask,
        per_token_logps=per_token_logps,
        ref_logps=-torch.rand(rows, generator=gen) * 8.0,
        lengths=completion_mask.sum(dim=1),
    )


def _trl_dpo(batch: dict[str, torch.Tensor], loss_type: str, beta: float, label_smoothing: float = 0.0):
    """TRL 1.16 ``DPOTrainer._compute_loss`` (trl/trainer/dpo_trainer.py:1285), reference log-probs given."""
    rows, width = batch["completion_mask"].shape
    logps = batch["per_token_logps"]
    model = _FixedOutputs(
        log_probs=logps,
        entropy=torch.zeros_like(logps),
        mean_logits=torch.zeros_like(logps),
        is_top1=torch.zeros_like(logps, dtype=torch.bool),
    )
    trainer = bare_trl_trainer(
        DPOTrainer,
        model,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
    )
    ref_chosen, ref_rejected = batch["ref_logps"].chunk(2)
    inputs = dict(
        input_ids=torch.zeros(rows, width, dtype=torch.long),
        attention_mask=torch.ones(rows, width, dtype=torch.long),
        completion_mask=batch["completion_mask"],
        ref_chosen_logps=ref_chosen,
        ref_rejected_logps=ref_rejected,
    )
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, {name: values[-1] for name, values in trainer._metrics["train"].items()}


def _ours(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    logps = sequence_logprobs(batch["per_token_logps"], batch["completion_mask"][:, 1:])
    chosen, rejected = logps.chunk(2)
    ref_chosen, ref_rejected = batch["ref_logps"].chunk(2)
    return dict(
        policy_chosen_logps=chosen,
        policy_rejected_logps=rejected,
        ref_chosen_logps=ref_chosen,
        ref_rejected_logps=ref_rejected,
    )


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_sigmoid_matches_trl(beta):
    batch = _preference_batch(num_pairs=5, seed=0)
    trl_loss, trl_metrics = _trl_dpo(batch, "sigmoid", beta)
    loss, metrics = dpo_loss(**_ours(batch), beta=beta)
    close(loss, trl_loss)
    close(metrics["rewards/chosen"], trl_metrics["rewards/chosen"])
    close(metrics["rewards/rejected"], trl_metrics["rewards/rejected"])
    close(metrics["rewards/margins"], trl_metrics["rewards/margins"])
    close(metrics["rewards/accuracy"], trl_metrics["rewards/accuracies"])


def test_dpo_label_smoothing_matches_trl():
    # TRL 1.16's "sigmoid" no longer takes label smoothing; cDPO's formula survives in its "aot" loss
    # (dpo_trainer.py:1447), which sorts the batch's log-ratios first. With one pair per batch the sort is the
    # identity and "aot" is exactly cDPO, so compare pair by pair.
    batch = _preference_batch(num_pairs=4, seed=1)
    beta, label_smoothing = 0.2, 0.15
    per_pair = []
    for i in range(4):
        rows = torch.tensor([i, 4 + i])
        single = {key: value[rows] for key, value in batch.items()}
        per_pair.append(_trl_dpo(single, "aot", beta, label_smoothing)[0])
    loss, _ = dpo_loss(**_ours(batch), beta=beta, label_smoothing=label_smoothing)
    close(loss, torch.stack(per_pair).mean())
    # and smoothing changes the loss, so the comparison above is not vacuous
    assert abs(loss.item() - dpo_loss(**_ours(batch), beta=beta)[0].item()) > 1e-3


def test_ipo_matches_trl():
    # TRL's "ipo" (dpo_trainer.py:1393) divides each log-ratio by the completion's token count.
    batch = _preference_batch(num_pairs=5, seed=2)
    beta = 0.3
    trl_loss, trl_metrics = _trl_dpo(batch, "ipo", beta)
    chosen_lengths, rejected_lengths = batch["lengths"].chunk(2)
    loss, metrics = ipo_loss(
        **_ours(batch), beta=beta, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths
    )
    close(loss, trl_loss)
    close(metrics["rewards/margins"], trl_metrics["rewards/margins"])


def _trl_reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin=None, center=None) -> torch.Tensor:
    """TRL 1.16 RewardTrainer.compute_loss (trl/trainer/reward_trainer.py:778) on fixed rewards."""
    model = _FixedOutputs(logits=torch.cat([chosen, rejected])[:, None])
    trainer = bare_trl_trainer(RewardTrainer, model, args=SimpleNamespace(center_rewards_coefficient=center))
    inputs = {"attention_mask": torch.ones(2 * len(chosen), 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    return trainer.compute_loss(model, inputs)


@pytest.mark.parametrize(("with_margin", "center"), [(False, None), (True, None), (False, 0.01), (True, 0.5)])
def test_bradley_terry_matches_trl_reward_trainer(with_margin, center):
    gen = torch.Generator().manual_seed(3)
    chosen, rejected = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    margin = torch.rand(6, generator=gen) if with_margin else None
    loss, _ = bradley_terry_loss(chosen, rejected, margin=margin, center_coef=center or 0.0)
    close(loss, _trl_reward_loss(chosen, rejected, margin, center))


def test_group_advantages_match_trl_grpo():
    gen = torch.Generator().manual_seed(4)
    rewards = torch.randint(0, 3, (12,), generator=gen).float()
    rewards[4:8] = 1.0  # a zero-std group
    num_generations = 4
    for scale in ("group", "none"):
        # trl/trainer/grpo_trainer.py:2765-2787 (multi_objective_aggregation="sum_then_normalize")
        mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
        mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
        advantages = rewards - mean_grouped_rewards
        if scale != "none":
            advantages = advantages / (std_rewards + 1e-4)
        ours = group_advantages(rewards, num_generations, scale="std" if scale == "group" else "none")
        close(ours, advantages)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_grpo_loss_matches_trl(loss_type):
    gen = torch.Generator().manual_seed(5)
    batch, length, max_completion_length = 6, 7, 10
    epsilon_low, epsilon_high, beta = 0.2, 0.28, 0.04
    per_token_logps = -torch.rand(batch, length, generator=gen) * 3
    old_per_token_logps = per_token_logps + torch.randn(batch, length, generator=gen) * 0.3
    ref_per_token_logps = per_token_logps + torch.randn(batch, length, generator=gen) * 0.3
    advantages = torch.randn(batch, generator=gen)
    mask = (
        torch.arange(length)[None, :] < torch.randint(1, length + 1, (batch,), generator=gen)[:, None]
    ).float()

    # trl/trainer/grpo_trainer.py:3083-3119 (importance_sampling_level="token", delta=None) and 3153-3165
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    per_token_kl = (
        torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
    )
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss1 = coef_1 * advantages.unsqueeze(1)
    per_token_loss2 = coef_2 * advantages.unsqueeze(1)
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        trl_loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        trl_loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        trl_loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)

    how = {"grpo": "sequence", "bnpo": "token", "dr_grpo": "dr_grpo"}[loss_type]
    policy, _ = ppo_clip_loss(
        per_token_logps,
        old_per_token_logps,
        advantages,
        mask,
        clip_eps=epsilon_low,
        clip_eps_high=epsilon_high,
        aggregation=how,
        max_len=max_completion_length,
    )
    kl = aggregate(kl_k3(per_token_logps, ref_per_token_logps), mask, how, max_completion_length)
    close(policy + beta * kl, trl_loss)


def test_trl_sigmoid_is_plain_logsigmoid():
    # Guards the reading of TRL above: its "sigmoid" DPO loss ignores label_smoothing in 1.16.
    batch = _preference_batch(num_pairs=3, seed=6)
    with_smoothing, _ = _trl_dpo(batch, "sigmoid", 0.1, label_smoothing=0.3)
    without, _ = _trl_dpo(batch, "sigmoid", 0.1)
    close(with_smoothing, without)
