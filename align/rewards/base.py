"""Small shared pieces of the reward contract: message-to-text helpers and the stats protocol.

See `align/rewards/__init__.py` for the contract itself.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from align.data import content_text


def message_text(item: Any) -> str:
    """The text of a prompt or completion, which TRL passes either as a string or as chat messages.

    - a string is returned as is;
    - a list of messages (`[{"role": ..., "content": ...}, ...]`) gives the content of its last message
      (for a completion that is the assistant's reply; for a prompt, the last user turn);
    - a message whose content is a list of parts (`[{"type": "text", "text": ...}]`) gives its text parts
      joined;
    - a single message dict gives its content;
    - None gives "".
    """
    if item is None:
        return ""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return content_text(item.get("content"))
    if isinstance(item, Sequence):
        if not item:
            return ""
        return message_text(item[-1])
    return str(item)


def column(columns: dict[str, Any], name: str, n: int) -> list | None:
    """Column `name` from the keyword arguments of a reward call, checked to have `n` rows; None if absent."""
    values = columns.get(name)
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values but there are {n} completions")
    return values


class RewardFunction:
    """Base for factory-made rewards: a callable with a `__name__` and the `pop_stats()` protocol.

    Subclasses implement `__call__(prompts, completions, **columns)` and record failures with
    `self._count("timeouts")`, which `pop_stats()` returns as `{"reward/<name>/timeouts": n}` and resets.
    Counting is guarded by a lock so that a reward called from several threads keeps exact counts.
    """

    def __init__(self, name: str):
        self.__name__ = name
        self._stats: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, key: str, n: float = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def pop_stats(self) -> dict[str, float]:
        """Counts since the previous call, keyed `reward/<name>/<stat>`, then reset (see the package docs)."""
        with self._lock:
            stats = {f"reward/{self.__name__}/{k}": float(v) for k, v in sorted(self._stats.items())}
            self._stats.clear()
        return stats

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r})"
