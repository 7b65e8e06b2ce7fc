r"""Log-likelihood multiple choice, as lm-evaluation-harness scores it, with the context computed once.

For a question with context x and choices y_1..y_K, lm-eval's `multiple_choice` output type asks for
log p(" " + y_j | x) = sum_t log p(c_{j,t} | x, c_{j,<t}) for each j, and reports

    acc      = [argmax_j  ll_j == gold]
    acc_norm = [argmax_j  ll_j / len(y_j) == gold]      (len in characters, without the leading space)

Tokenization follows lm-eval's `_encode_pair` for causal models exactly: trailing spaces of the context
move into the continuation, the context is encoded alone, context + continuation is encoded whole, and
the continuation's tokens are `whole[len(context_tokens):]`. The model then reads
`context_tokens + continuation_tokens`, so both compute the same numbers (up to float rounding).

Speed. lm-eval runs one forward pass per (question, choice) pair over context + continuation, and takes a
log-softmax over the whole vocabulary at every position. Here a batch of questions is one call of
`align.forward.completion_logits`, the shared-prompt forward that GRPO trains with: each context runs once
(left-padded, `logits_to_keep=1`: only its last position's logits, which predict every first token), and
the continuations (right-padded) run on top of its KV cache, gathered once per choice; choices that differ
only in their last token share a row (same inputs); log-probs are `logit[token] - logsumexp(logits)` at the
continuation positions only. So the shared context is computed once per question instead of once per
choice (ARC: ~4x fewer context tokens), no vocabulary-sized output is made for context positions, and
continuations are barely padded. Questions are sorted by length (longest first, as lm-eval does, so an
out-of-memory error shows at once) and packed so that a batch holds at most `batch_size` (question, choice)
pairs.

Choices run in one continuation pass per batch: splitting it into groups of similar length (less padding)
was slower (per-pass overhead outweighs the padding), and packing context and choices into one sequence
with a custom 4D attention mask breaks with attention kernels that ignore such masks (flash-attention), so
the KV cache it is. The measurements are in README.md ("Log-likelihood evaluation").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from align.forward import completion_logits, pad_rows
from align.models import eval_mode

__all__ = ["ChoiceRequest", "choice_loglikelihoods", "encode_choices"]


@dataclass
class ChoiceRequest:
    """One question's tokens: the shared context and one continuation per choice."""

    context: list[int]
    continuations: list[list[int]]


def encode_choices(tokenizer, context: str, continuations: Sequence[str]) -> ChoiceRequest:
    """Token ids of a context and its continuations, split as lm-eval's `_encode_pair` splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuations = [context[-spaces:] + c for c in continuations]
        context = context[:-spaces]
    if not context:
        # lm-eval scores an empty context after its prefix token (the BOS, else EOS).
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        whole = tokenizer(list(continuations))["input_ids"]
        return ChoiceRequest([int(prefix)], [list(map(int, w)) for w in whole])
    encoded = tokenizer([context, *(context + c for c in continuations)])["input_ids"]
    context_ids = list(map(int, encoded[0]))
    return ChoiceRequest(context_ids, [list(map(int, w[len(context_ids) :])) for w in encoded[1:]])


def _batches(requests: Sequence[ChoiceRequest], batch_size: int) -> list[list[int]]:
    """Question indices grouped into batches of at most `batch_size` choices, longest questions first."""
    order = sorted(
        range(len(requests)),
        key=lambda i: (
            -(len(requests[i].context) + max((len(c) for c in requests[i].continuations), default=0))
        ),
    )
    batches: list[list[int]] = []
    current: list[int] = []
    rows = 0
    for i in order:
        k = len(requests[i].continuations)
        if current and rows + k > batch_size:
            batches.append(current)
            current, rows = [], 0
        current.append(i)
        rows += k
    if current:
        batches.append(current)
    return batches


def _max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


@torch.no_grad()
def choice_loglikelihoods(
    model: nn.Module,
    requests: Sequence[ChoiceRequest],
    *,
    pad_id: int,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Summed log-likelihood of every continuation given its context: `out[q][j]` for question q, choice j.

    `model` must accept `past_key_values`, `position_ids` and `logits_to_keep`; `pad_id`'s value never
    matters (padding is masked). A batch holds at most `batch_size` (question, choice) pairs and never
    splits a question; `on_batch` is called with the number of questions each batch finished.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    max_len = _max_positions(model)
    out: list[list[float]] = [[] for _ in requests]
    with eval_mode(model):
        for batch in _batches(requests, batch_size):
            for q, values in zip(
                batch, _score_batch(model, [requests[i] for i in batch], pad_id, device, max_len)
            ):
                out[q] = values
            if on_batch is not None:
                on_batch(len(batch))
    return out


def _score_batch(
    model: nn.Module, requests: list[ChoiceRequest], pad_id: int, device: torch.device, max_len: int | None
) -> list[list[float]]:
    # Contexts, left-truncated (as lm-eval does) so that context + longest continuation fits the model.
    contexts = []
    for r in requests:
        longest = max((len(c) for c in r.continuations), default=0)
        keep = len(r.context) if max_len is None else max(1, min(len(r.context), max_len - longest))
        contexts.append(r.context[-keep:])
    owner = [b for b, r in enumerate(requests) for _ in r.continuations]  # the question of each choice
    conts = [c for r in requests for c in r.continuations]
    # One row per (question, continuation but its last token): choices that differ only in their last token
    # (" 45" / " 47" when digits are single tokens, " a bat" / " a cow") read the same inputs, so they share
    # a row, as in lm-eval; the row runs its first choice. An empty continuation has log p = 0.
    rows: dict[tuple, list[int]] = {}
    for j, c in enumerate(conts):
        if c:
            rows.setdefault((owner[j], tuple(c[:-1])), []).append(j)
    sums = [0.0] * len(conts)
    if rows:
        keys = list(rows)  # consecutive rows of a question share its context: it runs once
        prompt_ids, prompt_mask = pad_rows([contexts[b] for b, _ in keys], pad_id, left=True, device=device)
        ids, mask = pad_rows([conts[rows[k][0]] for k in keys], pad_id, device=device)
        logits = completion_logits(model, prompt_ids, prompt_mask, ids, mask).float()  # (R, W, V)
        lse = logits.logsumexp(-1)  # (R, W)
        # log p(token) = logit[token] - logsumexp(logits), summed over each choice's tokens.
        members = [(g, j) for g, k in enumerate(keys) for j in rows[k]]
        which = torch.as_tensor([g for g, _ in members], device=device)  # (M,) the row each choice reads
        targets, counted = pad_rows([conts[j] for _, j in members], pad_id, device=device)  # (M, W)
        steps = torch.arange(targets.shape[1], device=device)[None, :]
        token_lp = logits[which[:, None], steps, targets] - lse[which]  # (M, W)
        for (_, j), lp in zip(members, (token_lp * counted).sum(1).tolist()):
            sums[j] = lp
    out: list[list[float]] = [[] for _ in requests]
    for j, b in enumerate(owner):
        out[b].append(float(sums[j]))
    return out
