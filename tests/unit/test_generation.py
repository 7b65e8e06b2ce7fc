"""align.generation: sampling params, the Rollout layout, HF sampling and its log-probs, the vLLM glue."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from transformers import TopPLogitsWarper

from align import generation
from align.generation import (
    HFGenerator,
    Rollout,
    SamplingParams,
    VLLMGenerator,
    build_rollout,
    eos_token_ids,
    kept_tokens,
    make_generator,
    rollout_from_vllm_outputs,
    sampling_logprobs,
    tokenize_prompts,
)

EOS = 2  # <|im_end|> in SmolLM2's tokenizer: its eos and pad


def _policy_logprobs(
    model, rollout: Rollout, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Recompute the sampling log-probs with one forward pass over prompt + completion, as a trainer does
    (over the top-k / top-p set, renormalised, when truncating: `sampling_logprobs`)."""
    with torch.no_grad():
        logits = model(
            input_ids=rollout.input_ids(),
            attention_mask=rollout.attention_mask(),
            position_ids=rollout.position_ids(),
            logits_to_keep=rollout.logits_to_keep,
        ).logits[:, :-1]
    return sampling_logprobs(logits.float() / temperature, rollout.completion_ids, top_k=top_k, top_p=top_p)


# --------------------------------------------------------------------------------------------------
# SamplingParams
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field_name, value",
    [
        ("max_new_tokens", 0),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("num_generations", 0),
        ("seed", -3),
        ("repetition_penalty", 0.0),
    ],
)
def test_sampling_params_validation_names_the_field(field_name, value):
    with pytest.raises(ValueError, match=field_name):
        SamplingParams(**{field_name: value})


def test_sampling_params_defaults():
    params = SamplingParams()
    assert (params.max_new_tokens, params.temperature, params.top_p, params.top_k) == (256, 1.0, 1.0, 0)
    assert (params.num_generations, params.seed, params.repetition_penalty) == (1, None, 1.0)


# --------------------------------------------------------------------------------------------------
# HFGenerator
# --------------------------------------------------------------------------------------------------


def test_shapes_and_left_padding(tiny_model, tiny_tokenizer):
    prompts = ["Hi", "What is 12 + 7? Put the final answer in \\boxed{}."]
    rollout = HFGenerator(tiny_model, tiny_tokenizer).generate(
        prompts, SamplingParams(max_new_tokens=5, seed=0)
    )
    encoded = [tiny_tokenizer(p)["input_ids"] for p in prompts]
    N, P = rollout.prompt_ids.shape
    C = rollout.completion_ids.shape[1]
    assert (2, max(map(len, encoded))) == (N, P) and 1 <= C <= 5
    for row, ids in enumerate(encoded):
        pad = P - len(ids)
        assert rollout.prompt_ids[row, pad:].tolist() == ids
        assert (rollout.prompt_ids[row, :pad] == EOS).all()  # pad id
        assert rollout.prompt_mask[row].tolist() == [0] * pad + [1] * len(ids)
    for name in ("completion_mask", "logprobs"):
        assert getattr(rollout, name).shape == (N, C)
    assert rollout.is_eos.shape == rollout.completion_lengths.shape == (N,)
    assert (
        rollout.input_ids().shape
        == rollout.attention_mask().shape
        == rollout.position_ids().shape
        == (N, P + C)
    )
    first_real = P - len(encoded[0])
    assert rollout.position_ids()[0, first_real : first_real + 3].tolist() == [0, 1, 2]
    assert rollout.logits_to_keep == C + 1
    assert len(rollout.completion_texts) == N and rollout.prompts == prompts
    assert rollout.completion_ids.device == rollout.prompt_ids.device == tiny_model.device


def _force_eos(model, eos_step_by_row: list[int | None], prompt_width: int):
    """Make the model put all its mass on EOS for the token at index k of row r's completion."""

    def hook(module, args, kwargs, output):
        t = kwargs["attention_mask"].shape[1] - prompt_width  # index of the token being predicted
        for row, k in enumerate(eos_step_by_row):
            if k is not None and t == k:
                output.logits[row, -1, :] = -1e4
                output.logits[row, -1, EOS] = 1e4

    return model.register_forward_hook(hook, with_kwargs=True)


def test_completion_mask_counts_eos_and_nothing_after(tiny_model, tiny_tokenizer):
    prompts = ["one", "two three", "four five six"]
    width = max(map(len, tokenize_prompts(tiny_tokenizer, prompts)))
    hook = _force_eos(tiny_model, [1, 3, None], width)
    try:
        rollout = HFGenerator(tiny_model, tiny_tokenizer).generate(
            prompts, SamplingParams(max_new_tokens=6, seed=0)
        )
    finally:
        hook.remove()
    assert rollout.completion_mask.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1] * 6]
    assert rollout.is_eos.tolist() == [True, True, False]
    assert rollout.completion_lengths.tolist() == [2, 4, 6]
    assert rollout.completion_ids[0, 1] == EOS and rollout.completion_ids[1, 3] == EOS
    assert (rollout.completion_ids[0, 2:] == EOS).all() and (rollout.completion_ids[1, 4:] == EOS).all()
    assert (rollout.logprobs[rollout.completion_mask == 0] == 0).all()
    assert (rollout.logprobs[rollout.completion_mask == 1] <= 0).all()
    assert rollout.logprobs[0, 1] == pytest.approx(0.0, abs=1e-6)  # the forced EOS had probability 1
    # EOS itself is counted but its text is skipped
    assert "<|im_end|>" not in rollout.completion_texts[0]


def test_eos_ids_merge_tokenizer_and_generation_config(tiny_model, tiny_tokenizer):
    tiny_model.generation_config.eos_token_id = [EOS, 0]
    assert eos_token_ids(tiny_tokenizer, tiny_model) == [EOS, 0]
    generator = HFGenerator(tiny_model, tiny_tokenizer)
    assert generator.eos_ids == [EOS, 0] and generator.pad_id == EOS


def test_group_layout_is_contiguous(tiny_model, tiny_tokenizer):
    prompts = ["Hi", "A longer prompt here"]
    rollout = HFGenerator(tiny_model, tiny_tokenizer).generate(
        prompts, SamplingParams(max_new_tokens=4, num_generations=3, temperature=2.0, seed=1)
    )
    assert len(rollout) == 6 and rollout.num_prompts == 2 and rollout.num_generations == 3
    assert rollout.prompts == ["Hi"] * 3 + ["A longer prompt here"] * 3
    for group in (slice(0, 3), slice(3, 6)):
        rows = rollout.prompt_ids[group]
        assert (rows == rows[0]).all()
    assert not torch.equal(rollout.prompt_ids[0], rollout.prompt_ids[3])
    assert len({tuple(row) for row in rollout.completion_ids.tolist()}) > 1  # G samples, not copies


@pytest.mark.parametrize(
    "temperature, top_k, top_p, batch_size",
    [(1.0, 0, 1.0, None), (0.7, 50, 0.9, None), (1.3, 0, 1.0, 3)],
)
def test_logprobs_match_a_forward_pass(tiny_model, tiny_tokenizer, temperature, top_k, top_p, batch_size):
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Hi"}]]
    params = SamplingParams(
        max_new_tokens=8, num_generations=2, temperature=temperature, top_k=top_k, top_p=top_p, seed=3
    )
    rollout = HFGenerator(tiny_model, tiny_tokenizer, batch_size=batch_size).generate(prompts, params)
    expected = _policy_logprobs(tiny_model, rollout, temperature, top_k, top_p)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(rollout.logprobs[mask], expected[mask], atol=1e-4, rtol=0)
    assert (rollout.logprobs[~mask] == 0).all()


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.8), (5, 0.8)])
def test_truncated_sampling_first_pass_ratio_is_one(tiny_model, tiny_tokenizer, top_k, top_p):
    """With top-k / top-p the sampler draws from the truncated, renormalised distribution, and the trainer's
    log-probs (`sampling_logprobs` on its own forward) are taken under that same distribution: the first
    pass's ratio is 1 to float precision. A full-vocabulary log-softmax (TRL issue 6789) is off by exactly
    the log of the kept mass, log sum_{v in K} softmax(z)_v < 0."""
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Hi"}]]
    params = SamplingParams(
        max_new_tokens=8, num_generations=3, temperature=1.0, top_k=top_k, top_p=top_p, seed=1
    )
    rollout = HFGenerator(tiny_model, tiny_tokenizer).generate(prompts, params)
    mask = rollout.completion_mask.bool()
    trainer = _policy_logprobs(tiny_model, rollout, 1.0, top_k, top_p)
    ratio = torch.exp(trainer - rollout.logprobs)[mask]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)

    with torch.no_grad():
        logits = tiny_model(
            input_ids=rollout.input_ids(), attention_mask=rollout.attention_mask(),
            position_ids=rollout.position_ids(), logits_to_keep=rollout.logits_to_keep,
        ).logits[:, :-1].float()  # fmt: skip
    full = torch.log_softmax(logits, -1).gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
    kept_mass = (torch.softmax(logits, -1) * kept_tokens(logits, top_k, top_p)).sum(-1)
    unfixed_ratio = torch.exp(full - rollout.logprobs)[mask]
    torch.testing.assert_close(unfixed_ratio, kept_mass[mask], atol=1e-5, rtol=1e-4)
    assert float(unfixed_ratio.max()) < 0.999  # the tiny model is flat: a real gap, not rounding


def test_sampling_logprobs_by_hand():
    """Logits (1, 1, 5) = [2, 1, 0.5, 0, -1]: top_k 2 keeps {0, 1}, so log mu(1) = 1 - log(e^2 + e^1); top_p
    0.7 keeps {0, 1} too (softmax 0.56, 0.21, ...: 0.56 < 0.7, 0.77 >= 0.7), and a token outside the set
    (id 3, a sampler/trainer boundary disagreement) is added to it: log mu(3) = 0 - log(e^2 + e^1 + e^0)."""
    z = torch.tensor([[[2.0, 1.0, 0.5, 0.0, -1.0]]])
    pair = math.log(math.exp(2) + math.exp(1))
    assert float(sampling_logprobs(z, torch.tensor([[1]]), top_k=2)) == pytest.approx(1 - pair)
    assert float(sampling_logprobs(z, torch.tensor([[1]]), top_p=0.7)) == pytest.approx(1 - pair)
    outside = math.log(math.exp(2) + math.exp(1) + 1)
    assert float(sampling_logprobs(z, torch.tensor([[3]]), top_k=2)) == pytest.approx(-outside)
    full = float(torch.log_softmax(z, -1)[0, 0, 1])
    assert float(sampling_logprobs(z, torch.tensor([[1]]))) == pytest.approx(full)  # nothing truncated
    # ties at the k-th logit are all kept: top_k 1 over [1, 1, 0] keeps two tokens
    assert kept_tokens(torch.tensor([[1.0, 1.0, 0.0]]), 1, 1.0).tolist() == [[True, True, False]]
    # differentiable through the kept logits only
    z = z.clone().requires_grad_(True)
    sampling_logprobs(z, torch.tensor([[0]]), top_k=2).sum().backward()
    assert z.grad[0, 0, 2:].abs().sum() == 0 and z.grad[0, 0, :2].abs().sum() > 0


def test_logprobs_ignore_repetition_penalty(tiny_model, tiny_tokenizer):
    """The penalty shapes what is sampled; the log-probs stay those of the policy at temperature T."""
    params = SamplingParams(max_new_tokens=6, num_generations=2, repetition_penalty=1.5, seed=0)
    rollout = HFGenerator(tiny_model, tiny_tokenizer).generate(["Hi there"], params)
    mask = rollout.completion_mask.bool()
    expected = _policy_logprobs(tiny_model, rollout, 1.0)
    torch.testing.assert_close(rollout.logprobs[mask], expected[mask], atol=1e-4, rtol=0)


def test_seeded_determinism_leaves_global_rng_alone(tiny_model, tiny_tokenizer):
    generator = HFGenerator(tiny_model, tiny_tokenizer)
    params = SamplingParams(max_new_tokens=6, num_generations=2, seed=123)
    state = torch.random.get_rng_state()
    first = generator.generate(["Hi", "Hello"], params)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = generator.generate(["Hi", "Hello"], params)
    other = generator.generate(["Hi", "Hello"], SamplingParams(max_new_tokens=6, num_generations=2, seed=124))
    assert torch.equal(first.completion_ids, second.completion_ids)
    assert torch.equal(first.logprobs, second.logprobs)
    assert not torch.equal(first.completion_ids, other.completion_ids)


def test_chat_prompts_get_the_template_and_strings_do_not(tiny_model, tiny_tokenizer):
    conversation = [{"role": "user", "content": "What is 2 + 2?"}]
    rollout = HFGenerator(tiny_model, tiny_tokenizer).generate(
        [conversation], SamplingParams(max_new_tokens=2)
    )
    prompt = tiny_tokenizer.decode(rollout.prompt_ids[0][rollout.prompt_mask[0].bool()])
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")

    ids = tokenize_prompts(tiny_tokenizer, ["What is 2 + 2?"])[0]
    assert tiny_tokenizer.decode(ids) == "What is 2 + 2?"
    with pytest.raises(TypeError, match="all strings or all chat"):
        tokenize_prompts(tiny_tokenizer, ["text", conversation])


def test_greedy_matches_generate_and_has_no_logprobs(tiny_model, tiny_tokenizer):
    rollout = HFGenerator(tiny_model, tiny_tokenizer).generate(
        ["Hi", "The answer is"], SamplingParams(max_new_tokens=5, temperature=0.0)
    )
    assert rollout.logprobs is None
    encoded = tiny_tokenizer(["Hi", "The answer is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = tiny_model.generate(**encoded, do_sample=False, max_new_tokens=5, pad_token_id=EOS)
    reference = reference[:, encoded["input_ids"].shape[1] :]
    assert torch.equal(
        rollout.completion_ids[rollout.completion_mask.bool()], reference[rollout.completion_mask.bool()]
    )


def test_eval_mode_during_generation_and_training_flag_restored(tiny_model, tiny_tokenizer):
    seen = []
    hook = tiny_model.register_forward_hook(lambda module, args, output: seen.append(module.training))
    enable = (
        getattr(tiny_model, "activation_checkpointing_enable", None)
        or tiny_model.gradient_checkpointing_enable
    )
    enable()
    tiny_model.config.use_cache = False  # what trainers set alongside gradient checkpointing
    tiny_model.train()
    try:
        rollout = HFGenerator(tiny_model, tiny_tokenizer).generate(
            ["Hi"], SamplingParams(max_new_tokens=4, seed=0)
        )
    finally:
        hook.remove()
    assert seen and not any(seen)
    assert tiny_model.training
    assert rollout.completion_lengths.item() >= 1
    # with the cache forced on, each decoding step feeds one token: 1 prefill + (C - 1) steps
    assert len(seen) == rollout.completion_ids.shape[1]


def test_unwraps_a_module_wrapper(tiny_model, tiny_tokenizer):
    class Wrapper(torch.nn.parallel.DistributedDataParallel):  # the unwrapping only looks at `.module`
        def __init__(self, module):
            torch.nn.Module.__init__(self)
            self.module = module

    wrapped = Wrapper(tiny_model)
    params = SamplingParams(max_new_tokens=3, seed=0)
    direct = HFGenerator(tiny_model, tiny_tokenizer).generate(["Hi"], params)
    assert torch.equal(
        HFGenerator(wrapped, tiny_tokenizer).generate(["Hi"], params).completion_ids, direct.completion_ids
    )


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # from peft
def test_lora_policy_logprobs_match(tiny_model, tiny_tokenizer):
    peft_model = _lora_model(tiny_model)
    rollout = HFGenerator(peft_model, tiny_tokenizer).generate(
        ["Hi"], SamplingParams(max_new_tokens=5, num_generations=2, temperature=0.9, seed=0)
    )
    mask = rollout.completion_mask.bool()
    expected = _policy_logprobs(peft_model, rollout, 0.9)
    torch.testing.assert_close(rollout.logprobs[mask], expected[mask], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------
# The sampler itself
# --------------------------------------------------------------------------------------------------


def _draw(scores: torch.Tensor, params: SamplingParams, rows: int = 20000) -> torch.Tensor:
    draws = generation.row_uniforms(0, 0, rows, 1)  # one token per row, each row its own stream
    sampler = generation._Sampler(params, draws, raw=None)
    out = sampler(None, scores.expand(rows, -1).clone())
    assert ((out == 0).sum(1) == 1).all() and torch.isinf(out).sum(1).eq(scores.numel() - 1).all()
    return torch.bincount(out.argmax(1), minlength=scores.numel()).float() / rows


def test_sampler_draws_from_the_tempered_truncated_distribution():
    scores = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    frequencies = _draw(scores, SamplingParams(temperature=0.8))
    torch.testing.assert_close(frequencies, torch.softmax(scores / 0.8, -1), atol=0.015, rtol=0)

    frequencies = _draw(scores, SamplingParams(top_k=3))
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.5]), -1)
    torch.testing.assert_close(frequencies[:3], expected, atol=0.015, rtol=0)
    assert frequencies[3:].sum() == 0

    probs = torch.softmax(scores, -1)  # 0.57, 0.21, 0.13, ...: top_p 0.7 keeps the first two
    frequencies = _draw(scores, SamplingParams(top_p=0.7))
    torch.testing.assert_close(frequencies[:2], probs[:2] / probs[:2].sum(), atol=0.015, rtol=0)
    assert frequencies[2:].sum() == 0


def test_nucleus_matches_transformers_top_p():
    torch.manual_seed(0)
    # sharp rows (small nucleus), flat rows (nucleus of thousands: the 4096 and full-sort paths)
    scores = torch.cat([torch.randn(3, 6000) * 8, torch.randn(3, 6000) * 0.05, torch.randn(3, 6000) * 1.5])
    for top_p in (0.5, 0.9, 0.97):
        ours = generation._nucleus(torch.softmax(scores, -1), top_p) > 0
        theirs = torch.isfinite(TopPLogitsWarper(top_p)(None, scores.clone()))
        assert torch.equal(ours, theirs)


# --------------------------------------------------------------------------------------------------
# build_rollout and the vLLM glue (no vLLM needed)
# --------------------------------------------------------------------------------------------------


def test_build_rollout_cuts_after_the_first_eos(tiny_tokenizer):
    rollout = build_rollout(
        prompts=["p"],
        num_generations=2,
        prompt_ids=[[5, 6], [5, 6]],
        completion_ids=[[10, EOS, 11, 12], [13, 14, 15]],
        logprobs=[[-0.1, -0.2, -0.3, -0.4], [-1.0, -2.0, -3.0]],
        tokenizer=tiny_tokenizer,
        eos_ids=[EOS],
        pad_id=EOS,
    )
    assert rollout.completion_ids.tolist() == [[10, EOS, EOS], [13, 14, 15]]
    assert rollout.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    torch.testing.assert_close(rollout.logprobs, torch.tensor([[-0.1, -0.2, 0.0], [-1.0, -2.0, -3.0]]))
    assert rollout.is_eos.tolist() == [True, False]
    with pytest.raises(ValueError, match="completion_ids has 1 rows"):
        build_rollout(
            prompts=["p"],
            num_generations=2,
            prompt_ids=[[5], [5]],
            completion_ids=[[1]],
            logprobs=None,
            tokenizer=tiny_tokenizer,
            eos_ids=[EOS],
            pad_id=EOS,
        )


@dataclass
class FakeLogprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int = 1
    decoded_token: str | None = None


@dataclass
class FakeCompletion:  # vllm.outputs.CompletionOutput
    token_ids: list[int]
    finish_reason: str
    logprobs: list[dict] | None = None
    index: int = 0
    text: str = ""


@dataclass
class FakeRequest:  # vllm.outputs.RequestOutput
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion] = field(default_factory=list)


def _completion(ids, finish_reason, logprobs=None):
    logprobs = logprobs if logprobs is not None else [-0.5 * (i + 1) for i in range(len(ids))]
    return FakeCompletion(ids, finish_reason, [{t: FakeLogprob(lp)} for t, lp in zip(ids, logprobs)])


def _fake_outputs(tokenizer):
    hello, world = tokenizer("Hello")["input_ids"], tokenizer(" world")["input_ids"]
    return (
        [
            FakeRequest(
                [7, 8, 9], [_completion(hello + [EOS], "stop"), _completion(hello + world + hello, "length")]
            ),
            FakeRequest(
                [7], [_completion(world, "stop"), _completion(world + [EOS], "stop")]
            ),  # stop string, then EOS
        ],
        hello,
        world,
    )


def test_rollout_from_vllm_outputs(tiny_tokenizer):
    outputs, hello, world = _fake_outputs(tiny_tokenizer)
    rollout = rollout_from_vllm_outputs(
        outputs,
        prompts=["a", "b"],
        num_generations=2,
        tokenizer=tiny_tokenizer,
        eos_ids=[EOS],
        pad_id=EOS,
        with_logprobs=True,
    )
    lengths = [len(hello) + 1, 2 * len(hello) + len(world), len(world), len(world) + 1]
    C = max(lengths)
    assert rollout.completion_ids.shape == (4, C)
    assert rollout.completion_lengths.tolist() == lengths
    assert rollout.is_eos.tolist() == [True, False, True, True]  # "stop" without EOS: a stop string
    assert rollout.prompt_ids.tolist() == [[7, 8, 9]] * 2 + [[EOS, EOS, 7]] * 2
    assert rollout.prompt_mask.tolist() == [[1, 1, 1]] * 2 + [[0, 0, 1]] * 2
    assert rollout.completion_ids[0, : lengths[0]].tolist() == hello + [EOS]
    assert (rollout.completion_ids[0, lengths[0] :] == EOS).all()
    for row, length in enumerate(lengths):
        assert rollout.logprobs[row, :length].tolist() == pytest.approx(
            [-0.5 * (i + 1) for i in range(length)]
        )
        assert (rollout.logprobs[row, length:] == 0).all()
    assert rollout.completion_texts == ["Hello", "Hello worldHello", " world", " world"]
    assert rollout.prompts == ["a", "a", "b", "b"]

    without = rollout_from_vllm_outputs(
        outputs,
        prompts=["a", "b"],
        num_generations=2,
        tokenizer=tiny_tokenizer,
        eos_ids=[EOS],
        pad_id=EOS,
        with_logprobs=False,
    )
    assert without.logprobs is None
    with pytest.raises(ValueError, match="expected 3"):
        rollout_from_vllm_outputs(
            outputs,
            prompts=["a", "b"],
            num_generations=3,
            tokenizer=tiny_tokenizer,
            eos_ids=[EOS],
            pad_id=EOS,
            with_logprobs=False,
        )


@pytest.mark.parametrize("backend", ["vllm", "vllm-server"])
def test_missing_vllm_gives_install_hint(monkeypatch, tiny_model, tiny_tokenizer, backend):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'align\[vllm\]'"):
        make_generator(backend, tiny_model, tiny_tokenizer)


def test_make_generator(tiny_model, tiny_tokenizer):
    generator = make_generator("hf", tiny_model, tiny_tokenizer, batch_size=4)
    assert isinstance(generator, HFGenerator) and generator.batch_size == 4
    assert isinstance(generator, generation.Generator)
    with pytest.raises(ValueError, match="hf, vllm, vllm-server"):
        make_generator("sglang", tiny_model, tiny_tokenizer)


class FakeLLM:
    """Stands in for `vllm.LLM`: records requests and weight loads, answers with canned outputs.

    `with_reload` gives its model runner vLLM's newer `reload_weights(weights_iterator=...)`; without it
    only `model.load_weights` exists (the path TRL 1.16 uses). `vllm_params` are the engine model's own
    parameters (vLLM's CPU backend empties packed ones).
    """

    def __init__(self, outputs, with_reload=False, vllm_params=()):
        self.outputs, self.requests, self.loaded, self.resets, self.reloads = outputs, [], [], 0, 0
        model = types.SimpleNamespace(
            load_weights=self.load_weights, named_parameters=lambda: iter(vllm_params)
        )
        runner = types.SimpleNamespace(model=model)
        if with_reload:
            runner.reload_weights = self.reload_weights
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner))
        )

    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True):
        assert is_checkpoint_format
        self.reloads += 1
        self.load_weights(weights_iterator)

    def generate(self, prompts, sampling_params, use_tqdm):
        self.requests.append((prompts, sampling_params))
        return self.outputs

    def load_weights(self, weights):  # vLLM copies the tensors into its own parameters
        self.loaded.extend((name, tensor.clone()) for name, tensor in weights)

    def reset_prefix_cache(self):
        self.resets += 1


def test_vllm_colocate_generate_with_fake_engine(monkeypatch, tiny_model, tiny_tokenizer):
    fake_vllm = types.ModuleType("vllm")
    fake_vllm.SamplingParams = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    outputs, _, _ = _fake_outputs(tiny_tokenizer)
    llm = FakeLLM(outputs)
    generator = VLLMGenerator(tiny_model, tiny_tokenizer, llm=llm)
    conversations = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    rollout = generator.generate(conversations, SamplingParams(max_new_tokens=16, num_generations=2, seed=5))
    prompts, sampling = llm.requests[0]
    assert prompts == [{"prompt_token_ids": ids} for ids in tokenize_prompts(tiny_tokenizer, conversations)]
    # one seeded request per prompt, keyed by its first completion's index in the global batch
    common = dict(n=2, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_tokens=16, logprobs=0)
    assert sampling == [
        {**common, "seed": generation.stream_seed(5, 0)},
        {**common, "seed": generation.stream_seed(5, 2)},
    ]
    assert rollout.is_eos.tolist() == [True, False, True, True] and rollout.logprobs is not None
    assert isinstance(generator, generation.Generator)


def _lora_model(tiny_model):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(tiny_model, config)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # from peft
@pytest.mark.parametrize("with_reload", [False, True])
def test_vllm_sync_weights_merges_lora(tiny_model, tiny_tokenizer, with_reload):
    base_names = {name for name, _ in tiny_model.named_parameters()}
    peft_model = _lora_model(tiny_model)
    q_proj = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    base_weight = q_proj.base_layer.weight.detach().clone()
    delta = q_proj.get_delta_weight("default").detach()

    llm = FakeLLM([], with_reload=with_reload)
    VLLMGenerator(peft_model, tiny_tokenizer, llm=llm).sync_weights(peft_model)
    assert llm.reloads == int(with_reload)
    loaded = dict(llm.loaded)
    assert set(loaded) == base_names  # vLLM's names: no base_model.model., .base_layer or lora_ tensors
    torch.testing.assert_close(loaded["model.layers.0.self_attn.q_proj.weight"], base_weight + delta)
    assert llm.resets == 1
    torch.testing.assert_close(q_proj.base_layer.weight.detach(), base_weight)  # unmerged (up to rounding)
    assert not q_proj.merged


def test_vllm_sync_refuses_packed_cpu_weights(tiny_model, tiny_tokenizer):
    packed = [("model.layers.0.self_attn.qkv_proj.weight", torch.nn.Parameter(torch.empty(0)))]
    llm = FakeLLM([], with_reload=True, vllm_params=packed)
    with pytest.raises(RuntimeError, match="cannot be updated in place"):
        VLLMGenerator(tiny_model, tiny_tokenizer, llm=llm).sync_weights(tiny_model)
    assert llm.loaded == []


def test_vllm_server_mode_with_fake_client(tiny_model, tiny_tokenizer):
    class FakeClient:
        def __init__(self):
            self.calls = []

        def generate(self, **kwargs):
            self.calls.append(("generate", kwargs))
            return {
                "prompt_ids": kwargs["prompts"],
                "completion_ids": [[5, EOS], [6, 7, 8]],
                "logprobs": [[[-0.1], [-0.2]], [[-0.3], [-0.4], [-0.5]]],
            }

        def update_named_params(self, metadata, named_params):
            self.calls.append(("update", metadata, [name for name, _ in named_params]))

        def reset_prefix_cache(self):
            self.calls.append(("reset",))

    client = FakeClient()
    generator = make_generator("vllm-server", tiny_model, tiny_tokenizer, client=client)
    rollout = generator.generate(["Hi"], SamplingParams(max_new_tokens=3, num_generations=2, seed=1))
    assert client.calls[0][1]["n"] == 2 and client.calls[0][1]["generation_kwargs"] == {"seed": 1}
    assert rollout.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert rollout.is_eos.tolist() == [True, False]
    torch.testing.assert_close(rollout.logprobs, torch.tensor([[-0.1, -0.2, 0.0], [-0.3, -0.4, -0.5]]))

    generator.sync_weights(tiny_model)
    names = [name for name, _ in tiny_model.named_parameters()]
    assert client.calls[1][0] == "update" and client.calls[1][2] == names
    assert [m[0] for m in client.calls[1][1]] == names and client.calls[2] == ("reset",)


# --------------------------------------------------------------------------------------------------
# Real vLLM (skipped where it is not installed): run in a subprocess, since vLLM's in-process engine
# sets up torch.distributed and environment variables that must not leak into the other tests.
# --------------------------------------------------------------------------------------------------

_REAL_VLLM_SCRIPT = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm.platforms import current_platform

if current_platform.is_cpu():
    # vLLM's CPU backend packs linear weights into oneDNN handles that no weight update reaches (the
    # generator refuses to sync them); plain torch weights keep the check meaningful on CPU.
    import vllm._custom_ops as ops

    ops._supports_onednn = False

from align.generation import SamplingParams, VLLMGenerator, sampling_logprobs


def max_diff(model, rollout, temperature, top_k=0, top_p=1.0):
    with torch.no_grad():
        logits = model(
            input_ids=rollout.input_ids().to(model.device),
            attention_mask=rollout.attention_mask().to(model.device),
            position_ids=rollout.position_ids().to(model.device),
            logits_to_keep=rollout.logits_to_keep,
        ).logits[:, :-1]
    ids = rollout.completion_ids.to(model.device)
    expected = sampling_logprobs(logits.float() / temperature, ids, top_k=top_k, top_p=top_p)
    mask = rollout.completion_mask.bool()
    return (rollout.logprobs[mask] - expected.cpu()[mask]).abs().max().item()


def main(path):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    generator = VLLMGenerator(
        model, tokenizer, dtype="float32", max_model_len=256, enforce_eager=True, gpu_memory_utilization=0.2
    )
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Hi"}]]
    params = SamplingParams(max_new_tokens=16, num_generations=3, temperature=0.8, seed=0)
    first = generator.generate(prompts, params)
    again = generator.generate(prompts, params)
    result = {
        "rows": len(first),
        "initial": max_diff(model, first, 0.8),
        "seeded_repeat": torch.equal(first.completion_ids, again.completion_ids),
    }
    # top-k / top-p: vLLM's processed log-probs are over the kept set, renormalised, as the trainer's are
    # (issue 17); a full-vocabulary log-softmax is off by the kept mass.
    truncated = SamplingParams(max_new_tokens=16, num_generations=3, temperature=0.8, top_k=5, top_p=0.8, seed=0)
    sampled = generator.generate(prompts, truncated)
    result["truncated"] = max_diff(model, sampled, 0.8, top_k=5, top_p=0.8)
    result["truncated_as_full"] = max_diff(model, sampled, 0.8)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    result["stale"] = max_diff(model, generator.generate(prompts, params), 0.8)
    generator.sync_weights(model)
    result["synced"] = max_diff(model, generator.generate(prompts, params), 0.8)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_real_vllm_logprobs_and_weight_sync(tmp_path, tiny_tokenizer):
    """vLLM's log-probs equal the policy's at the same temperature, before and after `sync_weights`."""
    from align.models import save_pretrained
    from tests.support import tiny_causal_lm

    path = save_pretrained(
        tiny_causal_lm(tiny_tokenizer, hidden_size=128, num_heads=2), tiny_tokenizer, tmp_path / "m"
    )
    script = tmp_path / "check.py"
    script.write_text(_REAL_VLLM_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(generation.__file__).parents[1]),
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    done = subprocess.run(
        [sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=900, env=env
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    tolerance = 1e-3 if not torch.cuda.is_available() else 2e-2  # GPU kernels may use TF32
    assert result["rows"] == 6 and result["seeded_repeat"]
    assert result["initial"] < tolerance and result["synced"] < tolerance
    assert result["truncated"] < tolerance and result["truncated_as_full"] > 10 * tolerance
    assert result["stale"] > 100 * tolerance  # the check can tell stale weights from synced ones


def test_seeded_completions_do_not_depend_on_batch_or_offset(tiny_model, tiny_tokenizer):
    """Completion i draws from a stream keyed by (seed, seed_offset + i): sampling the batch in chunks, or
    its second half alone with the matching offset (a second process), gives the same completions."""
    gen = HFGenerator(tiny_model, tiny_tokenizer)
    prompts = ["a b", "c d e", "f"]
    params = SamplingParams(max_new_tokens=6, num_generations=2, seed=7)
    whole = gen.generate(prompts, params).completion_texts
    chunked = HFGenerator(tiny_model, tiny_tokenizer, batch_size=1).generate(prompts, params).completion_texts
    assert chunked == whole
    tail = gen.generate(
        prompts[1:], SamplingParams(max_new_tokens=6, num_generations=2, seed=7, seed_offset=2)
    )
    assert tail.completion_texts == whole[2:]
    other = gen.generate(
        prompts, SamplingParams(max_new_tokens=6, num_generations=2, seed=8)
    ).completion_texts
    assert other != whole  # the seed matters
