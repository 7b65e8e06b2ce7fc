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

Timeouts. math-verify's own timeout uses `signal.alarm` (main thread only) and swallows the timeout into a
plain False, so we switch it off (`parsing_timeout=None`, `timeout_seconds=None`) and bound the whole check
of one sample (gold parse, answer parse, comparison) ourselves. By default (`isolation="process"`) the check
runs in a worker process (`align.rewards.isolation.IsolatedCaller`) that is killed when it overruns
`timeout_s`: a power tower such as `9^{9^{9^9}}` makes sympy compute a huge integer in one C call that
holds the GIL, which no signal or thread in this process can interrupt. `isolation="inline"` checks in the
caller's process (signal or watchdog thread: Python code only). An overrun scores 0.0 and is counted as
`timeouts`; `timeout_s=None` (or <= 0) turns timeouts off.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from align.rewards.base import RewardFunction, column, message_text
from align.rewards.isolation import IsolatedCaller, RewardTimeout, run_with_timeout

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


_EXTRACTION_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_UNPARSABLE = object()


class _Checker:
    """One sample's check (gold parse, answer extraction and parse, comparison), picklable so that it can run
    in the reward worker process; parsed golds are cached where it runs (GRPO scores G completions per gold).
    Returns the score and the count to add (None, "no_answer" or "gold_unparsable")."""

    def __init__(self, fallbacks: bool, float_rounding: int, numeric_precision: int, strict: bool):
        self.fallbacks = fallbacks
        self.float_rounding = float_rounding
        self.numeric_precision = numeric_precision
        self.strict = strict
        self._gold_cache: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_gold_cache": {}}

    @staticmethod
    def _parse(answer: str) -> list:
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

    def __call__(self, text: str, gold: str) -> tuple[float | None, str | None]:
        gold_parsed = self._parse_gold(gold)
        if gold_parsed is _UNPARSABLE:
            return None, "gold_unparsable"
        predicted = extract_answer(text, fallbacks=self.fallbacks)
        if predicted is None:
            return 0.0, "no_answer"
        pred_parsed = self._parse(predicted)
        if not pred_parsed:
            return 0.0, None
        ok = verify(
            gold_parsed,
            pred_parsed,
            float_rounding=self.float_rounding,
            numeric_precision=self.numeric_precision,
            strict=self.strict,
            timeout_seconds=None,
        )
        return (1.0 if ok else 0.0), None


_WORKERS: dict[tuple, IsolatedCaller] = {}


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
        isolation: Literal["process", "inline"] = "process",
    ):
        super().__init__(name)
        if isolation not in ("process", "inline"):
            raise ValueError(f"isolation must be 'process' or 'inline', got {isolation!r}")
        self.timeout_s = timeout_s
        self.isolation = isolation
        options = (fallbacks, float_rounding, numeric_precision, strict)
        self._checker = _Checker(*options)
        self._worker = None
        if isolation == "process":  # one worker process per set of options, shared by the rewards using it
            self._worker = _WORKERS.get(options) or _WORKERS.setdefault(
                options, IsolatedCaller(self._checker)
            )

    @property
    def fallbacks(self) -> bool:
        """Whether an unboxed answer is looked for ("answer is X", "#### X", the last number)."""
        return self._checker.fallbacks

    def _run(self, text: str, gold: str) -> tuple[float | None, str | None]:
        if self._worker is not None:
            return self._worker(text, gold, timeout_s=self.timeout_s)
        return run_with_timeout(lambda: self._checker(text, gold), self.timeout_s)

    def score(self, completion: Any, answer: Any = None, solution: Any = None) -> float | None:
        """Score one completion (string or messages) against one gold answer or solution."""
        gold = extract_gold(answer, solution)
        if gold is None:
            self._count("gold_missing" if answer is None and solution is None else "gold_unparsable")
            return None
        try:
            result, stat = self._run(message_text(completion), gold)
        except RewardTimeout:
            self._count("timeouts")
            return 0.0
        except Exception:
            logging.getLogger(__name__).debug("math check failed", exc_info=True)
            self._count("errors")
            return 0.0
        if stat is not None:
            self._count(stat)
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
