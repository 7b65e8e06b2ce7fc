"""PPO-RLHF: reward assembly, GAE over padded completions, the KL controller, and the trainer's loss."""

import math

import pytest
import torch
from datasets import Dataset

from align.advantages import gae
from align.config import ConfigError, parse_config
from align.losses import ppo_clip_loss, selective_log_softmax, value_loss
from align.trainer import NonFiniteError, read_metrics
from align.trainers.ppo import (
    AdaptiveKLController,
    FixedKLController,
    PPOConfig,
    PPOMicroBatch,
    PPOTrainer,
    explained_variance,
    per_token_rewards,
)
from tests.support import tiny_causal_lm, tiny_sequence_classifier, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


# ----------------------------------------------------------------------------------------------------------
# Pure pieces
# ----------------------------------------------------------------------------------------------------------


def test_per_token_rewards_hand_built():
    # Row 0: 3 real tokens then padding; row 1: 1 real token; row 2: empty completion.
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-0.1, -9.0, -9.0, -9.0], [-9.0] * 4])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-0.3, 0.0, 0.0, 0.0], [0.0] * 4])
    scores = torch.tensor([2.0, -1.0, 5.0])
    rewards, kl, non_score = per_token_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    # k1 = logp - ref on real tokens, 0 on padding
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.2, 0, 0, 0], [0.0] * 4]))
    expected = torch.tensor([[-0.05, 0.1, 2.0, 0.0], [-0.02 - 1.0, 0, 0, 0], [0.0] * 4])
    assert torch.allclose(rewards, expected, atol=1e-6)
    assert torch.allclose(non_score, -0.1 * kl)
    # k3 is >= 0 everywhere and also 0 on padding
    _, kl3, _ = per_token_rewards(scores, logprobs, ref, mask, kl_coef=0.1, kl_estimator="k3")
    assert (kl3 >= 0).all() and (kl3[mask == 0] == 0).all()


def _reference_gae(rewards, values, gamma, lam):
    adv = [0.0] * len(rewards)
    last = 0.0
    for t in reversed(range(len(rewards))):
        next_v = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_over_padded_completion_equals_reference_loop():
    torch.manual_seed(0)
    lengths = [5, 2, 7]
    T = 7
    rewards, values = torch.randn(3, T), torch.randn(3, T)
    mask = torch.zeros(3, T)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    adv, ret = gae(rewards, values, gamma=0.9, lam=0.8, mask=mask)
    for i, n in enumerate(lengths):
        expected = _reference_gae(rewards[i, :n].tolist(), values[i, :n].tolist(), 0.9, 0.8)
        assert torch.allclose(adv[i, :n], torch.tensor(expected), atol=1e-5)
        assert torch.allclose(ret[i, :n], torch.tensor(expected) + values[i, :n], atol=1e-5)
        assert (adv[i, n:] == 0).all()


def test_adaptive_kl_controller_matches_formula():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    ctl.update(current_kl=9.0, n_steps=64)  # error = clip(9/6 - 1) = 0.2 (clipped from 0.5)
    assert math.isclose(ctl.value, 0.1 * (1 + 0.2 * 64 / 1000))
    v = ctl.value
    ctl.update(current_kl=5.4, n_steps=32)  # error = -0.1
    assert math.isclose(ctl.value, v * (1 - 0.1 * 32 / 1000))
    v = ctl.value
    ctl.update(current_kl=0.0, n_steps=100)  # error clipped at -0.2
    assert math.isclose(ctl.value, v * (1 - 0.2 * 0.1))
    fixed = FixedKLController(0.3)
    fixed.update(100.0, 10)
    assert fixed.value == 0.3
    restored = AdaptiveKLController(1.0, 6.0, 1000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value


def test_explained_variance():
    r = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(r, r, m) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(r, 2.0), r, m) == pytest.approx(0.0)
    assert math.isnan(explained_variance(r, torch.ones_like(r), m))


# ----------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------


def _length_reward(prompts, completions, **kw):
    return [len(c[0]["content"]) / 20 for c in completions]


def _dataset(n=16):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Say something {i}"}]} for i in range(n)]
    )


def _config(tmp_path, *extra):
    args = [
        "--output_dir", str(tmp_path / "out"), "--max_steps", "4", "--rollout_batch_size", "4",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--num_ppo_epochs", "2",
        "--max_new_tokens", "6", "--disable_progress_bar", "true", "--learning_rate", "1e-3", *extra,
    ]  # fmt: skip
    return parse_config(PPOConfig, args)


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_trainer_runs_and_logs_the_listed_metrics(tmp_path, value_model):
    tok = tiny_tokenizer()
    cfg = _config(tmp_path, "--value_model", value_model, "--adaptive_kl", "true", "--kl_horizon", "10")
    value = tiny_sequence_classifier(tok, seed=1) if value_model == "separate" else None
    trainer = PPOTrainer(cfg, tiny_causal_lm(tok), tok, [_length_reward], _dataset(), value_model=value)
    trainer.train()
    rows = read_metrics(tmp_path / "out")
    assert len(rows) == 4
    first = rows[0]
    for key in (
        "score/mean", "reward/non_score", "kl", "beta", "loss/policy", "loss/value", "clip/fraction",
        "clip/value_fraction", "kl/old_approx", "entropy", "value/explained_variance", "completions/mean_length",
        "throughput/completion_tokens_per_second",
    ):  # fmt: skip
        assert key in first, key
    # 2 epochs x 1 minibatch per iteration: the rollout's statistics on every step, its counters on the
    # first step of each iteration (steps 1 and 3)
    for key in ("score/mean", "kl", "beta", "reward/non_score"):
        assert all(key in r for r in rows), key
    assert rows[1]["kl"] == rows[0]["kl"] and rows[3]["kl"] == rows[2]["kl"]
    assert "completions/tokens" in rows[2] and "completions/tokens" not in rows[1]
    # the adaptive controller moved beta (KL ~ 0 is below the target: beta falls)
    assert rows[2]["beta"] < rows[0]["beta"]
    trainer.save_model(tmp_path / "out" / "model")
    assert (tmp_path / "out" / "model" / "config.json").exists()
    if value_model == "separate":
        assert (tmp_path / "out" / "value_model" / "config.json").exists()
    else:
        assert (tmp_path / "out" / "model" / "value_head.safetensors").exists()


def test_first_epoch_ratio_is_one_and_loss_matches_hand_computation(tmp_path):
    """The trainer's loss on a hand-built micro-batch equals ppo_clip_loss + vf_coef * value_loss computed
    directly from the model's logits and values."""
    tok = tiny_tokenizer()
    cfg = _config(tmp_path, "--value_model", "shared", "--vf_coef", "0.5", "--cliprange_value", "0.1")
    trainer = PPOTrainer(cfg, tiny_causal_lm(tok), tok, [_length_reward], _dataset())
    torch.manual_seed(0)
    B, P, C = 2, 3, 4
    input_ids = torch.randint(5, 200, (B, P + C))
    attn = torch.ones(B, P + C, dtype=torch.long)
    attn[1, :1] = 0  # a left-padded prompt
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    attn[:, P:] = mask
    completion = input_ids[:, P:]
    with torch.no_grad():
        logits, values = trainer.model(input_ids, attn, C)
        logprobs = selective_log_softmax(logits.float(), completion)
    # pretend a previous epoch moved the policy: old log-probs differ
    old = logprobs - torch.tensor([[0.3, -0.3, 0.0, 0.1], [0.05, 0.5, 0.0, 0.0]])
    advantages = torch.tensor([[1.0, -1.0, 0.5, 2.0], [-0.5, 1.5, 0.0, 0.0]])
    old_values = values + 0.3
    returns = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.5, 0.5, 0.0, 0.0]])
    mb = PPOMicroBatch(input_ids, attn, completion, mask, old, old_values, advantages, returns)
    loss, metrics = trainer.compute_loss(mb)
    pg, _ = ppo_clip_loss(logprobs, old, advantages, mask, clip_eps=0.2)
    vl, _ = value_loss(values, old_values, returns, mask, clip_eps=0.1)
    assert loss.item() == pytest.approx(pg.item() + 0.5 * vl.item(), rel=1e-5)
    # by hand for one token: ratio exp(0.3) = 1.35 > 1.2 with A = 1 > 0 -> clipped at 1.2
    assert metrics["clip/fraction"].item() > 0
    # old values sit 0.3 above: clipped values are values + 0.2, the larger error where values + 0.1 > R
    expected = ((values + 0.1 > returns) & mask.bool()).sum() / mask.sum()
    assert metrics["clip/value_fraction"].item() == pytest.approx(expected.item())


@pytest.mark.parametrize("temperature", ["1.0", "0.7"])
def test_rollout_microbatches_have_ratio_one_in_first_epoch(tmp_path, temperature):
    """The rollout's log-probs, the loss's and the reference's use one temperature: before any update the
    ratio is exactly 1 (a mismatch, e.g. sampling at 0.7 but scoring at 1, would show here)."""
    tok = tiny_tokenizer()
    cfg = _config(tmp_path, "--value_model", "shared", "--num_ppo_epochs", "1", "--temperature", temperature)
    trainer = PPOTrainer(cfg, tiny_causal_lm(tok), tok, [_length_reward], _dataset())
    step = trainer.plan_updates()[0]
    mb = step.micro_batches[0][0]
    _, metrics = trainer.compute_loss(mb)
    metrics = {**step.metrics, **metrics}
    assert metrics["clip/ratio_mean"].item() == pytest.approx(1.0, abs=1e-5)
    assert metrics["kl/old_approx"].item() == pytest.approx(0.0, abs=1e-6)
    # at step 0 the policy is the reference: the KL penalty, and so the non-score reward, is 0
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["reward/non_score"] == pytest.approx(0.0, abs=1e-5)


def test_lora_reference_is_the_adapter_disabled_no_copy(tmp_path):
    from align.models import apply_lora

    tok = tiny_tokenizer()
    cfg = _config(tmp_path, "--value_model", "shared", "--use_lora", "true")
    model = apply_lora(tiny_causal_lm(tok), **cfg.lora_kwargs())
    trainer = PPOTrainer(cfg, model, tok, [_length_reward], _dataset())
    assert trainer.ref_model is None  # the base weights serve policy and reference
    full = PPOTrainer(
        _config(tmp_path / "full", "--value_model", "shared"),
        tiny_causal_lm(tok),
        tok,
        [_length_reward],
        _dataset(),
    )
    assert full.ref_model is not None
    assert not any(p.requires_grad for p in full.ref_model.parameters())


def test_non_finite_value_head_stops_with_step(tmp_path):
    tok = tiny_tokenizer()
    cfg = _config(tmp_path, "--value_model", "shared")
    trainer = PPOTrainer(cfg, tiny_causal_lm(tok), tok, [_length_reward], _dataset())
    with torch.no_grad():
        trainer.model.value_head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"step 1: the value model produced .* non-finite"):
        trainer.train()


def test_reward_model_with_another_tokenizer_is_reencoded(tmp_path):
    """A reward model whose tokenizer differs from the policy's scores decoded text, re-encoded with its own."""
    from align.models import save_pretrained
    from align.rewards.reward_model import make_reward_model_reward
    from tests.support import _trained_fallback_tokenizer

    policy_tok = tiny_tokenizer()
    rm_tok = _trained_fallback_tokenizer()
    assert rm_tok.vocab_size != policy_tok.vocab_size
    rm_path = save_pretrained(tiny_sequence_classifier(rm_tok, seed=3), rm_tok, tmp_path / "rm")
    reward = make_reward_model_reward(rm_path)
    seen = []

    def recording(prompts, completions, **kw):
        out = reward(prompts, completions, **kw)
        seen.append((prompts, completions, out))
        return out

    cfg = _config(tmp_path, "--value_model", "shared", "--max_steps", "1")
    trainer = PPOTrainer(cfg, tiny_causal_lm(policy_tok), policy_tok, [recording], _dataset())
    trainer.train()
    prompts, completions, scores = seen[0]
    # Score the same texts directly with the reward model's own tokenizer: equal.
    from align.chat_data import encode_prompt_completion

    ids = [sum(encode_prompt_completion(rm_tok, p, c), []) for p, c in zip(prompts, completions)]
    assert max(max(i) for i in ids) < rm_tok.vocab_size + len(rm_tok.get_added_vocab())
    direct = reward.score(ids)
    assert direct == pytest.approx(scores, abs=1e-5)


def test_ptx_adds_language_modelling_loss(tmp_path):
    from align.chat_data import load_rows, tokenize_sft

    tok = tiny_tokenizer()
    rows, _ = tokenize_sft(load_rows(None, "train", default="sft", limit=8), tok, max_length=64)
    cfg = _config(tmp_path, "--value_model", "shared", "--ptx_coef", "0.5", "--ptx_dataset_name", "default")
    trainer = PPOTrainer(cfg, tiny_causal_lm(tok), tok, [_length_reward], _dataset(), ptx_dataset=rows)
    step = trainer.plan_updates()[0]
    (mb, w), total = step.micro_batches[0], step.total
    loss, metrics = trainer.compute_loss(mb)
    ptx = metrics["loss/ptx"].item()
    assert ptx > 0
    trainer.config.ptx_coef = 0.0
    without, metrics0 = trainer.compute_loss(mb)
    assert "loss/ptx" not in metrics0
    # InstructGPT's objective: the PPO loss plus gamma x the LM loss once per optimizer step. The base weighs
    # this micro-batch's loss by w / total, so its ptx term carries total / (w x accumulation x processes).
    gas = cfg.gradient_accumulation_steps
    assert mb.ptx_scale == pytest.approx(total / (w * gas))
    assert loss.item() - without.item() == pytest.approx(0.5 * ptx * mb.ptx_scale, rel=1e-5)
    assert (w / total) * (loss.item() - without.item()) == pytest.approx(0.5 * ptx / gas, rel=1e-5)


def test_config_errors_name_the_fields(tmp_path):
    with pytest.raises(ConfigError, match="rollout_batch_size = 6 must equal"):
        _config(tmp_path, "--rollout_batch_size", "6")
    with pytest.raises(ConfigError, match="ptx_dataset_name"):
        _config(tmp_path, "--ptx_coef", "0.1")
    with pytest.raises(ConfigError, match="value_model_name_or_path"):
        _config(tmp_path, "--value_model", "shared", "--value_model_name_or_path", "x")


def test_skipped_nan_reward_is_out_of_the_loss_and_the_kl_controller(tmp_path):
    def nan_for_first(prompts, completions, **kw):
        return [float("nan")] + [len(c[0]["content"]) / 20 for c in completions[1:]]

    tok = tiny_tokenizer()
    cfg = _config(tmp_path, "--value_model", "shared", "--reward_nonfinite", "skip", "--num_ppo_epochs", "1")
    trainer = PPOTrainer(cfg, tiny_causal_lm(tok), tok, [nan_for_first], _dataset())
    steps = trainer.plan_updates()
    counted = sum(float(mb.mask.sum()) for step in steps for mb, _ in step.micro_batches)
    assert sum(step.total for step in steps) == counted > 0
    masks = [mb.mask for step in steps for mb, _ in step.micro_batches]
    assert sum(int((m.sum(-1) == 0).sum()) for m in masks) == 1  # the missing row counts no token
    assert all(torch.isfinite(mb.advantages).all() for step in steps for mb, _ in step.micro_batches)
    assert steps[0].metrics["reward/missing"] == 1.0 and math.isfinite(steps[0].metrics["score/mean"])

    cfg = _config(tmp_path / "error", "--value_model", "shared")
    trainer = PPOTrainer(cfg, tiny_causal_lm(tok), tok, [nan_for_first], _dataset())
    with pytest.raises(ValueError, match="reward function 'nan_for_first' returned nan for completion 0"):
        trainer.plan_updates()


class _ShiftedSampler:
    """Wraps the trainer's HF sampler: its log-probs minus a known d_t per completion position, as a sampler
    on another engine would return (d_t = log pi_old - log mu)."""

    shift = torch.tensor([0.5, -0.2, 0.1, 0.3, -0.4, 0.0])

    def __init__(self, inner):
        self.inner = inner

    def sync_weights(self, model):
        self.inner.sync_weights(model)

    def generate(self, prompts, params, **kwargs):
        assert params.return_logprobs  # turned on by is_correction
        rollout = self.inner.generate(prompts, params, **kwargs)
        rollout.logprobs = (
            rollout.logprobs - self.shift[: rollout.logprobs.shape[1]]
        ) * rollout.completion_mask
        return rollout


def test_is_correction_weights_the_policy_loss_by_hand(tmp_path):
    """PPO-RLHF with token_truncate, cap 1.3: pi_old is recomputed by the trainer, mu is the sampler's; the
    weights are min(e^d_t, 1.3) on trained tokens, the metrics their hand values, and the first epoch's
    policy loss (ratio 1) is token-mean(-A_t w_t)."""
    tok = tiny_tokenizer()
    cfg = _config(
        tmp_path, "--value_model", "shared", "--num_ppo_epochs", "1", "--gradient_accumulation_steps", "1",
        "--per_device_train_batch_size", "4", "--is_correction", "token_truncate", "--is_cap", "1.3",
    )  # fmt: skip
    trainer = PPOTrainer(cfg, tiny_causal_lm(tok), tok, [_length_reward], _dataset())
    trainer.generator = _ShiftedSampler(trainer.generator)
    (step,) = trainer.plan_updates()
    ((mb, _),) = step.micro_batches
    mask = mb.mask.bool()
    d = _ShiftedSampler.shift[: mask.shape[1]].expand_as(mask)[mask].double()
    assert step.metrics["rollout/mismatch_kl"] == pytest.approx(float((d.exp() - 1 - d).mean()), abs=1e-5)
    assert step.metrics["rollout/is_ratio_max"] == pytest.approx(float(d.exp().max()), rel=1e-4)
    assert step.metrics["rollout/is_masked_frac"] == pytest.approx(float((d.exp() > 1.3).double().mean()))
    hand = d.exp().clamp(max=1.3)
    torch.testing.assert_close(mb.is_weights[mask].double(), hand, atol=1e-4, rtol=0)
    _, metrics = trainer.compute_loss(mb)
    expected = -(mb.advantages[mask].double() * hand).mean()
    assert float(metrics["loss/policy"]) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)


def test_truncated_sampling_gives_ratio_one_against_the_sampler(tmp_path):
    """top_k 5: the HF sampler's log-probs and PPO's recomputed pi_old are over the same kept set, so with
    the correction on the mismatch is 0 to float precision (a full-vocabulary pi_old would be off by the
    kept mass)."""
    tok = tiny_tokenizer()
    cfg = _config(tmp_path, "--value_model", "shared", "--top_k", "5", "--is_correction", "token_mask")
    trainer = PPOTrainer(cfg, tiny_causal_lm(tok), tok, [_length_reward], _dataset())
    step = trainer.plan_updates()[0]
    assert step.metrics["rollout/mismatch_kl"] == pytest.approx(0.0, abs=1e-6)
    assert step.metrics["rollout/is_ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert step.metrics["rollout/is_masked_frac"] == 0.0
