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


# --------------------------------------------------------------------------------------------------
# Preference pairs: one row per pair, [prompt | chosen | rejected], the prompt run once.
# --------------------------------------------------------------------------------------------------


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / DeepSpeed / FSDP / compile and peft wrappers (LoRA layers are
    injected in place, so its modules are the ones that run)."""
    from align.models import unwrap_model

    inner = unwrap_model(model)
    get_base = getattr(inner, "get_base_model", None)  # peft
    return get_base() if callable(get_base) else inner


def pair_attention_mask(model: nn.Module, branch: torch.Tensor) -> torch.Tensor | None:
    """The 4D mask under which one row ``[prompt | chosen | rejected]`` computes what two sequences do.

    ``branch`` ``(B, S)``: 0 = prompt, 1 = chosen, 2 = rejected, -1 = padding (``collate_preferences``'s
    ``shared_branch``; each completion's ``shared_positions`` continue from its prompt). Query ``q`` sees key
    ``k <= q`` in the prompt or in its own completion, so the rejected completion never sees the chosen one
    and each token's output equals its output in its own sequence; each token also sees itself, so that
    padding rows are never empty (their outputs are never read). Returns ``(B, 1, S, S)``, boolean for sdpa,
    additive for eager attention, or ``None`` where a custom mask does not apply (other attention
    implementations; sliding-window layers, whose own mask it would replace): run the sequences whole then.
    """
    config = getattr(base_model(model), "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ("sdpa", "eager"):
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if "sliding_attention" in (getattr(text, "layer_types", None) or []):
        return None
    S = branch.shape[1]
    col = torch.arange(S, device=branch.device)
    real = branch >= 0
    same = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])  # (B, S_q, S_k)
    visible = same & real[:, None, :] & real[:, :, None] & (col[:, None] >= col[None, :])
    visible = (visible | torch.eye(S, dtype=torch.bool, device=branch.device))[:, None]
    if impl == "eager":
        dtype = next(base_model(model).parameters()).dtype
        return torch.zeros(visible.shape, dtype=dtype, device=branch.device).masked_fill(
            ~visible, torch.finfo(dtype).min
        )
    return visible
