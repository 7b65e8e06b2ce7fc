"""The shared-prompt forward pass equals a plain forward: logits and gradients."""

import torch

from align.forward import completion_logits, prompt_groups
from align.testing import tiny_causal_lm, tiny_tokenizer


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
