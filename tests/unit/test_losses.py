"""Hand-computed checks of align.losses; the numbers in comments are worked out from the paper formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from align.losses import (
    aggregate,
    bradley_terry_loss,
    dpo_loss,
    dr_grpo_aggregate,
    entropy_from_logits,
    ipo_loss,
    is_correction,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    masked_sum,
    policy_gradient_loss,
    ppo_clip_loss,
    selective_log_softmax,
    sequence_aggregate,
    sequence_logprobs,
    sft_loss,
    token_aggregate,
    token_logprobs,
    value_loss,
)


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)


# --- masking and aggregation --------------------------------------------------------------------------------

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_sum_and_mean():
    close(masked_sum(X, M), 7.0)
    close(masked_mean(X, M), 7.0 / 3)
    close(masked_sum(X, M, dim=-1), [3.0, 4.0])
    close(masked_mean(X, M, dim=-1), [1.5, 4.0])
    close(masked_mean(X, None), 3.5)
    close(masked_mean(X, M.bool()), 7.0 / 3)


def test_masked_mean_all_masked_is_zero_with_finite_grad():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = masked_mean(x, torch.zeros(2))
    out.backward()
    close(out.detach(), 0.0)
    close(x.grad, [0.0, 0.0])
    close(masked_mean(X, torch.zeros_like(M), dim=-1), [0.0, 0.0])


def test_masked_ignores_nonfinite_padding():
    x = torch.tensor([1.0, float("-inf"), float("nan")])
    close(masked_mean(x, torch.tensor([1, 0, 0])), 1.0)


def test_aggregations_hand_computed():
    close(token_aggregate(X, M), 7.0 / 3)  # (1 + 2 + 4) / 3 tokens
    close(sequence_aggregate(X, M), 2.75)  # mean(1.5, 4)
    close(dr_grpo_aggregate(X, M), 7.0 / 6)  # 7 / (B=2 * T=3)
    close(dr_grpo_aggregate(X, M, max_len=7), 0.5)  # 7 / (2 * 7)
    close(aggregate(X, M, "token"), 7.0 / 3)
    close(aggregate(X, M, "sequence"), 2.75)
    close(aggregate(X, M, "dr_grpo", max_len=7), 0.5)


def test_aggregations_of_1d_without_mask_are_the_mean():
    x = torch.tensor([1.0, 2.0, 6.0])
    for how in ("token", "sequence", "dr_grpo"):
        close(aggregate(x, None, how), 3.0)


@pytest.mark.parametrize("how", ["token", "sequence", "dr_grpo"])
def test_aggregation_is_linear(how):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    close(aggregate(a + b, mask, how, 8), aggregate(a, mask, how, 8) + aggregate(b, mask, how, 8))
    close(aggregate(2.5 * a, mask, how, 8), 2.5 * aggregate(a, mask, how, 8))


def test_aggregate_unknown_name():
    with pytest.raises(ValueError, match="token.*sequence.*dr_grpo"):
        aggregate(X, M, "mean")


# --- PPO clip -----------------------------------------------------------------------------------------------

RATIOS = torch.tensor([1.5, 0.7, 1.1, 0.9])
ADVS = torch.tensor([1.0, -1.0, 2.0, -2.0])


def test_ppo_clip_loss_classic_hand_computed():
    logprobs = RATIOS.log().requires_grad_()
    loss, metrics = ppo_clip_loss(logprobs, torch.zeros(4), ADVS, clip_eps=0.2)
    # min(rA, clip(r)A): 1.2 (high-clipped), -0.8 (low-clipped), 2.2, -1.8; loss = -mean = -0.2
    close(loss.detach(), -0.2)
    close(metrics["loss/policy"], -0.2)
    close(metrics["clip/fraction"], 0.5)
    close(metrics["clip/low_fraction"], 0.25)
    close(metrics["clip/high_fraction"], 0.25)
    close(metrics["clip/ratio_mean"], 1.05)
    # k3 of KL(old || new): mean(r - 1 - log r)
    close(metrics["kl/old_approx"], 0.0403150)
    loss.backward()
    # d/dlogp of -r*A/N is -A*r/N where unclipped, 0 where clipped
    close(logprobs.grad, [0.0, 0.0, -2.0 * 1.1 / 4, 2.0 * 0.9 / 4])
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_ppo_clip_is_pessimistic_one_sided():
    # r = 1.5 with A < 0 is outside the clip range but the unclipped branch is the minimum: gradient flows.
    logprobs = torch.tensor([math.log(1.5), math.log(0.5)], requires_grad=True)
    loss, metrics = ppo_clip_loss(logprobs, torch.zeros(2), torch.tensor([-1.0, 1.0]))
    close(loss.detach(), (1.5 - 0.5) / 2)
    close(metrics["clip/fraction"], 0.0)
    loss.backward()
    close(logprobs.grad, [1.5 / 2, -0.5 / 2])


def test_ppo_clip_higher():
    logprobs = torch.tensor([math.log(1.25)], requires_grad=True)
    adv = torch.tensor([1.0])
    loss_sym, m_sym = ppo_clip_loss(logprobs, torch.zeros(1), adv, clip_eps=0.2)
    loss_high, m_high = ppo_clip_loss(logprobs, torch.zeros(1), adv, clip_eps=0.2, clip_eps_high=0.28)
    close(loss_sym.detach(), -1.2)
    close(loss_high.detach(), -1.25)
    close(m_sym["clip/fraction"], 1.0)
    close(m_high["clip/fraction"], 0.0)


def test_ppo_clip_broadcasts_sequence_advantages_over_tokens():
    gen = torch.Generator().manual_seed(1)
    logprobs = torch.randn(3, 4, generator=gen) * 0.3 - 1
    old = logprobs + torch.randn(3, 4, generator=gen) * 0.2
    adv = torch.tensor([1.0, -0.5, 2.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    for how in ("token", "sequence", "dr_grpo"):
        full, m_full = ppo_clip_loss(logprobs, old, adv[:, None].expand(3, 4), mask, aggregation=how)
        flat, m_flat = ppo_clip_loss(logprobs, old, adv, mask, aggregation=how)
        col, _ = ppo_clip_loss(logprobs, old, adv[:, None], mask, aggregation=how)
        close(flat, full)
        close(col, full)
        for key in m_full:
            close(m_flat[key], m_full[key])


def test_ppo_clip_masked_tokens_have_no_effect():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = torch.tensor([[-1.1, -2.0, 5.0]])  # the masked token has a huge ratio; it must not count anywhere
    loss, metrics = ppo_clip_loss(logprobs, old, torch.tensor([1.0]), torch.tensor([[1, 1, 0]]))
    r0 = math.exp(0.1)
    close(loss.detach(), -(r0 + 1.0) / 2)
    close(metrics["clip/ratio_mean"], (r0 + 1.0) / 2)
    close(metrics["clip/fraction"], 0.0)
    loss.backward()
    close(logprobs.grad, [[-r0 / 2, -0.5, 0.0]])


def test_ppo_at_ratio_one_has_the_policy_gradient():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(2, 5, generator=gen)
    adv = torch.randn(2, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    for how in ("token", "sequence", "dr_grpo"):
        lp_ppo = base.clone().requires_grad_()
        lp_pg = base.clone().requires_grad_()
        ppo_clip_loss(lp_ppo, base, adv, mask, aggregation=how)[0].backward()
        policy_gradient_loss(lp_pg, adv, mask, aggregation=how)[0].backward()
        close(lp_ppo.grad, lp_pg.grad)


def test_policy_losses_do_not_backprop_into_advantages():
    adv = torch.tensor([1.0, -1.0], requires_grad=True)
    logprobs = torch.tensor([-1.0, -2.0], requires_grad=True)
    (ppo_clip_loss(logprobs, logprobs.detach(), adv)[0] + policy_gradient_loss(logprobs, adv)[0]).backward()
    assert adv.grad is None


# --- policy gradient, value ---------------------------------------------------------------------------------


def test_policy_gradient_loss_hand_computed():
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -4.0]])
    loss, metrics = policy_gradient_loss(logprobs, torch.tensor([2.0, -1.0]), torch.tensor([[1, 1], [1, 0]]))
    # -A*logp on counted tokens: 2, 4, -0.5 -> mean 5.5 / 3
    close(loss, 5.5 / 3)
    close(metrics["loss/policy"], 5.5 / 3)


def test_value_loss_unclipped_and_clipped():
    values = torch.tensor([1.0, 2.0], requires_grad=True)
    old = torch.tensor([0.5, 2.0])
    returns = torch.tensor([3.0, 1.0])
    loss, metrics = value_loss(values, old, returns)
    close(loss.detach(), 0.5 * (4.0 + 1.0) / 2)
    close(metrics["clip/value_fraction"], 0.0)
    # element 0: V_clip = 0.5 + 0.2 = 0.7, (0.7 - 3)^2 = 5.29 > (1 - 3)^2 = 4, so the clipped error is used
    loss, metrics = value_loss(values, old, returns, clip_eps=0.2)
    close(loss.detach(), 0.5 * (5.29 + 1.0) / 2)
    close(metrics["loss/value"], 1.5725)
    close(metrics["clip/value_fraction"], 0.5)
    loss.backward()
    close(values.grad, [0.0, 0.5])  # element 0 is clipped: no gradient; element 1: (V - R) / N
    with pytest.raises(ValueError, match="old_values"):
        value_loss(values, None, returns, clip_eps=0.2)


def test_value_loss_mask():
    values = torch.tensor([[1.0, 0.0, 9.0]])
    returns = torch.tensor([[0.0, 2.0, 0.0]])
    loss, _ = value_loss(values, None, returns, torch.tensor([[1, 1, 0]]))
    close(loss, 0.5 * (1.0 + 4.0) / 2)


# --- KL -----------------------------------------------------------------------------------------------------


# Importance-sampling correction (Yao et al. 2025). Row 0: ratios pi_old / mu = 1, 2, 4; row 1: 0.5, 0.5 and a
# masked token whose log-ratio (10) must be ignored. Cap C = 3.
_LN2 = math.log(2.0)
_IS_MU = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
_IS_OLD = _IS_MU + torch.tensor([[0.0, _LN2, 2 * _LN2], [-_LN2, -_LN2, 10.0]])
_IS_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
# k3 = (r - 1) - log r per trained token: 0, 1 - ln 2, 3 - ln 4, and -0.5 + ln 2 twice, over 5 tokens
_IS_K3 = (0 + (1 - _LN2) + (3 - 2 * _LN2) + 2 * (-0.5 + _LN2)) / 5


@pytest.mark.parametrize(
    "level, mode, expected, ratio_mean, ratio_max, masked",
    [
        ("token", "truncate", [[1, 2, 3], [0.5, 0.5, 0]], 8 / 5, 4.0, 1 / 5),  # TIS: min(rho_t, 3)
        ("token", "mask", [[1, 2, 0], [0.5, 0.5, 0]], 8 / 5, 4.0, 1 / 5),  # MIS: rho_t = 4 > 3 weighs 0
        # sequence ratios: 1 * 2 * 4 = 8 (over the cap) and 0.5 * 0.5 = 0.25 (the masked token left out)
        ("sequence", "truncate", [[3, 3, 3], [0.25, 0.25, 0]], (8 + 0.25) / 2, 8.0, 3 / 5),
        ("sequence", "mask", [[0, 0, 0], [0.25, 0.25, 0]], (8 + 0.25) / 2, 8.0, 3 / 5),
    ],
)
def test_is_correction_hand_computed(level, mode, expected, ratio_mean, ratio_max, masked):
    weights, m = is_correction(_IS_OLD, _IS_MU, _IS_MASK, level=level, mode=mode, cap=3.0)
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)
    assert float(m["rollout/is_ratio_mean"]) == pytest.approx(ratio_mean, rel=1e-6)
    assert float(m["rollout/is_ratio_max"]) == pytest.approx(ratio_max, rel=1e-6)
    assert float(m["rollout/is_masked_frac"]) == pytest.approx(masked)
    assert float(m["rollout/mismatch_kl"]) == pytest.approx(_IS_K3, rel=1e-6)


def test_is_correction_on_policy_and_unscored_tokens():
    """Equal log-probs give weight 1 and KL 0 everywhere counted; a NaN sampler log-prob counts as no mismatch;
    an extreme ratio stays finite (clamped log-ratio) and is masked."""
    lp = torch.tensor([[-0.3, -2.0, -1.0]])
    weights, m = is_correction(lp, lp.clone(), None, level="token", mode="mask")
    assert weights.tolist() == [[1.0, 1.0, 1.0]] and float(m["rollout/mismatch_kl"]) == 0.0
    mu = torch.tensor([[float("nan"), -2.0, -1000.0]])
    weights, m = is_correction(lp, mu, None, level="token", mode="mask")
    assert weights.tolist() == [[1.0, 1.0, 0.0]] and torch.isfinite(m["rollout/is_ratio_max"])
    with pytest.raises(ValueError, match="level must be one of"):
        is_correction(lp, lp, None, level="tokens")


def test_ppo_clip_loss_weights_scale_each_token():
    """L = token-mean(-w * min(r A, clip(r) A)): weights 0.5 and 0 on two of three tokens, the normaliser still 3."""
    logp = torch.tensor([[-1.0, -1.0, -1.0]])
    old = logp + torch.tensor([[0.0, 0.5, 0.0]])  # ratios 1, e^-0.5 (min picks the unclipped r A), 1
    adv = torch.tensor([2.0])
    w = torch.tensor([[1.0, 0.5, 0.0]])
    loss, _ = ppo_clip_loss(logp, old, adv, torch.ones(1, 3), clip_eps=0.2, weights=w)
    r = math.exp(-0.5)
    expected = -(1.0 * 2.0 + 0.5 * min(r * 2.0, 0.8 * 2.0) + 0.0) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    close(kl_k1(logp, ref), [math.log(2.0)])
    close(kl_k2(logp, ref), [0.5 * math.log(2.0) ** 2])
    close(kl_k3(logp, ref), [0.5 + math.log(2.0) - 1.0])  # exp(-log 2) + log 2 - 1
    close(kl_k3(ref, logp), [2.0 - math.log(2.0) - 1.0])
    for kind, fn in (("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)):
        close(kl_estimate(logp, ref, kind), fn(logp, ref))
    with pytest.raises(ValueError, match="k1.*k2.*k3"):
        kl_estimate(logp, ref, "k4")


def test_kl_k3_is_unbiased_and_nonnegative():
    gen = torch.Generator().manual_seed(3)
    p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    samples = torch.multinomial(p, 100_000, replacement=True, generator=gen)
    k3 = kl_k3(p.log()[samples], q.log()[samples])
    assert (k3 >= 0).all()
    assert abs(k3.mean().item() - (p * (p / q).log()).sum().item()) < 0.01


# --- log-probs and entropy ----------------------------------------------------------------------------------


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -math.inf, -math.inf]])
    # uniform over 4: log 4; (0.75, 0.25): -(0.75 ln 0.75 + 0.25 ln 0.25)
    close(entropy_from_logits(logits), [math.log(4.0), 0.5623351])
    one_hot = torch.tensor([[0.0, -math.inf, -math.inf]], requires_grad=True)
    out = entropy_from_logits(one_hot)
    out.sum().backward()
    close(out.detach(), [0.0])
    assert torch.isfinite(one_hot.grad).all()
    big = torch.randn(3, 5, 7)
    naive = -(big.softmax(-1) * big.log_softmax(-1)).sum(-1)
    close(entropy_from_logits(big, chunk_size=4), naive)
    assert entropy_from_logits(big.bfloat16()).dtype == torch.float32


def test_selective_log_softmax_matches_naive():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 11, generator=gen) * 3
    index = torch.randint(0, 11, (3, 5), generator=gen)
    naive = logits.log_softmax(-1).gather(-1, index[..., None]).squeeze(-1)
    close(selective_log_softmax(logits, index), naive)
    half = selective_log_softmax(logits.bfloat16(), index)
    assert half.dtype == torch.float32
    close(half, naive, atol=0.1)


def test_token_logprobs_shift_and_temperature():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    ids = torch.tensor([[0, 1, 0]])
    # logits[:, 0] predicts ids[:, 1] = 1 (p = 0.5); logits[:, 1] predicts ids[:, 2] = 0 (p = 0.75)
    close(token_logprobs(logits, ids), [[math.log(0.5), math.log(0.75)]])
    # at temperature 2: softmax(log 3 / 2, 0) puts sqrt(3) / (sqrt(3) + 1) on token 0
    close(token_logprobs(logits, ids, temperature=2.0)[:, 1], [math.log(3**0.5 / (3**0.5 + 1))])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, ids, temperature=0.0)


def test_sequence_logprobs():
    per_token = torch.tensor([[-1.0, -2.0, -math.inf], [-0.5, -0.5, -0.5]])
    close(sequence_logprobs(per_token, torch.tensor([[1, 1, 0], [0, 1, 1]])), [-3.0, -1.0])


# --- SFT and preference losses ------------------------------------------------------------------------------


def test_sft_loss_hand_computed():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    labels = torch.tensor([[0, 1]])
    loss, metrics = sft_loss(logits, labels, torch.tensor([[1, 1]]))
    close(loss, (math.log(2.0) + math.log(4.0)) / 2)  # -log 0.5, -log 0.25
    close(metrics["sft/tokens"], 2.0)
    loss, metrics = sft_loss(logits, torch.tensor([[0, -100]]), torch.tensor([[1, 0]]))
    close(loss, math.log(2.0))
    close(metrics["loss/sft"], math.log(2.0))
    close(metrics["sft/tokens"], 1.0)


def test_sft_loss_matches_cross_entropy_ignore_index():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 6, generator=gen)
    labels = torch.randint(0, 6, (2, 4), generator=gen)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    reference = F.cross_entropy(logits.reshape(-1, 6), labels.masked_fill(mask == 0, -100).reshape(-1))
    close(sft_loss(logits, labels, mask)[0], reference)


PREFS = dict(
    policy_chosen_logps=torch.tensor([-1.0]),
    policy_rejected_logps=torch.tensor([-3.0]),
    ref_chosen_logps=torch.tensor([-2.0]),
    ref_rejected_logps=torch.tensor([-2.0]),
)


def test_dpo_loss_hand_computed():
    # h = (-1 + 2) - (-3 + 2) = 2; beta * h = 1
    loss, metrics = dpo_loss(**PREFS, beta=0.5)
    close(loss, math.log1p(math.exp(-1.0)))  # -logsigmoid(1)
    close(metrics["rewards/chosen"], 0.5)
    close(metrics["rewards/rejected"], -0.5)
    close(metrics["rewards/margins"], 1.0)
    close(metrics["rewards/accuracy"], 1.0)
    smoothed, _ = dpo_loss(**PREFS, beta=0.5, label_smoothing=0.1)
    close(smoothed, 0.9 * math.log1p(math.exp(-1.0)) + 0.1 * math.log1p(math.exp(1.0)))


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-2.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    dpo_loss(chosen, rejected, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.1)[0].backward()
    close(chosen.grad, [-0.05])  # -beta * sigmoid(-beta * h) at h = 0
    close(rejected.grad, [0.05])


def test_ipo_loss_hand_computed():
    loss, metrics = ipo_loss(**PREFS, beta=0.1)
    close(loss, (2.0 - 5.0) ** 2)  # (h - 1 / (2 beta))^2
    close(metrics["rewards/margins"], 0.2)
    # per-token log-ratios: 1 / 2 - (-1) / 4 = 0.75
    loss, _ = ipo_loss(
        **PREFS, beta=0.1, chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4])
    )
    close(loss, (0.75 - 5.0) ** 2)


def test_bradley_terry_loss_hand_computed():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    loss, metrics = bradley_terry_loss(chosen, rejected)
    plain = (math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2
    close(loss, plain)
    close(metrics["loss/reward"], plain)
    close(metrics["reward/accuracy"], 0.5)
    close(metrics["reward/margin"], 0.5)
    loss, metrics = bradley_terry_loss(chosen, rejected, margin=torch.tensor([0.5, 0.0]))
    close(loss, (math.log1p(math.exp(-0.5)) + math.log(2.0)) / 2)
    close(metrics["reward/margin"], 0.5)
    loss, _ = bradley_terry_loss(chosen, rejected, center_coef=0.1)
    close(loss, plain + 0.1 * (9.0 + 0.0) / 2)
