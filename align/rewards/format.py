r"""Format rewards: shape of the completion, not its correctness.

- `boxed_format_reward`: 1.0 if the completion has exactly one complete `\boxed{...}` (or `\fbox{...}`).
- `make_tags_format_reward(tags=("think", "answer"))`: 1.0 if the completion is `<think>...</think>`
  followed by `<answer>...</answer>` (only whitespace around), each tag once, else 0.0.
- `make_length_reward(budget, unit=...)`: a soft overlong penalty in [-1, 0] (DAPO's "soft overlong
  punishment", Yu et al. 2025, with the penalty zone placed after the budget): 0 up to the
  budget, then linear down to -1 at `budget + margin`, -1 beyond. It is a penalty to add to a
  correctness reward, not a score in [0, 1] (the rubric's `length` rule is the [0, 1] variant).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from align.rewards.base import RewardFunction, message_text
from align.rewards.math import _BOX_RE, extract_boxed

__all__ = [
    "LengthReward",
    "boxed_format_reward",
    "make_length_reward",
    "make_tags_format_reward",
    "tags_format_reward",
]


def boxed_format_reward(prompts: list, completions: list, **columns) -> list[float]:
    r"""1.0 for exactly one complete, non-empty `\boxed{...}` / `\fbox{...}` in the completion, else 0.0."""
    scores = []
    for completion in completions:
        text = message_text(completion)
        one_box = len(_BOX_RE.findall(text)) == 1
        content = extract_boxed(text) if one_box else None
        scores.append(1.0 if content else 0.0)
    return scores


boxed_format_reward.__name__ = "boxed_format"


def make_tags_format_reward(
    tags: Sequence[str] = ("think", "answer"), *, pattern: str | None = None, name: str = "tags_format"
) -> Callable[..., list[float]]:
    """A reward of 1.0 when the completion is the `tags` blocks in order (`<t>...</t>`), each once.

    Only whitespace may surround the blocks, and a block may not contain its own tag again. `pattern`
    replaces the generated regular expression (matched with `re.fullmatch` and DOTALL).
    """
    if pattern is None:
        if not tags:
            raise ValueError("make_tags_format_reward: tags must not be empty")
        blocks = []
        for tag in tags:
            t = re.escape(tag)
            blocks.append(rf"<{t}>(?:(?!</?{t}>).)*</{t}>")
        pattern = r"\s*" + r"\s*".join(blocks) + r"\s*"
    regex = re.compile(pattern, re.DOTALL)

    def tags_format(prompts: list, completions: list, **columns) -> list[float]:
        return [1.0 if regex.fullmatch(message_text(c)) else 0.0 for c in completions]

    tags_format.__name__ = name
    tags_format.pattern = pattern
    return tags_format


tags_format_reward = make_tags_format_reward()
"""`<think>...</think><answer>...</answer>`, name "tags_format"."""


class LengthReward(RewardFunction):
    """Soft overlong penalty; make it with `make_length_reward`."""

    def __init__(self, budget: int, *, unit: str, margin: int, tokenizer: Any = None, name: str = "length"):
        super().__init__(name)
        self.budget = budget
        self.unit = unit
        self.margin = margin
        self.tokenizer = tokenizer

    def length(self, text: str) -> int:
        if self.unit == "chars":
            return len(text)
        if self.unit == "words":
            return len(text.split())
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def penalty(self, length: int) -> float:
        over = length - self.budget
        if over <= 0:
            return 0.0
        return -min(1.0, over / self.margin)

    def __call__(self, prompts: list, completions: list, **columns) -> list[float]:
        lengths = [self.length(message_text(c)) for c in completions]
        self._count("over_budget", sum(n > self.budget for n in lengths))
        return [self.penalty(n) for n in lengths]


def make_length_reward(
    budget: int,
    *,
    unit: str = "chars",
    margin: int | None = None,
    tokenizer: Any = None,
    name: str = "length",
) -> LengthReward:
    """A soft penalty for completions longer than `budget` (in `unit`: "chars", "words" or "tokens" of
    `tokenizer`): 0 up to it, then linear down to -1 over `margin` (default a quarter of the budget, at
    least 1). `pop_stats()` counts completions over budget as `reward/<name>/over_budget`.
    """
    if unit not in ("chars", "words", "tokens"):
        raise ValueError(f"make_length_reward: unit must be 'chars', 'words' or 'tokens', got {unit!r}")
    if unit == "tokens" and tokenizer is None:
        raise ValueError("make_length_reward: unit='tokens' needs a tokenizer")
    if budget <= 0:
        raise ValueError(f"make_length_reward: budget must be positive, got {budget}")
    margin = max(1, budget // 4) if margin is None else margin
    if margin <= 0:
        raise ValueError(f"make_length_reward: margin must be positive, got {margin}")
    return LengthReward(budget, unit=unit, margin=margin, tokenizer=tokenizer, name=name)
