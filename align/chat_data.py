r"""Supervised and preference data: loading, formatting with the chat template, tokenising, collating.

Three pipelines read what this module makes: SFT (``align.trainers.sft``), the Bradley-Terry reward model
(``align.trainers.reward_model``) and DPO (``align.trainers.dpo``).

Loading (``load_rows``) goes through the project's one reader, ``align.data.read_rows``; ``None`` is the
project's own data, ``data/sft`` or ``data/prefs`` (made by ``data/make_prefs.py``).

SFT schemas, detected from the columns (``sft_format``):

- ``messages``: a conversation, ``[{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]``
  (also ShareGPT's ``conversations`` with ``from``/``value``, mapped to roles);
- ``prompt`` + ``completion``: strings (plain text) or messages (conversational), TRL's prompt-completion
  schema; also Alpaca's ``instruction`` (+ ``input``) + ``output``, read as a conversational pair;
- ``text``: plain language modelling, every token counts.

Preference schemas (``normalize_preference``):

- explicit prompt: ``prompt``, ``chosen``, ``rejected``; each a string or messages;
- implicit prompt: ``chosen`` and ``rejected`` whole conversations that share a prefix (the prompt), as in
  ``trl-lib/ultrafeedback_binarized``, or strings with a shared beginning (Anthropic HH style);
- optional ``margin`` (or ``score_chosen`` / ``score_rejected``) for a reward-model margin.

Which tokens a loss counts (the mask, 1 = counts) is computed on characters of the chat-templated text,
then mapped to tokens by the offsets of one tokenisation of the whole: an assistant turn counts from the
end of the conversation rendered up to it with the generation prompt, to the end of its end token (eos,
e.g. ``<|im_end|>``; the template's ``\n`` after it does not count). That works for any template that
renders a prefix of the conversation as a prefix of the whole (ChatML, Llama 3, Mistral, ...) without
``{% generation %}`` markers; otherwise each assistant message's content is located in the text.

Bad input never becomes a silent wrong loss: missing columns are an error naming those found; an unusable
row (empty completion, chosen equal to rejected, no assistant turn, too long under ``truncation="skip"``)
is skipped and counted (``DataStats``, ``data/skipped/<reason>`` in ``metrics.jsonl``); no usable row at
all is an error.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from align.data import content_text, describe_json_type, read_rows, shipped_data
from align.forward import pad_rows

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

__all__ = [
    "TRUNCATION_POLICIES",
    "DataStats",
    "collate_preferences",
    "collate_sft",
    "encode_prompt_completion",
    "extract_prompt",
    "load_rows",
    "load_train_and_eval",
    "normalize_messages",
    "normalize_preference",
    "pack_examples",
    "sft_format",
    "tokenize_preferences",
    "tokenize_sft",
]

TRUNCATION_POLICIES = ("keep_start", "keep_end", "skip", "error")
"""What to do with a sequence longer than ``max_length``: keep its first or last ``max_length`` tokens
(counted in ``data/truncated``), leave the row out (``data/skipped/too_long``), or raise naming the row."""

# ---------------------------------------------------------------------------------------------------------
# Counting what was skipped
# ---------------------------------------------------------------------------------------------------------


class SkipRow(ValueError):
    """A row that cannot be used; ``reason`` is the counter it goes to (``data/skipped/<reason>``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class DataStats:
    """What tokenising a dataset kept, truncated and skipped (by reason, with the first row index of each)."""

    name: str = "data"
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    skipped: Counter = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)
    """reason -> 'row N: detail' of its first occurrence, for the warning."""

    def skip(self, reason: str, index: int, detail: str = "") -> None:
        self.skipped[reason] += 1
        self.first.setdefault(reason, f"row {index}" + (f": {detail}" if detail else ""))

    def metrics(self, prefix: str = "data") -> dict[str, float]:
        """``{prefix}/rows``, ``{prefix}/kept``, ``{prefix}/truncated``, ``{prefix}/skipped/<reason>``."""
        out = {f"{prefix}/rows": float(self.rows), f"{prefix}/kept": float(self.kept)}
        out[f"{prefix}/truncated"] = float(self.truncated)
        out.update({f"{prefix}/skipped/{r}": float(n) for r, n in sorted(self.skipped.items())})
        return out

    def summary(self) -> str:
        parts = [f"{self.name}: {self.rows} rows, {self.kept} kept"]
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        for reason, n in sorted(self.skipped.items()):
            parts.append(f"skipped {n} {reason} (first: {self.first.get(reason, '?')})")
        return "; ".join(parts)

    def log(self) -> None:
        (logger.warning if self.skipped or self.truncated else logger.info)("%s", self.summary())

    def check_any_kept(self) -> None:
        if self.kept == 0:
            raise ValueError(f"no usable row left after validation. {self.summary()}")


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def load_rows(
    name_or_path: str | Path | None, split: str = "train", *, default: str = "sft", limit: int = 0
) -> Dataset:
    """``align.data.read_rows`` of ``name_or_path`` (first ``limit`` rows, 0 = all), or of the shipped
    ``data/<default>`` folder (``"sft"`` or ``"prefs"``) when it is ``None`` or ``""``."""
    return read_rows(name_or_path or shipped_data(default), split, limit=limit or None)


def _as_rows(dataset: Any) -> list[dict]:
    return dataset if isinstance(dataset, list) else [dict(r) for r in dataset]


def _columns(dataset: Any, rows: list[dict]) -> list[str]:
    names = getattr(dataset, "column_names", None)
    return list(names) if names is not None else list(rows[0].keys()) if rows else []


# ---------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_SHAREGPT_ROLES.update({"system": "system", "tool": "tool", "function": "tool"})


def is_messages(x: Any) -> bool:
    """A list of message dicts (conversational) rather than a string."""
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(m, dict) for m in x)


def _common_prefix(a: Sequence, b: Sequence) -> int:
    """The length of the longest common prefix of two strings or lists."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def normalize_messages(messages: Any) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` with string contents, from OpenAI-style or ShareGPT (``from``/``value``).

    Extra keys of a message (``tool_calls``, ``name``) are kept. Raises ``SkipRow("invalid_messages")`` for
    anything that is not a list of messages with string roles.
    """
    if not is_messages(messages):
        raise SkipRow("invalid_messages", f"expected a list of messages, got {type(messages).__name__}")
    out = []
    for m in messages:
        role = m.get("role", m.get("from"))
        if not isinstance(role, str):
            raise SkipRow("invalid_messages", f"a message without a role: {m!r}"[:200])
        role = _SHAREGPT_ROLES.get(role, role) if "from" in m and "role" not in m else role
        content = content_text(m.get("content", m.get("value")))
        extra = {
            k: v for k, v in m.items() if k not in ("role", "content", "from", "value") and v is not None
        }
        out.append({"role": role, "content": content, **extra})
    return out


def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "the tokenizer has no chat template, so conversational data cannot be formatted; use a chat model's "
            "tokenizer, or plain-text data (prompt/completion strings or text)"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _end_of_turn(text: str, start: int, stop: int, end_token: str | None) -> int:
    """Cut ``text[start:stop]`` just after its last end token (eos): what a template writes after it is
    formatting (ChatML's newline), not something the model must produce."""
    if end_token:
        i = text.rfind(end_token, start, stop)
        if i >= 0:
            return i + len(end_token)
    return stop


def _assistant_spans(tokenizer: Any, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Character spans of every assistant turn's content + end token in ``text`` (the rendered chat)."""
    eos = getattr(tokenizer, "eos_token", None)
    spans: list[tuple[int, int]] = []
    search_from = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else None
        upto = _render(tokenizer, messages[: i + 1])
        if (
            before is not None
            and text.startswith(before)
            and text.startswith(upto)
            and len(upto) > len(before)
        ):
            start, stop = len(before), len(upto)
        else:  # the template does not render prefixes as prefixes: find the content itself
            content = m["content"]
            start = text.find(content, search_from) if content else -1
            if start < 0:
                raise ValueError(
                    "cannot locate an assistant turn in the rendered chat (the template rewrites messages); "
                    "set assistant_only_loss=false to train on every token"
                )
            stop = start + len(content)
            if eos and text.startswith(eos, stop):
                stop += len(eos)
        stop = _end_of_turn(text, start, stop, eos)
        spans.append((start, stop))
        search_from = stop
    return spans


def _mask_from_spans(offsets: Sequence[Sequence[int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token that overlaps a span: a token that straddles a span's start (template text merged
    with the content's first characters) counts, since the model must produce it."""
    return [int(any(s < b and e > a for a, b in spans)) for s, e in offsets]


def _tokenize(tokenizer: Any, text: str, add_special_tokens: bool) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", True):
        raise ValueError(
            "align.chat_data needs a fast tokenizer (offset mappings); load it with use_fast=True"
        )
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _with_eos(text: str, tokenizer: Any) -> str:
    eos = getattr(tokenizer, "eos_token", None)
    return text if not eos or text.endswith(eos) else text + eos


def _render_pair(tokenizer: Any, prompt: Any, completion: Any) -> tuple[str, int, int, bool]:
    """(text, prompt_end_char, completion_end_char, add_special_tokens) for a prompt and a completion.

    Conversational when either side is messages (a string prompt becomes a user message, a string
    completion an assistant message); plain text otherwise: prompt + completion + eos, as TRL does.
    """
    if is_messages(prompt) or is_messages(completion):
        p = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else normalize_messages(prompt)
        c = (
            [{"role": "assistant", "content": completion}]
            if isinstance(completion, str)
            else normalize_messages(completion)
        )
        before = _render(tokenizer, p, add_generation_prompt=True)
        text = _render(tokenizer, p + c)
        if not text.startswith(before):
            # Keep the longest common prefix as the prompt (as TRL does), with a one-time warning.
            _warn_once(
                "prefix",
                "the chat template renders the prompt alone differently from the prompt followed by the "
                "completion; the completion starts where they diverge",
            )
            before = before[: _common_prefix(before, text)]
        end = _end_of_turn(text, len(before), len(text), getattr(tokenizer, "eos_token", None))
        return text, len(before), end, False
    text = str(prompt) + _with_eos(str(completion), tokenizer)
    return text, len(str(prompt)), len(text), True


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning("%s", message)


def encode_prompt_completion(tokenizer: Any, prompt: Any, completion: Any) -> tuple[list[int], list[int]]:
    """Token ids ``(prompt_ids, completion_ids)`` whose concatenation is one tokenisation of the pair: the
    prompt with the generation prompt, the completion with its end token (a token straddling the boundary
    goes to the completion). Preference pairs and the reward-model reward share it, so a reward model scores
    exactly the token sequences it was trained on."""
    text, p_end, c_end, special = _render_pair(tokenizer, prompt, completion)
    ids, offsets = _tokenize(tokenizer, text[:c_end], special)
    n = 0
    while n < len(ids) and offsets[n][1] <= p_end:
        n += 1
    return ids[:n], ids[n:]


# ---------------------------------------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------------------------------------


def sft_format(columns: Iterable[str]) -> str:
    """``"messages"``, ``"prompt_completion"`` or ``"text"`` from a dataset's columns (see the module doc)."""
    cols = set(columns)
    if "messages" in cols or "conversations" in cols:
        return "messages"
    if {"prompt", "completion"} <= cols or {"instruction", "output"} <= cols:
        return "prompt_completion"
    if "text" in cols:
        return "text"
    raise ValueError(
        f"cannot tell the SFT schema from the columns {sorted(cols)}; expected 'messages' (a conversation), "
        "'prompt' + 'completion', 'instruction' + 'output' (Alpaca) or 'text'"
    )


def _sft_text_and_spans(
    tokenizer: Any, row: dict, fmt: str, assistant_only: bool, completion_only: bool
) -> tuple[str, list[tuple[int, int]], bool]:
    if fmt == "messages":
        raw = row.get("messages", row.get("conversations"))
        if raw is None or (isinstance(raw, (list, tuple)) and len(raw) == 0):
            raise SkipRow("empty_conversation", "messages is missing or empty")
        messages = normalize_messages(raw)
        assistants = [m for m in messages if m["role"] == "assistant"]
        if not assistants:
            raise SkipRow("no_assistant_turn", "messages has no assistant turn")
        if any(not m["content"].strip() and not m.get("tool_calls") for m in assistants):
            raise SkipRow("empty_completion", "an assistant turn of messages has no content")
        text = _render(tokenizer, messages)
        spans = _assistant_spans(tokenizer, messages, text) if assistant_only else [(0, len(text))]
        return text, spans, False
    if fmt == "prompt_completion":
        if "instruction" in row and "completion" not in row:  # Alpaca
            instruction = str(row.get("instruction") or "")
            extra = str(row.get("input") or "")
            prompt: Any = [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction}]
            completion: Any = row.get("output")
            fields = ("instruction", "output")
        else:
            prompt, completion = row.get("prompt"), row.get("completion")
            fields = ("prompt", "completion")
        if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
            raise SkipRow("empty_prompt", f"{fields[0]} is missing or empty")
        if completion is None or not _completion_text(completion).strip():
            raise SkipRow(
                "empty_completion",
                f"{fields[1]} is missing or empty (expected a string or assistant messages)",
            )
        text, p_end, c_end, special = _render_pair(tokenizer, prompt, completion)
        return text[:c_end], [(p_end, c_end)] if completion_only else [(0, c_end)], special
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise SkipRow("empty_text", "text is missing or empty (expected a string)")
    text = _with_eos(text, tokenizer)
    return text, [(0, len(text))], True


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if is_messages(completion):
        return "".join(content_text(m.get("content", m.get("value"))) for m in completion)
    return ""


def _skip_or_raise(policy: str, length: str, max_length: int, index: int) -> None:
    """A row over ``max_length`` under truncation ``skip`` (a counted ``too_long`` skip) or ``error``."""
    if policy == "skip":
        raise SkipRow("too_long", f"{length} longer than max_length {max_length}")
    if policy == "error":
        raise ValueError(
            f"row {index}: {length} longer than max_length={max_length} (truncation='error'); raise max_length "
            "or choose truncation keep_start, keep_end or skip"
        )


def _truncate(
    ids: list[int], mask: list[int], max_length: int | None, policy: str, index: int
) -> tuple[list[int], list[int], bool]:
    if not max_length or len(ids) <= max_length:
        return ids, mask, False
    _skip_or_raise(policy, f"{len(ids)} tokens is", max_length, index)
    if policy == "keep_start":
        return ids[:max_length], mask[:max_length], True
    return ids[-max_length:], mask[-max_length:], True


def tokenize_sft(
    dataset: Any,
    tokenizer: Any,
    *,
    max_length: int | None = 1024,
    truncation: str = "keep_start",
    assistant_only_loss: bool = True,
    completion_only_loss: bool = True,
    name: str = "sft data",
) -> tuple[list[dict[str, list[int]]], DataStats]:
    """Tokenise an SFT dataset (a schema of the module docstring) into rows ``{"input_ids", "mask"}`` (mask
    1 = trained on), in dataset order, and the ``DataStats``. ``assistant_only_loss`` counts a conversation's
    assistant turns only, ``completion_only_loss`` a prompt/completion row's completion only.
    """
    _check_truncation(truncation)
    rows = _as_rows(dataset)
    try:
        fmt = sft_format(_columns(dataset, rows))
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e

    def encode(i: int, row: dict) -> tuple[dict[str, list[int]], bool]:
        text, spans, special = _sft_text_and_spans(
            tokenizer, row, fmt, assistant_only_loss, completion_only_loss
        )
        ids, offsets = _tokenize(tokenizer, text, special)
        mask = _mask_from_spans(offsets, spans)
        ids, mask, cut = _truncate(ids, mask, max_length, truncation, i)
        if sum(mask[1:]) == 0:  # position 0 is never a label
            raise SkipRow("no_counted_tokens", "nothing left to train on (after truncation)")
        return {"input_ids": ids, "mask": mask}, cut

    return _encode_rows(rows, encode, name)


def _encode_rows(
    rows: list[dict], encode: Callable[[int, dict], tuple[dict, bool]], name: str
) -> tuple[list[dict], DataStats]:
    """``encode(i, row) -> (item, truncated)`` over the rows: a ``SkipRow`` is counted, another
    ``ValueError`` is raised naming the data and the row; no row kept at all is an error."""
    stats = DataStats(name=name, rows=len(rows))
    out: list[dict] = []
    for i, row in enumerate(rows):
        try:
            item, cut = encode(i, row)
        except SkipRow as s:
            stats.skip(s.reason, i, s.detail)
            continue
        except ValueError as e:
            raise ValueError(f"{name}: {e}" if str(e).startswith("row ") else f"{name}: row {i}: {e}") from e
        stats.truncated += int(cut)
        stats.kept += 1
        out.append(item)
    stats.log()
    stats.check_any_kept()
    return out, stats


def pack_examples(rows: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Pack tokenised SFT rows, whole, into rows of at most ``max_length`` tokens, best-fit decreasing.

    ``position_ids`` restart at 0 for every example: with no attention mask, transformers then builds a
    block-diagonal causal mask from them, so examples do not attend to each other. Each example's first
    token is not a label (mask 0).
    """
    import bisect

    if max_length <= 0:
        raise ValueError(f"max_length must be positive for packing, got {max_length}")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    bins: list[list[int]] = []  # example indices per bin
    free: list[tuple[int, int]] = []  # sorted (space left, bin id)
    for i in order:
        n = len(rows[i]["input_ids"])
        if n > max_length:
            raise ValueError(f"example of {n} tokens does not fit in a packed row of {max_length}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, b = free.pop(k)
        else:
            b, space = len(bins), max_length
            bins.append([])
        bins[b].append(i)
        if space - n > 0:
            bisect.insort(free, (space - n, b))
    packed = []
    for members in bins:
        ids: list[int] = []
        mask: list[int] = []
        pos: list[int] = []
        for i in members:
            r = rows[i]
            ids += r["input_ids"]
            mask += [0] + list(r["mask"][1:])
            pos += list(range(len(r["input_ids"])))
        packed.append({"input_ids": ids, "mask": mask, "position_ids": pos})
    return packed


def collate_sft(rows: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor | None]:
    """Right-pad rows to the batch's longest: ``input_ids``, ``attention_mask``, ``position_ids``, ``mask``
    (all ``(B, T)``), and ``num_tokens`` (real tokens). Packed rows get ``attention_mask=None`` and
    position ids that continue through the padding (:func:`pack_examples`)."""
    input_ids, attention = pad_rows([r["input_ids"] for r in rows], pad_token_id)
    mask = pad_rows([r["mask"] for r in rows], 0)[0]
    B, T = input_ids.shape
    packed = "position_ids" in rows[0]
    position_ids = torch.arange(T).repeat(B, 1)
    if packed:
        for b, r in enumerate(rows):
            n, start = len(r["input_ids"]), (r["position_ids"][-1] + 1 if r["input_ids"] else 0)
            position_ids[b] = torch.tensor(list(r["position_ids"]) + list(range(start, start + T - n)))
    return {
        "input_ids": input_ids,
        "attention_mask": None if packed else attention,
        "position_ids": position_ids,
        "mask": mask,
        # Packed rows have no attention mask to count real tokens from; throughput needs the true count.
        "num_tokens": torch.tensor(sum(len(r["input_ids"]) for r in rows)),
    }


# ---------------------------------------------------------------------------------------------------------
# Preferences
# ---------------------------------------------------------------------------------------------------------


def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Split two whole conversations (or strings) that share a beginning into (prompt, chosen, rejected):
    the common leading messages, up to an assistant message; or the common prefix, cut at whitespace."""
    if is_messages(chosen) and is_messages(rejected):
        c, r = normalize_messages(chosen), normalize_messages(rejected)
        n = _common_prefix(c, r)
        while n > 0 and (c[n : n + 1] or [{}])[0].get("role") != "assistant":
            n -= 1
        if n == 0:
            raise SkipRow("no_shared_prompt", "chosen and rejected share no prompt messages")
        return c[:n], c[n:], r[n:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = _common_prefix(chosen, rejected)
        if n < min(len(chosen), len(rejected)):
            cut = max(chosen.rfind(" ", 0, n + 1), chosen.rfind("\n", 0, n + 1))
            n = cut + 1 if cut >= 0 else 0
        if n == 0:
            raise SkipRow("no_shared_prompt", "chosen and rejected share no prefix")
        return chosen[:n], chosen[n:], rejected[n:]
    raise SkipRow("invalid_pair", "chosen and rejected must both be strings or both be messages")


PREFERENCE_SCHEMAS = (
    "'prompt' + 'chosen' + 'rejected' (strings or messages), or 'chosen' + 'rejected' conversations that "
    "share their prompt (trl-lib/ultrafeedback_binarized style)"
)


def check_preference_columns(columns: Iterable[str], where: str = "preference data") -> None:
    """Raise ``ValueError`` naming the columns found unless ``chosen`` and ``rejected`` are present."""
    cols = set(columns)
    missing = [c for c in ("chosen", "rejected") if c not in cols]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {missing}; found {sorted(cols)}; expected {PREFERENCE_SCHEMAS}"
        )


def normalize_preference(row: dict, *, use_margin: bool = False) -> dict[str, Any]:
    """``{"prompt", "chosen", "rejected"[, "margin"]}`` from any accepted schema, or ``SkipRow``.

    Whole conversations in ``chosen``/``rejected`` have their prompt extracted even beside a ``prompt``
    column (HuggingFaceH4's ultrafeedback keeps a string copy there).
    """
    chosen, rejected = row.get("chosen"), row.get("rejected")
    for side, value in (("chosen", chosen), ("rejected", rejected)):
        if (
            value is None
            or (isinstance(value, str) and not value.strip())
            or (isinstance(value, (list, tuple)) and len(value) == 0)
        ):
            raise SkipRow("empty_completion", f"{side} is missing or empty")
    prompt = row.get("prompt")
    whole = (
        is_messages(chosen)
        and is_messages(rejected)
        and any(m.get("role", m.get("from")) not in ("assistant", "gpt") for m in chosen)
    )
    if prompt is None or whole:
        prompt, chosen, rejected = extract_prompt(chosen, rejected)
    elif isinstance(prompt, str) and not prompt.strip():
        raise SkipRow("empty_prompt")
    if is_messages(chosen):
        chosen = normalize_messages(chosen)
    if is_messages(rejected):
        rejected = normalize_messages(rejected)
    c_text, r_text = _completion_text(chosen), _completion_text(rejected)
    for side, value, text in (("chosen", chosen, c_text), ("rejected", rejected, r_text)):
        if not text.strip():
            raise SkipRow(
                "empty_completion",
                f"{side} has no text (expected a non-empty string or assistant messages, got "
                f"{describe_json_type(value)})",
            )
    if c_text.strip() == r_text.strip():
        raise SkipRow("identical_pair", "chosen equals rejected")
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if use_margin:
        if row.get("margin") is not None:
            out["margin"] = float(row["margin"])
        elif row.get("score_chosen") is not None and row.get("score_rejected") is not None:
            out["margin"] = float(row["score_chosen"]) - float(row["score_rejected"])
        else:
            raise SkipRow("no_margin", "use_margin is on but the row has no margin or scores")
        if not math.isfinite(out["margin"]):
            raise SkipRow("no_margin", "the margin is not finite")
    return out


def _encode_both(tokenizer: Any, prompt: Any, chosen: Any, rejected: Any) -> tuple[list, list, list]:
    """Shared prompt ids and the two completions' ids (the common prefix of both tokenisations)."""
    pc, cc = encode_prompt_completion(tokenizer, prompt, chosen)
    pr, cr = encode_prompt_completion(tokenizer, prompt, rejected)
    if pc == pr:
        return pc, cc, cr
    full_c, full_r = pc + cc, pr + cr
    n = min(_common_prefix(full_c, full_r), len(pc), len(pr))
    return full_c[:n], full_c[n:], full_r[n:]


def tokenize_preferences(
    dataset: Any,
    tokenizer: Any,
    *,
    max_length: int | None = 1024,
    truncation: str = "skip",
    use_margin: bool = False,
    name: str = "preference data",
) -> tuple[list[dict[str, Any]], DataStats]:
    """Tokenise preference pairs (:data:`PREFERENCE_SCHEMAS`) into rows ``{"prompt_ids", "chosen_ids",
    "rejected_ids"[, "margin"]}``. ``max_length`` bounds prompt + each completion; ``truncation`` defaults
    to ``skip``, since cutting a pair can cut exactly what makes one answer better.
    """
    _check_truncation(truncation)
    rows = _as_rows(dataset)
    check_preference_columns(_columns(dataset, rows), name)

    def encode(i: int, row: dict) -> tuple[dict[str, Any], bool]:
        pair = normalize_preference(row, use_margin=use_margin)
        p, c, r = _encode_both(tokenizer, pair["prompt"], pair["chosen"], pair["rejected"])
        if not c or not r:
            raise SkipRow("empty_completion", "a completion has no tokens")
        p, c, r, cut = _truncate_pair(p, c, r, max_length, truncation, i)
        if c == r:
            raise SkipRow("identical_after_truncation" if cut else "identical_pair")
        item: dict[str, Any] = {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
        if use_margin:
            item["margin"] = pair["margin"]
        return item, cut

    return _encode_rows(rows, encode, name)


def _truncate_pair(
    p: list[int], c: list[int], r: list[int], max_length: int | None, policy: str, index: int
) -> tuple[list[int], list[int], list[int], bool]:
    longest = len(p) + max(len(c), len(r))
    if not max_length or longest <= max_length:
        return p, c, r, False
    _skip_or_raise(policy, f"prompt + completion is {longest} tokens,", max_length, index)
    if policy == "keep_start":
        if len(p) >= max_length:
            raise SkipRow(
                "prompt_too_long", f"the prompt alone has {len(p)} tokens >= max_length {max_length}"
            )
        room = max_length - len(p)
        return p, c[:room], r[:room], True
    need = max(len(c), len(r))
    if need >= max_length:
        raise SkipRow(
            "completion_too_long", f"a completion alone has {need} tokens >= max_length {max_length}"
        )
    return p[len(p) - (max_length - need) :], c, r, True


def collate_preferences(rows: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2B right-padded rows, the B prompt+chosen sequences then the B prompt+rejected ones:
    ``input_ids``, ``attention_mask``, ``mask`` (1 = completion token), and when the rows have them
    ``margin``, ``ref_chosen_logps``, ``ref_rejected_logps`` ``(B,)``.

    Also the B pairs one row each, for a forward that runs each prompt once: ``shared_ids`` ``(B, S)``
    ``[left-padded prompt | chosen | rejected | padding]``, ``shared_branch`` ``(B, S)`` (0 = prompt,
    1 = chosen, 2 = rejected, -1 = padding) and ``shared_positions`` ``(B, S)``, each completion's
    continuing from its prompt's end.
    """
    seqs = [r["prompt_ids"] + r["chosen_ids"] for r in rows] + [
        r["prompt_ids"] + r["rejected_ids"] for r in rows
    ]
    input_ids, attention = pad_rows(seqs, pad_token_id)
    mask = attention.clone()
    for b, p in enumerate([len(r["prompt_ids"]) for r in rows] * 2):
        mask[b, :p] = 0  # 1 = completion token
    out = {"input_ids": input_ids, "attention_mask": attention, "mask": mask}
    P = max(len(r["prompt_ids"]) for r in rows)
    L = max(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    shared = torch.full((len(rows), P + L), pad_token_id, dtype=torch.long)
    branch = torch.full((len(rows), P + L), -1, dtype=torch.long)
    positions = torch.zeros((len(rows), P + L), dtype=torch.long)
    for b, r in enumerate(rows):
        p, c, j = r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]
        shared[b, P - len(p) : P + len(c) + len(j)] = torch.tensor(p + c + j, dtype=torch.long)
        branch[b, P - len(p) : P] = 0
        branch[b, P : P + len(c)] = 1
        branch[b, P + len(c) : P + len(c) + len(j)] = 2
        positions[b, P - len(p) : P] = torch.arange(len(p))
        positions[b, P : P + len(c)] = torch.arange(len(p), len(p) + len(c))
        positions[b, P + len(c) : P + len(c) + len(j)] = torch.arange(len(p), len(p) + len(j))
    out |= {"shared_ids": shared, "shared_branch": branch, "shared_positions": positions}
    for key in ("margin", "ref_chosen_logps", "ref_rejected_logps"):
        if key in rows[0]:
            out[key] = torch.tensor([float(r[key]) for r in rows], dtype=torch.float32)
    return out


def _check_truncation(policy: str) -> None:
    if policy not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation must be one of {list(TRUNCATION_POLICIES)}, got {policy!r}")


def load_train_and_eval(
    dataset_name: str | None,
    split: str,
    eval_dataset_name: str | None,
    eval_split: str,
    *,
    default: str,
) -> tuple[Any, Any]:
    """The training rows and the held-out rows (``eval_dataset_name``, default ``dataset_name``, at
    ``eval_split``), ``None`` when ``eval_split`` is ``""``/``"none"`` or the data is one file (its "test
    split" would be the training data itself)."""
    train = load_rows(dataset_name, split, default=default)
    if eval_split.strip().lower() in ("", "none"):
        return train, None
    source = eval_dataset_name or dataset_name
    if source and not eval_dataset_name and Path(source).expanduser().is_file():
        logger.warning(
            "%s is a single file: no held-out split, evaluation is off (set eval_dataset_name)", source
        )
        return train, None
    return train, load_rows(source, eval_split, default=default)
