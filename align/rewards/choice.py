r"""Multiple-choice reward: find the chosen label in a completion and compare it with `answerKey`.

    >>> choice_reward([""], ["Let me think... The answer is (B)."], answerKey=["B"])
    [1.0]

`extract_choice` looks for, in order (the last match of the first pattern that matches wins):
1. an anchored answer: "answer is B", "Answer: (B)", "answer: **B**", "option B", "choice B";
2. a boxed label: `\boxed{B}`, `\boxed{\text{B}}`;
3. a bold or bracketed label: `**B**`, `(B)`, `[B]`;
4. a label opening the completion and followed by ".", ")", ":" or nothing: "B", "B.", "B) because".
Letters are matched in upper case only, so the article "a" is never read as label A. Labels may be any
strings (ARC uses "1".."4" for some questions); they are matched as whole tokens.

Scores: 1.0 right, 0.0 wrong or no label found. A row whose `answerKey` is empty is None (counted as
`gold_missing`). When a `choices` column is present (ARC/HF style `{"text": [...], "label": [...]}`), its
labels are the valid ones for that row; otherwise the factory's `labels` (A-D by default), extended by
the gold label if it is not among them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from align.rewards.base import RewardFunction, column, message_text

__all__ = ["ChoiceReward", "choice_reward", "extract_choice", "make_choice_reward"]

DEFAULT_LABELS = ("A", "B", "C", "D")


def _label_alternation(labels: Sequence[str]) -> str:
    # Longest first so that "10" wins over "1".
    return "|".join(re.escape(lab) for lab in sorted(set(labels), key=len, reverse=True))


def extract_choice(text: Any, labels: Sequence[str] = DEFAULT_LABELS) -> str | None:
    """The label chosen in `text` (a string or chat messages), or None. See the module docstring."""
    text = message_text(text)
    labels = [str(label).strip() for label in labels if str(label).strip()]
    if not labels or not text.strip():
        return None
    alt = _label_alternation(labels)
    lab = rf"(?<![A-Za-z0-9])({alt})(?![A-Za-z0-9])"
    patterns = [
        # 1. anchored: "answer is B", "answer: (B)", "Answer: **B**", "correct option is C", "choice D"
        rf"(?i:answer|option|choice)\s*(?i:is|:|=)?\s*:?\s*(?i:option\s+|choice\s+)?[\(\[\*\s]*{lab}",
        # 2. boxed
        rf"\\boxed\{{\s*(?:\\text(?:bf)?\{{\s*)?[\(]?{lab}[\)]?\s*\}}?\s*\}}",
        # 3. bold or bracketed
        rf"\*\*\s*\(?{lab}\)?[\.:]?\s*\*\*|\({lab}\)|\[{lab}\]",
        # 4. opening the completion
        rf"^\s*{lab}(?:[\.\):]|\s*$)",
    ]
    for pattern in patterns:
        # Anchor words may be in any case ("(?i:...)"); the label itself must match exactly.
        matches = list(re.finditer(pattern, text))
        if matches:  # a pattern with alternatives has one label group per alternative
            return next(g for g in matches[-1].groups() if g is not None)
    return None


def _row_labels(choices: Any, default: Sequence[str]) -> list[str]:
    """Valid labels of one row from its `choices` value (dict with "label", or list of labels)."""
    if isinstance(choices, dict) and choices.get("label"):
        return [str(label) for label in choices["label"]]
    if (
        isinstance(choices, Sequence)
        and not isinstance(choices, str)
        and choices
        and all(isinstance(c, dict) and "label" in c for c in choices)
    ):
        return [str(c["label"]) for c in choices]
    return list(default)


class ChoiceReward(RewardFunction):
    """Multiple-choice correctness against the `answerKey` column. Make it with `make_choice_reward`."""

    def __init__(self, *, labels: Sequence[str] = DEFAULT_LABELS, name: str = "choice"):
        super().__init__(name)
        self.labels = tuple(labels)

    def score(self, completion: Any, answer_key: Any, choices: Any = None) -> float | None:
        """Score one completion against one gold label."""
        gold = "" if answer_key is None else str(answer_key).strip()
        if not gold:
            self._count("gold_missing")
            return None
        labels = _row_labels(choices, self.labels)
        if gold not in labels:
            labels.append(gold)
        predicted = extract_choice(completion, labels)
        if predicted is None:
            self._count("no_answer")
            return 0.0
        return 1.0 if predicted == gold else 0.0

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        n = len(completions)
        keys = column(columns, "answerKey", n)
        if keys is None:
            raise ValueError(
                f"reward {self.__name__!r} needs an 'answerKey' column; got columns {sorted(columns)}"
            )
        choices = column(columns, "choices", n) or [None] * n
        return [self.score(c, k, ch) for c, k, ch in zip(completions, keys, choices)]


def make_choice_reward(labels: Sequence[str] = DEFAULT_LABELS, *, name: str = "choice") -> ChoiceReward:
    """A multiple-choice reward; `labels` are the valid labels when the data has no `choices` column."""
    return ChoiceReward(labels=labels, name=name)


choice_reward = make_choice_reward()
"""The default multiple-choice reward (labels A-D unless the row's `choices` say otherwise), name "choice"."""
