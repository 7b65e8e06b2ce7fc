r"""Math reward: extract the final answer of a completion and check it against the gold answer with math-verify.

    >>> math_reward([""], [r"so the result is \boxed{\frac{63}{400}}"], answer=["63/400"])
    [1.0]

Extraction (`extract_answer`) takes the last `\boxed{...}` (or `\fbox{...}`) with balanced braces; without
one it falls back, in order, to "final answer is X", "answer: X" / "answer is X", "#### X", and the last
number in the text. The extracted string and the gold string are each wrapped in `\boxed{}` and parsed
by math-verify (LaTeX first, then plain expressions), then compared with `math_verify.verify`, so
`0.5` matches `\frac12` and `63/400` matches `\frac{63}{400}`.

Gold comes from the `answer` column (a GSM8K-style `... #### 42` or a boxed answer inside it is
extracted) or, when there is no answer, from the boxed answer of the `solution` column.

Scores: 1.0 correct, 0.0 wrong / no answer found / timed out, None when the gold is missing or cannot be
parsed (the sample is "not applicable", not wrong). `pop_stats()` counts `timeouts`, `gold_unparsable`,
`gold_missing`, `no_answer` and `errors` under `reward/<name>/...`.

Timeouts. math-verify's own timeout uses `signal.alarm`, which works only in the main thread (elsewhere
it raises ValueError), and it swallows the timeout into a plain False, so it could not be counted. So we
switch math-verify's timeouts off (`parsing_timeout=None`, `timeout_seconds=None`) and put our own around
the whole check of one sample (gold parse, answer parse, comparison):
- in the main thread: `signal.setitimer` + SIGALRM, which interrupts the computation itself;
- in any other thread (signals are not available there): the check runs in a daemon worker thread and
  the caller waits at most `timeout_s`. A check that overruns is scored 0.0 and counted as a timeout, but
  its thread cannot be killed: it finishes in the background (sharing the GIL). This keeps a threaded
  caller from crashing or hanging; pathological answers are rare enough that the waste is acceptable.
`timeout_s=None` (or <= 0) turns timeouts off altogether.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from align.rewards.base import RewardFunction, column, message_text

__all__ = ["MathReward", "extract_answer", "extract_boxed", "extract_gold", "make_math_reward", "math_reward"]


class _MathVerifyTimeoutWarningFilter(logging.Filter):
    """Drop math-verify's "Timeout is disabled" warning: we disable its timeout on purpose (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _logger_name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger_name).addFilter(_MathVerifyTimeoutWarningFilter())

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b\s*")
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?")
_FINAL_ANSWER_RE = re.compile(r"final answer\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_ANSWER_RE = re.compile(r"\banswer\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_HASHES_RE = re.compile(r"####\s*(.+)")
_INLINE_MATH_RE = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")


def _balanced_group(text: str, start: int) -> str | None:
    """The content of the brace group opening at text[start] == "{", or None if it never closes."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "\\":  # skip escaped characters such as \{ and \}
            continue
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def extract_boxed(text: str) -> str | None:
    r"""The content of the last complete `\boxed{...}` / `\fbox{...}` in `text` (braces balanced), else None.

    `\boxed 5` (a single token without braces) is accepted too. A last box cut off before its closing brace
    (a truncated generation) is skipped in favour of the previous complete one.
    """
    for match in reversed(list(_BOX_RE.finditer(text))):
        end = match.end()
        if end < len(text) and text[end] == "{":
            content = _balanced_group(text, end)
            if content is not None:
                return content.strip()
        elif match.group(0).endswith(" ") or match.group(0).endswith("\t"):
            token = re.match(r"[^\s$]+", text[end:])
            if token:
                return token.group(0)
    return None


def _clean(answer: str, *, prose: bool = True) -> str | None:
    """Trim markdown, math delimiters and sentence punctuation around an extracted answer.

    `prose` (for answers taken from running text, not from a box): keep only the last inline math
    (`$...$`, `\\(...\\)`) if there is one, else only the first sentence.
    """
    answer = answer.strip()
    inline = _INLINE_MATH_RE.findall(answer) if prose else []
    if inline:  # "answer is $x = 3$ because ..." -> "x = 3"
        answer = next(a or b for a, b in reversed(inline) if a or b)
    elif prose:
        answer = re.split(r"(?<=[^\d\s])\.\s|\.\s+[A-Z]", answer)[0]  # first sentence
    answer = answer.strip().strip("*").strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) > len(left) + len(right):
            answer = answer[len(left) : -len(right)].strip()
    answer = answer.rstrip(".").rstrip()
    return answer or None


def extract_answer(text: str, *, fallbacks: bool = True) -> str | None:
    r"""The final answer of a completion as a string, or None if there is none.

    Order: the last balanced `\boxed{}`/`\fbox{}`; then (if `fallbacks`) the last "final answer is X",
    the last "answer: X" / "answer is X", the last "#### X", and finally the last number in the text.
    """
    text = message_text(text)
    boxed = extract_boxed(text)
    if boxed is not None:
        return _clean(boxed, prose=False) if boxed.strip() else None
    if not fallbacks:
        return None
    for pattern in (_FINAL_ANSWER_RE, _ANSWER_RE, _HASHES_RE):
        matches = pattern.findall(text)
        if matches:
            answer = _clean(matches[-1])
            if answer:
                return answer
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].replace(" ", "") if numbers else None


def extract_gold(answer: Any = None, solution: Any = None) -> str | None:
    r"""The gold answer string of one row: the `answer` column, else the boxed answer of `solution`.

    An `answer` in GSM8K form (`"...reasoning... #### 42"`) gives "42"; one containing `\boxed{}` gives the
    boxed content. A `solution` gives its last boxed answer, or its `#### X`; never its "last number", which
    would silently invent a gold answer.
    """
    if answer is not None and str(answer).strip():
        answer = str(answer).strip()
        if "####" in answer:
            return _clean(answer.rsplit("####", 1)[1]) or None
        boxed = extract_boxed(answer)
        return _clean(boxed, prose=False) if boxed is not None else answer
    if solution is not None and str(solution).strip():
        solution = str(solution)
        boxed = extract_boxed(solution)
        if boxed is not None:
            return _clean(boxed, prose=False)
        hashes = _HASHES_RE.findall(solution)
        if hashes:
            return _clean(hashes[-1])
    return None


class _VerifierTimeout(BaseException):
    """Raised inside a timed check. A BaseException so that math-verify's `except Exception` cannot eat it."""


def _can_use_signals() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _with_signal_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    def on_alarm(signum, frame):
        raise _VerifierTimeout()

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        if old_delay > 0:  # someone else's timer was running: give it back what is left of it
            left = max(old_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def _with_thread_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    worker = threading.Thread(target=target, name="align-math-verify", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _VerifierTimeout()  # the worker finishes in the background; see the module docstring
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_with_timeout(fn: Callable[[], Any], timeout_s: float | None) -> Any:
    """Call `fn()`; raise `_VerifierTimeout` after `timeout_s` seconds (signals in the main thread, else a
    watchdog thread). `timeout_s` None or <= 0 calls `fn()` directly."""
    if timeout_s is None or timeout_s <= 0:
        return fn()
    if _can_use_signals():
        try:
            return _with_signal_timeout(fn, timeout_s)
        except ValueError as e:  # e.g. a non-main interpreter: fall through to the thread watchdog
            if "signal" not in str(e):
                raise
    return _with_thread_timeout(fn, timeout_s)


_EXTRACTION_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_UNPARSABLE = object()


class MathReward(RewardFunction):
    """Final-answer correctness against the `answer` (or `solution`) column. Make it with `make_math_reward`."""

    def __init__(
        self,
        *,
        timeout_s: float | None = 5.0,
        name: str = "math",
        fallbacks: bool = True,
        float_rounding: int = 6,
        numeric_precision: int = 15,
        strict: bool = True,
    ):
        super().__init__(name)
        self.timeout_s = timeout_s
        self.fallbacks = fallbacks
        self.float_rounding = float_rounding
        self.numeric_precision = numeric_precision
        self.strict = strict
        self._gold_cache: dict[str, Any] = {}  # GRPO scores G completions per gold: parse each gold once

    def _parse(self, answer: str) -> list:
        return parse(
            answer if "\\boxed" in answer else f"\\boxed{{{answer}}}",
            extraction_config=_EXTRACTION_CONFIG,
            fallback_mode="first_match",
            parsing_timeout=None,  # our own timeout wraps the whole check
        )

    def _parse_gold(self, gold: str) -> Any:
        cached = self._gold_cache.get(gold)
        if cached is not None:
            return cached
        parsed = self._parse(gold)
        # Parsable = at least one sympy object; a bare string fallback means math-verify understood nothing.
        result = parsed if any(not isinstance(p, str) for p in parsed) else _UNPARSABLE
        if len(self._gold_cache) > 10_000:
            self._gold_cache.clear()
        self._gold_cache[gold] = result
        return result

    def _check(self, text: str, gold: str) -> float | None:
        gold_parsed = self._parse_gold(gold)
        if gold_parsed is _UNPARSABLE:
            return None
        predicted = extract_answer(text, fallbacks=self.fallbacks)
        if predicted is None:
            self._count("no_answer")
            return 0.0
        pred_parsed = self._parse(predicted)
        if not pred_parsed:
            return 0.0
        ok = verify(
            gold_parsed,
            pred_parsed,
            float_rounding=self.float_rounding,
            numeric_precision=self.numeric_precision,
            strict=self.strict,
            timeout_seconds=None,
        )
        return 1.0 if ok else 0.0

    def score(self, completion: Any, answer: Any = None, solution: Any = None) -> float | None:
        """Score one completion (string or messages) against one gold answer or solution."""
        gold = extract_gold(answer, solution)
        if gold is None:
            self._count("gold_missing" if answer is None and solution is None else "gold_unparsable")
            return None
        text = message_text(completion)
        try:
            result = run_with_timeout(lambda: self._check(text, gold), self.timeout_s)
        except _VerifierTimeout:
            self._count("timeouts")
            return 0.0
        except Exception:
            logging.getLogger(__name__).debug("math check failed", exc_info=True)
            self._count("errors")
            return 0.0
        if result is None:
            self._count("gold_unparsable")
        return result

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        n = len(completions)
        answers = column(columns, "answer", n)
        solutions = column(columns, "solution", n)
        if answers is None and solutions is None:
            raise ValueError(
                f"reward {self.__name__!r} needs an 'answer' or 'solution' column; got columns "
                f"{sorted(columns)}"
            )
        answers = answers or [None] * n
        solutions = solutions or [None] * n
        return [self.score(c, a, s) for c, a, s in zip(completions, answers, solutions)]


def make_math_reward(timeout_s: float | None = 5.0, **options: Any) -> MathReward:
    """A math-answer reward (see the module docstring): `timeout_s` seconds per completion (None or <= 0:
    no timeout). `options` are `MathReward`'s: `name` (the metric name, "math"), `fallbacks` (False scores
    an unboxed answer 0, a format incentive, instead of trying "answer is X", "#### X" and the last number),
    and `float_rounding`, `numeric_precision`, `strict` for `math_verify.verify`.
    """
    return MathReward(timeout_s=timeout_s, **options)


math_reward = make_math_reward()
"""The default math reward (5 s timeout, fallbacks on), name "math"."""
