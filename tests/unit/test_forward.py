"""The forward passes of ``align.forward`` equal plain forwards: the shared prompt (logits and gradients),
rollout log-probs, next-token logits of left-padded rows."""

from types import SimpleNamespace

import torch

from align.forward import completion_logits, next_token_logits, prompt_groups, rollout_logprobs
from tests.support import tiny_causal_lm, tiny_tokenizer


def _batch():
    # Two prompts (different lengths, left-padded), G = 3 completions each (right-padded).
    prompt_ids = torch.tensor([[0, 0, 5, 6, 7]] * 3 + [[8, 9, 10, 11, 12]] * 3)
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1]] * 3 + [[1, 1, 1, 1, 1]] * 3)
    completion_ids = torch.tensor(
        [[20, 21, 22, 0], [23, 24, 0, 0], [25, 26, 27, 28], [29, 30, 0, 0], [31, 32, 33, 0], [34, 0, 0, 0]]
    )
    completion_mask = (completion_ids != 0).long()
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def test_prompt_groups():
    p, m, _, _ = _batch()
    starts, row_to_prompt = prompt_groups(p, m)
    assert starts.tolist() == [True, False, False, True, False, False]
    assert row_to_prompt.tolist() == [0, 0, 0, 1, 1, 1]


def test_shared_prompt_equals_plain_forward_logits_and_grads():
    model = tiny_causal_lm(tiny_tokenizer(), seed=0).train()
    batch = _batch()
    mask = batch[3].bool()
    grads = []
    outs = []
    for share in (False, True):
        model.zero_grad()
        logits = completion_logits(model, *batch, share_prompt=share)
        assert logits.shape == (6, 4, model.config.vocab_size)
        lp = torch.log_softmax(logits.float(), -1).gather(-1, batch[2][..., None]).squeeze(-1)
        (lp * mask).sum().backward()
        outs.append(lp.detach()[mask])
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


class _Rollout(SimpleNamespace):
    """What ``rollout_logprobs`` reads of ``align.generation.Rollout``."""

    def __len__(self) -> int:
        return len(self.completion_ids)


def test_rollout_logprobs_equal_plain_forward():
    model = tiny_causal_lm(tiny_tokenizer(), seed=0).eval()
    p, pm, c, cm = _batch()
    ids, attn = torch.cat([p, c], 1), torch.cat([pm, cm], 1)
    with torch.no_grad():
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, p.shape[1] - 1 : -1]
    expected = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, c[..., None]).squeeze(-1) * cm
    rollout = _Rollout(prompt_ids=p, prompt_mask=pm, completion_ids=c, completion_mask=cm)
    got = rollout_logprobs(model, rollout, batch_size=4, temperature=0.7)  # two micro-batches: 4 + 2 rows
    assert got.shape == c.shape and bool((got[cm == 0] == 0).all())
    assert torch.allclose(got, expected, atol=1e-5)


def test_next_token_logits_do_not_depend_on_left_padding():
    model = tiny_causal_lm(tiny_tokenizer(), seed=0).eval()
    p, pm, _, _ = _batch()
    with torch.no_grad():
        batched, cache = next_token_logits(model, p, pm)
        alone, _ = next_token_logits(model, p[:1, 2:], pm[:1, 2:])  # row 0 without its two pads
        plain = model(input_ids=p[:1, 2:]).logits[:, -1]
    assert cache is None and batched.shape == (6, model.config.vocab_size)
    assert torch.allclose(batched[0], alone[0], atol=1e-5) and torch.allclose(alone, plain, atol=1e-5)
