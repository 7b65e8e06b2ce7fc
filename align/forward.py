"""The policy forward pass over sampled completions, with the shared prompt run once per group.

In GRPO (and PPO with several samples per prompt) consecutive rows share their prompt: G completions
of one question. A plain forward runs each prompt G times. Here the distinct prompts run once, their
key/value cache is gathered for every row (``index_select`` on the batch dimension, which autograd
differentiates: the gradients of the G rows add up in the shared prompt), and only the completion
tokens run per row. With 65-token chat prompts, 48-token completions and G = 4, that removes about 40%
of the tokens of every policy and reference forward and backward pass. The logits equal a plain
forward's to float rounding (tested), so the loss and update do not change.

No library does this for training (TRL and OpenRLHF re-run the prompt per completion); it is written
here by hand on top of transformers' ``DynamicCache``.
"""

import torch
from torch import nn


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counted from each row's first real token (left padding), as ``generate`` does."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of identical consecutive prompts.

    Returns ``(starts, row_to_prompt)``: ``starts`` (N,) bool marks the first row of each run;
    ``row_to_prompt`` (N,) long maps each row to the index of its distinct prompt.
    """
    same = (prompt_ids[1:] == prompt_ids[:-1]).all(-1) & (prompt_mask[1:] == prompt_mask[:-1]).all(-1)
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=prompt_ids.device), ~same])
    return starts, starts.long().cumsum(0) - 1


def completion_logits(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    share_prompt: bool = True,
    prompt_model: nn.Module | None = None,
) -> torch.Tensor:
    """Logits that predict each completion token: ``(N, C, V)``, aligned with ``completion_ids``.

    Args:
        model: a transformers causal LM (possibly wrapped by DDP or peft).
        prompt_ids: ``(N, P)`` left-padded prompts; prompt_mask ``(N, P)``, 1 = real token.
        completion_ids: ``(N, C)`` right-padded completions; completion_mask ``(N, C)``, 1 = counts.
        share_prompt: run each run of identical consecutive prompts once and reuse its KV cache.
        prompt_model: module for the prompt pass (default ``model``). Under DDP, pass the unwrapped module
            so the wrapper sees one forward per backward; gradients still reach the same parameters.
    """
    N, C = completion_ids.shape
    starts, row_to_prompt = prompt_groups(prompt_ids, prompt_mask)
    if not share_prompt or int(starts.sum()) == N:
        attn = torch.cat([prompt_mask, completion_mask], 1)
        out = model(
            input_ids=torch.cat([prompt_ids, completion_ids], 1),
            attention_mask=attn,
            position_ids=position_ids(attn),
            logits_to_keep=C + 1,
            use_cache=False,
        )
        return out.logits[:, :-1]

    u_ids, u_mask = prompt_ids[starts], prompt_mask[starts]
    first = (prompt_model or model)(
        input_ids=u_ids,
        attention_mask=u_mask,
        position_ids=position_ids(u_mask),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = first.past_key_values
    cache.batch_select_indices(row_to_prompt)  # (U, ...) -> (N, ...): a differentiable gather
    attn = torch.cat([prompt_mask, completion_mask], 1)
    pos = prompt_mask.long().sum(1, keepdim=True) + torch.arange(C, device=completion_ids.device)
    rest = model(
        input_ids=completion_ids,
        attention_mask=attn,
        position_ids=pos,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=C,
    )
    # The prompt's last logit predicts completion token 0; completion position t predicts token t + 1.
    return torch.cat([first.logits[:, -1:][row_to_prompt], rest.logits[:, :-1]], 1)
