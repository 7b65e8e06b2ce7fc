"""Hand-computed checks of align.advantages; time is the last dimension."""

import pytest
import torch

from align.advantages import (
    discounted_returns,
    gae,
    group_advantages,
    group_std,
    rloo_advantages,
    whiten,
)


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)


# --- discounted returns -------------------------------------------------------------------------------------


def test_discounted_returns_hand_computed():
    rewards = torch.tensor([1.0, 2.0, 3.0])
    # G2 = 3, G1 = 2 + 0.5 * 3, G0 = 1 + 0.5 * 3.5
    close(discounted_returns(rewards, gamma=0.5), [2.75, 3.5, 3.0])
    # episode ends after step 1: G1 = 2, G0 = 1 + 0.5 * 2
    close(discounted_returns(rewards, gamma=0.5, dones=torch.tensor([0, 1, 0])), [2.0, 2.0, 3.0])
    # bootstrap V(s_3) = 4: G2 = 3 + 2, G1 = 2 + 2.5, G0 = 1 + 2.25
    close(discounted_returns(rewards, gamma=0.5, last_value=4.0), [3.25, 4.5, 5.0])
    # last step done: nothing to bootstrap
    close(
        discounted_returns(rewards, gamma=0.5, last_value=4.0, dones=torch.tensor([0, 0, 1])),
        [2.75, 3.5, 3.0],
    )


def test_discounted_returns_batched_and_padded():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = discounted_returns(rewards, gamma=0.5, last_value=torch.tensor([4.0, 4.0]), mask=mask)
    # row 1 is [1, 2] followed by the bootstrap 4: G1 = 2 + 2, G0 = 1 + 2; its padding is 0
    close(out, [[3.25, 4.5, 5.0], [3.0, 4.0, 0.0]])


# --- GAE ----------------------------------------------------------------------------------------------------


def test_gae_three_steps_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 2.0])
    values = torch.tensor([0.5, 1.0, 1.5])
    adv, ret = gae(rewards, values, gamma=0.9, lam=0.95)
    # terminal after the last step: delta2 = 2 - 1.5 = 0.5
    # delta1 = 0.9 * 1.5 - 1 = 0.35, delta0 = 1 + 0.9 * 1 - 0.5 = 1.4; gamma * lam = 0.855
    # A2 = 0.5, A1 = 0.35 + 0.855 * 0.5 = 0.7775, A0 = 1.4 + 0.855 * 0.7775 = 2.0647625
    close(adv, [2.0647625, 0.7775, 0.5])
    close(ret, [2.5647625, 1.7775, 2.0])


def test_gae_lambda_one_is_discounted_return_minus_value():
    gen = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    dones = torch.zeros(3, 6)
    dones[0, 2] = 1
    dones[2, 4] = 1
    last_value = torch.randn(3, generator=gen)
    next_values = torch.cat([values[:, 1:], last_value[:, None]], dim=1)
    adv, ret = gae(rewards, values, gamma=0.9, lam=1.0, next_values=next_values, terminated=dones)
    expected = discounted_returns(rewards, gamma=0.9, dones=dones, last_value=last_value)
    close(adv, expected - values)
    close(ret, expected)


def test_gae_lambda_zero_is_td_error():
    gen = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(2, 5, generator=gen), torch.randn(2, 5, generator=gen)
    terminated = torch.tensor([[0, 1, 0, 0, 0], [0, 0, 0, 0, 1]])
    adv, _ = gae(rewards, values, gamma=0.9, lam=0.0, terminated=terminated)
    next_values = torch.cat([values[:, 1:], torch.zeros(2, 1)], dim=1) * (1 - terminated)
    close(adv, rewards + 0.9 * next_values - values)


def test_gae_truncated_bootstraps_but_terminated_does_not():
    # episode A ends after step 0 (real final observation has value 5); episode B is step 1 (then bootstrap 2)
    rewards, values = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])
    next_values = torch.tensor([5.0, 2.0])
    ends = torch.tensor([1, 0])
    adv_term, _ = gae(rewards, values, gamma=0.9, lam=0.95, next_values=next_values, terminated=ends)
    adv_trunc, _ = gae(rewards, values, gamma=0.9, lam=0.95, next_values=next_values, truncated=ends)
    adv_cont, _ = gae(rewards, values, gamma=0.9, lam=0.95, next_values=next_values)
    # A1 = 1 + 0.9 * 2 = 2.8 in all three. A0: 1 if terminated; 1 + 0.9 * 5 if truncated (bootstrap, but no
    # flow of A1); 1 + 4.5 + 0.855 * 2.8 if the episode continues
    close(adv_term, [1.0, 2.8])
    close(adv_trunc, [5.5, 2.8])
    close(adv_cont, [7.894, 2.8])
    with pytest.raises(ValueError, match="next_values"):
        gae(rewards, values, gamma=0.9, lam=0.95, truncated=ends)


def _reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    advantages, next_adv, next_value = [0.0] * len(rewards), 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_value - values[t]
        next_adv = delta + gamma * lam * next_adv
        next_value = values[t]
        advantages[t] = next_adv
    return advantages


def test_gae_padded_batch_equals_per_sequence_loop():
    gen = torch.Generator().manual_seed(2)
    lengths = [5, 2, 4, 1]
    rewards, values = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    mask = (torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]).long()
    adv, ret = gae(rewards, values, gamma=0.95, lam=0.9, mask=mask)
    for i, n in enumerate(lengths):
        expected = _reference_gae(rewards[i, :n].tolist(), values[i, :n].tolist(), 0.95, 0.9)
        close(adv[i, :n], expected)
        close(ret[i, :n], torch.tensor(expected) + values[i, :n])
        close(adv[i, n:], [0.0] * (5 - n))
        close(ret[i, n:], [0.0] * (5 - n))
    # garbage under the padding changes nothing
    noisy_r = torch.where(mask.bool(), rewards, torch.full_like(rewards, 1e6))
    noisy_v = torch.where(mask.bool(), values, torch.full_like(values, -1e6))
    adv2, ret2 = gae(noisy_r, noisy_v, gamma=0.95, lam=0.9, mask=mask)
    close(adv2, adv)
    close(ret2, ret)


def test_gae_detaches_values():
    values = torch.tensor([0.5, 1.0], requires_grad=True)
    adv, ret = gae(torch.tensor([1.0, 1.0]), values, gamma=0.9, lam=0.95)
    assert not adv.requires_grad and not ret.requires_grad


# --- group baselines ----------------------------------------------------------------------------------------


def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # group 0: mean 0.5, Bessel std sqrt(4 * 0.25 / 3) = 0.5773503; group 1: std 0, advantages 0
    a = 0.5 / (0.5773503 + 1e-4)
    close(group_advantages(rewards, 4), [a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    close(group_advantages(rewards, 4, scale="none"), [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    close(group_std(rewards, 4), [0.5773503, 0.0])
    close(group_std(rewards, 1), [0.0] * 8)
    close(group_advantages(rewards, 1), [0.0] * 8)


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size"):
        group_std(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="batch")


def test_group_advantages_leave_out_nan_rewards():
    rewards = torch.tensor([1.0, float("nan"), 0.0, float("nan"), float("nan"), float("nan")])
    # group 0 is (1, 0) for its statistics: mean 0.5, std sqrt(0.5); group 1 has no scorable reward
    a = 0.5 / (0.5**0.5 + 1e-4)
    close(group_advantages(rewards, 3), [a, 0.0, -a, 0.0, 0.0, 0.0])
    close(group_advantages(rewards, 3, scale="none"), [0.5, 0.0, -0.5, 0.0, 0.0, 0.0])


def test_rloo_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0])
    # group 0, k = 4: 1 - (0 + 0 + 1) / 3 = 2/3, 0 - 2/3; group 1, k = 2: 3 - 1, 1 - 3
    close(rloo_advantages(rewards[:4], 4), [2 / 3, -2 / 3, -2 / 3, 2 / 3])
    close(rloo_advantages(rewards[4:], 2), [2.0, -2.0])
    # k / (k - 1) times the GRPO "none" advantage
    close(rloo_advantages(rewards[:4], 4), 4 / 3 * group_advantages(rewards[:4], 4, scale="none"))
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(rewards, 1)
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(rewards, 4)


# --- whitening ----------------------------------------------------------------------------------------------


def test_whiten_hand_computed():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, Bessel variance 5/3, std 1.2909944
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / 1.2909944
    close(whiten(x), expected)
    close(whiten(x, shift_mean=False), expected + 2.5)
    # the masked outlier is ignored: counted (1, 2, 3) have mean 2, variance 1
    close(
        whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]])), [[-1.0, 0.0, 1.0, 0.0]]
    )
    close(whiten(torch.tensor([3.0]), torch.tensor([1])), [0.0])
