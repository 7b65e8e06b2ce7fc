"""GRPO trainer: the loss on a hand-built batch, update invariances, and bad input."""

import math

import pytest
import torch
from datasets import Dataset

from align.config import ConfigError, parse_config
from align.generation import build_rollout, eos_token_ids, tokenize_prompts
from align.trainers.grpo import GRPOConfig, GRPOTrainer, MicroBatch
from tests.support import reset_accelerate_state, tiny_causal_lm, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


class FakeGenerator:
    """Returns fixed completions (token lists cycling per row) so rewards and updates are deterministic."""

    def __init__(self, tokenizer, completions: list[list[int]]):
        self.tokenizer = tokenizer
        self.completions = completions
        self.eos = eos_token_ids(tokenizer)

    def sync_weights(self, model):
        pass

    def generate(self, prompts, params, *, prompt_ids=None):
        G = params.num_generations
        ids = prompt_ids if prompt_ids is not None else tokenize_prompts(self.tokenizer, prompts)
        rows = [list(i) for i in ids for _ in range(G)]
        comps = [self.completions[r % len(self.completions)] for r in range(len(rows))]
        return build_rollout(
            prompts=prompts, num_generations=G, prompt_ids=rows, completion_ids=comps, logprobs=None,
            tokenizer=self.tokenizer, eos_ids=self.eos, pad_id=self.tokenizer.pad_token_id,
        )  # fmt: skip


def length_reward(prompts, completions, **kw):
    """Deterministic, varies within a group: the completion's character count mod 3."""
    return [float(len(c[0]["content"]) % 3) for c in completions]


def _data(n=8):
    return Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)}
            for i in range(n)
        ]
    )


def _trainer(tmp_path, name="run", reward=length_reward, completions=None, **overrides):
    # adam_epsilon 1 (with lr 1): Adam's first step is otherwise ~lr * sign(g), which turns float noise in tiny gradient
    # entries into full-size differences; with a large epsilon the update is ~lr * g and comparable.
    args = ["--output_dir", str(tmp_path / name), "--disable_progress_bar", "true", "--learning_rate", "1.0",
            "--adam_epsilon", "1.0", "--warmup_steps", "0"]  # fmt: skip
    for k, v in {
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "max_new_tokens": 8,
        **overrides,
    }.items():
        args += [f"--{k}", str(v)]
    cfg = parse_config(GRPOConfig, args)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    trainer = GRPOTrainer(cfg, model, tok, [reward], _data())
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    # Ordinary tokens (ids below ~20 are special tokens, which decode to empty text and equal rewards).
    completions = completions or [
        [1000, 1001, eos],
        [1002, 1003, 1004, 1005, eos],
        [1006],
        [1007, 1008, 1009, eos],
        [1010, 1011],
    ]
    trainer.generator = FakeGenerator(tok, completions)
    return trainer


def test_loss_on_hand_built_batch(tmp_path):
    """compute_loss equals the GRPO objective written out by hand: clipped ratio term + beta * k3, token mean."""
    trainer = _trainer(tmp_path, beta=0.1, epsilon=0.2, temperature=1.0)  # the hand sum below is at T = 1
    model = trainer.model
    torch.manual_seed(0)
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    completion = torch.tensor([[11, 12, 13, 14], [15, 16, 0, 0]])
    cmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    ids = torch.cat([prompt, completion], 1)
    attn = torch.cat([torch.ones_like(prompt), cmask], 1)
    adv = torch.tensor([1.5, -0.5])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits[:, 2:-1]  # positions predicting completion
        lp = torch.log_softmax(logits, -1).gather(-1, completion[..., None]).squeeze(-1)
    old = lp + torch.tensor([[0.3, -0.3, 0.05, 0.0], [0.5, 0.1, 0.0, 0.0]])  # some ratios outside [0.8, 1.2]
    ref = lp + torch.tensor([[0.2, 0.1, -0.1, 0.0], [0.0, 0.3, 0.0, 0.0]])
    mb = MicroBatch(prompt, torch.ones_like(prompt), completion, cmask, cmask, adv, old, ref)
    loss, metrics = trainer.compute_loss(mb)

    # By hand, element by element.
    total, count = 0.0, 0
    for i in range(2):
        for t in range(4):
            if not cmask[i, t]:
                continue
            r = math.exp(lp[i, t] - old[i, t])
            a = float(adv[i])
            clipped = min(max(r, 0.8), 1.2)
            pg = -min(r * a, clipped * a)
            d = float(ref[i, t] - lp[i, t])
            k3 = math.exp(d) - d - 1
            total += pg + 0.1 * k3
            count += 1
    assert float(loss.detach()) == pytest.approx(total / count, rel=1e-5)
    assert float(metrics["kl"]) > 0


def _params(trainer):
    return torch.cat(
        [p.detach().flatten() for p in trainer.accelerator.unwrap_model(trainer.model).parameters()]
    )


def test_accumulation_invariance(tmp_path):
    """8 completions in one micro-batch == 2 x 4 micro-batches (token loss over variable lengths)."""
    a = _trainer(tmp_path, "a", per_device_train_batch_size=8, gradient_accumulation_steps=1, max_steps=1)
    a.train()
    pa = _params(a)
    reset_accelerate_state()
    b = _trainer(tmp_path, "b", per_device_train_batch_size=2, gradient_accumulation_steps=4, max_steps=1)
    b.train()
    assert torch.allclose(pa, _params(b), atol=1e-6)
    assert (pa - _params(_reinit(tmp_path))).abs().max() > 1e-3  # the step did move the weights
    rows = [__import__("json").loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["reward/zero_std_group_fraction"] == 0.0


def _reinit(tmp_path):
    reset_accelerate_state()
    return _trainer(tmp_path, "init", max_steps=1)


@pytest.mark.parametrize("loss_type", ["token", "sequence", "dr_grpo"])
def test_dropping_zero_std_groups_changes_nothing(tmp_path, loss_type):
    """Groups with equal rewards carry no gradient; skipping their forward pass gives the same update."""
    eos = tiny_tokenizer().convert_tokens_to_ids("<|im_end|>")
    # 4 completions per group; group 0 rewards vary, group 1 (rows 4..7) all equal by construction.
    comps = [[11, eos], [13, 14, eos], [17, 18, 19, eos], [11, eos], [30, 31, 32, 33], [34, 35, 36, 37], [38, 39, 40, 41], [42, 43, 44, 45]]  # fmt: skip

    def reward(prompts, completions, **kw):
        return [float(i < 4) * (i % 3) for i in range(len(completions))]

    a = _trainer(
        tmp_path,
        "a",
        reward=reward,
        completions=comps,
        skip_zero_std_groups="true",
        loss_type=loss_type,
        max_steps=1,
    )
    a.train()
    reset_accelerate_state()
    b = _trainer(
        tmp_path,
        "b",
        reward=reward,
        completions=comps,
        skip_zero_std_groups="false",
        loss_type=loss_type,
        max_steps=1,
    )
    b.train()
    assert (_params(a) - _params(b)).abs().max() < 1e-6, (_params(a) - _params(b)).abs().max()
    assert (_params(a) - _params(_reinit(tmp_path))).abs().max() > 1e-3  # the update is not empty
    rows = [__import__("json").loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["reward/zero_std_group_fraction"] == 0.5
    assert rows[0]["completions/skipped_fraction"] == 0.5


def test_multiple_iterations_keep_old_logprobs(tmp_path):
    trainer = _trainer(tmp_path, num_iterations=2, max_steps=2, gradient_accumulation_steps=1)
    trainer.train()
    rows = [
        __import__("json").loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[0]["clip/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # first pass: policy == old policy
    assert rows[1]["clip/ratio_mean"] != pytest.approx(1.0, abs=1e-7)  # second pass on the same data
    assert "reward/mean" in rows[0] and "reward/mean" not in rows[1]  # one generation fed two steps


def test_bad_config_names_option():
    with pytest.raises(ConfigError, match="num_generations must be >= 2"):
        parse_config(GRPOConfig, ["--num_generations", "1"])
    with pytest.raises(
        ConfigError, match=r"per_device_train_batch_size x gradient_accumulation_steps = 6 x 1"
    ):
        parse_config(GRPOConfig, ["--num_generations", "4", "--per_device_train_batch_size", "6"])
    with pytest.raises(ConfigError, match="reward_weights has 2 values for 1 reward_funcs"):
        parse_config(GRPOConfig, ["--reward_weights", "1", "2"])


def test_reward_that_raises_is_named(tmp_path):
    def broken_reward(prompts, completions, **kw):
        raise KeyError("answer")

    trainer = _trainer(tmp_path, reward=broken_reward, max_steps=1)
    with pytest.raises(RuntimeError, match="reward function 'broken_reward' failed"):
        trainer.train()


def test_dataset_without_prompt_column(tmp_path):
    cfg = parse_config(GRPOConfig, ["--output_dir", str(tmp_path / "x"), "--num_generations", "4"])
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="needs a 'prompt' column"):
        GRPOTrainer(cfg, tiny_causal_lm(tok), tok, [length_reward], Dataset.from_list([{"question": "1+1"}]))


def test_vllm_server_settings_reach_the_sampler_by_its_parameter_names(tmp_path, monkeypatch):
    """generation_backend vllm-server hands vllm_server_host / _port to VLLMGenerator under the names its
    constructor takes (they were passed as host= / port=, a TypeError at start)."""
    import inspect

    from align.generation import VLLMGenerator
    from align.trainers import rollout

    seen = {}

    def record(backend, model, tokenizer, **kwargs):
        seen.update(kwargs, backend=backend)
        raise RuntimeError("recorded")

    monkeypatch.setattr(rollout, "make_generator", record)
    with pytest.raises(RuntimeError, match="recorded"):
        _trainer(
            tmp_path, generation_backend="vllm-server", vllm_server_host="10.0.0.2", vllm_server_port=8123
        )
    assert seen == {"backend": "vllm-server", "server_host": "10.0.0.2", "server_port": 8123}
    params = inspect.signature(VLLMGenerator.__init__).parameters
    assert {"server_host", "server_port"} <= set(params)


def _nan_for_row_1(prompts, completions, **kw):
    """Row 1 of every batch is a reward function bug (NaN); the others vary within their group."""
    return [float("nan") if i == 1 else float(i % 3) for i in range(len(completions))]


def test_nan_reward_stops_naming_the_function(tmp_path):
    trainer = _trainer(tmp_path, reward=_nan_for_row_1, max_steps=1)
    with pytest.raises(
        ValueError, match=r"reward function '_nan_for_row_1' returned nan for completion 1 of 8"
    ):
        trainer.train()


def test_skipped_nan_reward_leaves_the_baseline_and_the_loss(tmp_path):
    trainer = _trainer(tmp_path, reward=_nan_for_row_1, reward_nonfinite="skip", max_steps=1)
    (step,) = trainer.plan_updates()
    # Group 0 is rows 0..3 with row 1 missing: its baseline is the mean (and std) of rows 0, 2, 3 alone.
    scored = torch.tensor([0.0, 2.0, 0.0])
    by_hand = (scored - scored.mean()) / (scored.std() + 1e-4)
    rows_seen = torch.cat([mb.advantages for mb, _ in step.micro_batches])
    assert len(rows_seen) == 7  # the missing completion is in no micro-batch
    assert torch.allclose(rows_seen[:3], by_hand, atol=1e-5)
    lengths = [3, 5, 1, 4, 2, 3, 5, 1]  # the fake sampler's completion lengths (EOS counted), rows 0..7
    assert step.total == sum(n for i, n in enumerate(lengths) if i != 1)  # nor in the token normaliser
    assert step.metrics["reward/_nan_for_row_1/nonfinite"] == 1.0 and step.metrics["reward/missing"] == 1.0


def test_rollout_without_any_reward_stops(tmp_path):
    def never_applies(prompts, completions, **kw):
        return [None] * len(completions)

    trainer = _trainer(tmp_path, reward=never_applies, max_steps=1)
    with pytest.raises(
        RuntimeError, match=r"rollout 1: no completion got a reward \(never_applies: 8 of 8 None"
    ):
        trainer.train()


# Importance-sampling correction (issue 17): a sampler whose log-probs differ from the trainer's by a known
# amount. d_t = log pi_old - log mu at completion position t; the fake sampler's rows are completions
# [3, 5, 1, 4, 2, 3, 5, 1] tokens long (EOS counted), every one trained (no group dropped).
_SHIFT = [0.6, -0.3, 0.1, 0.0, 0.2]


class ShiftedSampler(FakeGenerator):
    """FakeGenerator whose log-probs are the policy's own (a forward pass) minus `_SHIFT`, as a vLLM sampler
    whose kernels give another distribution would return."""

    model = None

    def generate(self, prompts, params, *, prompt_ids=None):
        from align.forward import rollout_logprobs

        assert params.return_logprobs  # the correction needs mu
        rollout = super().generate(prompts, params, prompt_ids=prompt_ids)
        own = rollout_logprobs(self.model, rollout, temperature=params.temperature)
        shift = torch.tensor(_SHIFT)[: own.shape[1]]
        rollout.logprobs = (own - shift) * rollout.completion_mask
        return rollout


def _hand_weights(mode: str, cap: float, lengths: list[int]) -> list[list[float]]:
    """Per-row, per-token weights by the formulas: min(e^d, C) or e^d [e^d <= C] per token, or the same on
    the row's product e^(sum d) (sequence level)."""
    rows = []
    for n in lengths:
        ratios = [math.exp(d) for d in _SHIFT[:n]]
        if mode.startswith("sequence"):
            ratios = [math.exp(sum(_SHIFT[:n]))] * n
        rows.append([min(r, cap) if mode.endswith("truncate") else (r if r <= cap else 0.0) for r in ratios])
    return rows


@pytest.mark.parametrize("mode, cap", [("token_truncate", 1.5), ("sequence_mask", 1.6)])
def test_is_correction_metrics_and_loss_by_hand(tmp_path, mode, cap):
    """The rollout/* metrics equal their hand values, and the loss is the hand-weighted GRPO loss: on the first
    pass the ratio is 1, so each token's term is -A_i * w_t, token-mean over the micro-batch."""
    trainer = _trainer(
        tmp_path, is_correction=mode, is_cap=cap, skip_zero_std_groups="false", gradient_accumulation_steps=1
    )
    sampler = ShiftedSampler(trainer.generator.tokenizer, trainer.generator.completions)
    sampler.model = trainer.model
    trainer.generator = sampler
    (step,) = trainer.plan_updates()
    lengths = [3, 5, 1, 4, 2, 3, 5, 1]
    tokens = [d for n in lengths for d in _SHIFT[:n]]
    hand = _hand_weights(mode, cap, lengths)
    m = step.metrics
    assert m["rollout/mismatch_kl"] == pytest.approx(
        sum(math.exp(d) - 1 - d for d in tokens) / len(tokens), rel=1e-4
    )
    units = tokens if mode.startswith("token") else [sum(_SHIFT[:n]) for n in lengths]
    assert m["rollout/is_ratio_mean"] == pytest.approx(sum(map(math.exp, units)) / len(units), rel=1e-4)
    assert m["rollout/is_ratio_max"] == pytest.approx(max(map(math.exp, units)), rel=1e-4)
    over = sum(w != math.exp(d) for row, n in zip(hand, lengths) for w, d in zip(row, _SHIFT[:n]))
    if mode.startswith("sequence"):
        over = sum(n for n in lengths if math.exp(sum(_SHIFT[:n])) > cap)
    assert m["rollout/is_masked_frac"] == pytest.approx(over / len(tokens))

    ((mb, _),) = step.micro_batches
    for i, n in enumerate(lengths):
        torch.testing.assert_close(mb.is_weights[i, :n], torch.tensor(hand[i]), atol=1e-4, rtol=0)
    loss, metrics = trainer.compute_loss(mb)
    expected = -sum(float(mb.advantages[i]) * w for i, row in enumerate(hand) for w in row) / len(tokens)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert float(metrics["clip/ratio_mean"]) == pytest.approx(1.0, abs=1e-6)


def test_is_correction_auto_follows_the_backend():
    """auto: sequence_mask with cap 3 for the vLLM backends (another engine), off for hf (the same forward)."""
    cfg = parse_config(GRPOConfig, ["--num_generations", "4"])
    assert cfg.is_correction == "auto" and cfg.is_cap == 3.0 and cfg.is_correction_mode is None
    for backend in ("vllm", "vllm-server"):
        cfg = parse_config(GRPOConfig, ["--num_generations", "4", "--generation_backend", backend])
        assert cfg.is_correction_mode == ("sequence", "mask")
    cfg = parse_config(GRPOConfig, ["--num_generations", "4", "--is_correction", "token_truncate"])
    assert cfg.is_correction_mode == ("token", "truncate")
    with pytest.raises(ConfigError, match="is_cap"):
        parse_config(GRPOConfig, ["--num_generations", "4", "--is_cap", "0.5"])


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.8)])
def test_truncated_sampling_matches_the_trainer_end_to_end(tmp_path, top_k, top_p):
    """Real HF sampling with top-k / top-p and the correction turned on: the sampler's log-probs (mu) and the
    trainer's rollout-time ones (pi_old, over the same kept set) agree to float precision, so every ratio is
    1 and nothing is masked. Full-vocabulary trainer log-probs would put every ratio at the kept mass < 1."""
    from align.generation import HFGenerator

    trainer = _trainer(tmp_path, is_correction="token_mask", top_k=top_k, top_p=top_p, temperature=1.0)
    trainer.generator = HFGenerator(trainer.model, trainer.generator.tokenizer)
    (step,) = trainer.plan_updates()
    assert step.metrics["rollout/mismatch_kl"] == pytest.approx(0.0, abs=1e-6)
    assert step.metrics["rollout/is_ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert step.metrics["rollout/is_masked_frac"] == 0.0
