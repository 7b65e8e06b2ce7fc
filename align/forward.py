"""The LLM forward pass, in one place: every trainer, the reference pass, evaluation and the judge use it.

- ``position_ids`` (from a left- or right-padded mask) and ``base_model`` (inside DDP / accelerate / peft);
- completions given left-padded prompts: ``completion_logits`` (GRPO, PPO, log-likelihood evaluation),
  ``rollout_logprobs`` (PPO's reference pass, reward-KL evaluation), ``next_token_logits`` (the judge);
- whole sequences, logits only where a label counts: ``selected_logits``, ``logprob_sums`` (SFT, DPO);
- preference pairs as one row ``[prompt | chosen | rejected]``: ``pair_attention_mask`` (also the reward
  model's) and ``pair_logprob_sums`` (DPO).

The shared prompt. In GRPO consecutive rows share their prompt (G completions of one question). Here the
distinct prompts run once, their key/value cache is gathered for every row (a differentiable gather: the G
rows' gradients add up in the shared prompt), and only the completion tokens run per row. The logits equal
a plain forward's to float rounding (tested). TRL and OpenRLHF re-run the prompt per completion.
"""

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from align.losses import selective_log_softmax


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / DeepSpeed / FSDP / compile and peft wrappers (LoRA layers are
    injected in place, so its modules are the ones that run)."""
    from align.models import unwrap_model

    inner = unwrap_model(model)
    get_base = getattr(inner, "get_base_model", None)  # peft
    return get_base() if callable(get_base) else inner


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counted from each row's first real token (left padding), as ``generate`` does."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_rows(
    rows: Sequence[Sequence[float]],
    value: float,
    *,
    left: bool = False,
    dtype: torch.dtype = torch.long,
    min_width: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged rows as ``(len(rows), width)`` padded with ``value`` on the right (on the left with ``left``),
    and the mask of the real entries (1 = real); ``width`` is the longest row's, at least ``min_width``."""
    width = max(min_width, max(len(row) for row in rows))
    out = torch.full((len(rows), width), value, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            cols = slice(width - len(row), width) if left else slice(0, len(row))
            out[i, cols] = torch.as_tensor(row, dtype=dtype)
            mask[i, cols] = 1
    return (out, mask) if device is None else (out.to(device), mask.to(device))


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of identical consecutive prompts: ``starts`` (N,) bool marks the first row of each run,
    ``row_to_prompt`` (N,) long maps each row to the index of its distinct prompt."""
    same = (prompt_ids[1:] == prompt_ids[:-1]).all(-1) & (prompt_mask[1:] == prompt_mask[:-1]).all(-1)
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=prompt_ids.device), ~same])
    return starts, starts.long().cumsum(0) - 1


def next_token_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, cache: bool = False
) -> tuple[torch.Tensor, Any]:
    """Logits ``(B, V)`` after the last token of left-padded rows ``(B, T)`` (they predict the next token),
    and the rows' KV cache when ``cache``, else ``None``. Only the last position goes through the lm_head."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=cache,
        logits_to_keep=1,
    )
    return out.logits[:, -1], (out.past_key_values if cache else None)


def whole_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion: int,
    *,
    with_logits: bool = True,
    hidden: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One forward over whole rows ``[prompt | completion]`` ``(N, P + C)``, ``C = num_completion``: the
    logits ``(N, C, V)`` that predict the completion tokens (with ``with_logits``) and, with ``hidden``, the
    last hidden states ``(N, C, H)`` in which they are chosen."""
    C = num_completion
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        logits_to_keep=C + 1 if with_logits else 1,
        output_hidden_states=hidden,
        use_cache=False,
    )
    logits = out.logits[:, :-1] if with_logits else None
    return logits, (out.hidden_states[-1][:, -(C + 1) : -1] if hidden else None)


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

    Prompts ``(N, P)`` are left-padded, completions ``(N, C)`` right-padded; masks 1 = attended.
    ``share_prompt``: run each run of identical consecutive prompts once. ``prompt_model``: the module for the
    prompt pass; under DDP the unwrapped one, so the wrapper sees one forward per backward.
    """
    N, C = completion_ids.shape
    attn = torch.cat([prompt_mask, completion_mask], 1)
    if share_prompt:
        starts, row_to_prompt = prompt_groups(prompt_ids, prompt_mask)
        share_prompt = int(starts.sum()) < N  # no prompt repeats: one plain forward
    if not share_prompt:
        return whole_forward(model, torch.cat([prompt_ids, completion_ids], 1), attn, C)[0]
    prompts = prompt_model or model
    last, cache = next_token_logits(prompts, prompt_ids[starts], prompt_mask[starts], cache=True)
    cache.batch_select_indices(row_to_prompt)  # (U, ...) -> (N, ...): a differentiable gather
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
    return torch.cat([last[row_to_prompt, None], rest.logits[:, :-1]], 1)


@torch.no_grad()
def rollout_logprobs(
    model: nn.Module, rollout: Any, batch_size: int = 16, *, temperature: float = 1.0
) -> torch.Tensor:
    """``(N, C)`` float32 log-probs of a ``Rollout``'s completion tokens under ``model`` at ``temperature``
    (0 on padding), ``batch_size`` rows per forward, no gradient: PPO's reference pass and reward-KL eval."""
    out = []
    for s in range(0, len(rollout), batch_size):
        sl = slice(s, s + batch_size)
        ids, mask = rollout.completion_ids[sl], rollout.completion_mask[sl]
        logits = completion_logits(
            model, rollout.prompt_ids[sl], rollout.prompt_mask[sl], ids, mask, share_prompt=False
        )
        out.append(selective_log_softmax(logits.float() / temperature, ids) * mask)
    return torch.cat(out)


def label_positions(mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` bool: position ``t`` is kept when token ``t + 1`` counts (its logits predict it)."""
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[:, :-1] = mask[:, 1:].bool()
    return keep


@functools.lru_cache(maxsize=32)
def _takes_bool_logits_to_keep(forward_cls: type) -> bool:
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401  (boolean masks: 5.x)
    except ImportError:
        return False
    return "logits_to_keep" in inspect.signature(forward_cls.forward).parameters


def selected_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    keep: torch.Tensor,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits ``(N, V)`` at the ``N`` positions where ``keep`` ``(B, T)`` is True, in row-major order. The
    lm_head projects only those (boolean ``logits_to_keep``) where the model supports it, else the columns
    from the first kept one on. ``positions`` default to ``position_ids(attention_mask)``."""
    if positions is None and attention_mask is not None:
        positions = position_ids(attention_mask)
    kwargs: dict[str, Any] = {"input_ids": input_ids, "position_ids": positions, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if _takes_bool_logits_to_keep(type(base_model(model))):
        logits = model(**kwargs, logits_to_keep=keep).logits
        if logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
            return logits
        if logits.dim() == 3 and logits.shape[:2] == keep.shape:  # the model ignored the mask
            return logits[keep]
        raise RuntimeError(
            f"{type(model).__name__} returned logits of shape {tuple(logits.shape)} for a boolean logits_to_keep "
            f"of shape {tuple(keep.shape)} with {int(keep.sum())} positions kept"
        )
    cols = keep.any(0).nonzero()
    first = int(cols.min()) if cols.numel() else keep.shape[1] - 1
    try:
        logits = model(**kwargs, logits_to_keep=keep.shape[1] - first).logits
    except TypeError:  # a model without logits_to_keep
        logits = model(**kwargs).logits[:, first:]
    return logits[keep[:, first:]]


def _sums_by_row(token_logps: torch.Tensor, rows: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs ``(M,)`` summed into ``n`` sequences by index ``rows`` ``(M,)``, and the counts."""
    logps = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)
    counts = torch.zeros(n, dtype=torch.long, device=rows.device).index_add(0, rows, torch.ones_like(rows))
    return logps, counts


def logprob_sums(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    mask: torch.Tensor,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the log-probs of the tokens where ``mask`` is 1, per row: ``(B,)``, and their counts ``(B,)``.

    ``log pi(y | x) = sum_t log softmax(logits_{t-1})[y_t]`` over counted tokens ``t``, in float32; padding
    on either side is fine (``positions`` are given for packed rows).
    """
    keep = label_positions(mask)
    logits = selected_logits(model, input_ids, attention_mask, keep, positions)
    counted = mask[:, 1:].bool()
    labels = input_ids[:, 1:][counted]
    token_logps = selective_log_softmax(logits.unsqueeze(0), labels.unsqueeze(0)).squeeze(0)  # (N,)
    B = input_ids.shape[0]
    rows = torch.arange(B, device=input_ids.device)[:, None].expand_as(counted)[counted]
    return _sums_by_row(token_logps, rows, B)


def pair_attention_mask(model: nn.Module, branch: torch.Tensor) -> torch.Tensor | None:
    """The 4D mask under which one row ``[prompt | chosen | rejected]`` computes what two sequences do.

    ``branch`` ``(B, S)``: 0 = prompt, 1 = chosen, 2 = rejected, -1 = padding (``collate_preferences``'s
    ``shared_branch``; each completion's ``shared_positions`` continue from its prompt). Query ``q`` sees key
    ``k <= q`` in the prompt or in its own completion, so each token's output equals its output in its own
    sequence; each token also sees itself, so padding rows are never empty. Returns ``(B, 1, S, S)``,
    boolean for sdpa, additive for eager, or ``None`` (other attention implementations, sliding windows).
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


def pair_logprob_sums(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``logprob_sums`` of a preference batch's 2B sequences (chosen, then rejected) from one row per pair
    (``shared_ids`` under :func:`pair_attention_mask`): ``(2B,)`` sums and counts. A completion's first
    token is predicted by the prompt's last position. ``None`` (run the sequences whole) where the mask
    does not apply or a prompt is empty.
    """
    ids, branch, positions = batch["shared_ids"], batch["shared_branch"], batch["shared_positions"]  # (B, S)
    B, S = ids.shape
    prompt = branch == 0
    if not bool(prompt.any(1).all()):
        return None
    mask = pair_attention_mask(model, branch)
    if mask is None:
        return None
    col = torch.arange(S, device=ids.device)
    prompt_end = (col * prompt).argmax(1, keepdim=True)  # (B, 1): the prompt's last position
    counted = branch > 0  # (B, S): every completion token counts
    starts = counted & (branch != torch.cat([branch[:, :1], branch[:, :-1]], 1))
    source = torch.where(starts, prompt_end, col - 1)  # (B, S): the position whose logits predict each token
    keep = torch.zeros_like(counted)
    rows = torch.arange(B, device=ids.device)[:, None].expand(B, S)[counted]
    keep[rows, source[counted]] = True
    logits = selected_logits(model, ids, mask, keep, positions)  # (N, V), row-major over keep
    index = (keep.flatten().long().cumsum(0) - 1).view(B, S)[rows, source[counted]]
    token_logps = selective_log_softmax(logits[index].unsqueeze(0), ids[counted].unsqueeze(0)).squeeze(0)
    sequence = rows + B * (branch[counted] - 1)  # chosen rows 0..B-1, rejected rows B..2B-1
    return _sums_by_row(token_logps, sequence, 2 * B)
