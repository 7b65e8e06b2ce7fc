r"""Metrics of an evaluation: accuracy with a 95% interval, unbiased pass@k, maj@k.

All are plain functions of counts or lists, so they are tested against closed forms.

- `pass_at_k(n, c, k)`: Chen et al. (2021), "Evaluating Large Language Models Trained on Code", eq. 1:
  the probability that at least one of k samples drawn without replacement from the n generated ones
  is correct, when c of the n are: 1 - C(n-c, k) / C(n, k). Computed in the numerically stable product
  form of the paper's Figure 3, 1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms a binomial
  coefficient (C(2000, 1000) ~ 2e600 overflows a float).
- `majority_vote(answers, scores)` / maj@k: the most frequent *normalised answer string* among the first k
  samples wins (ties go to the answer seen first); its correctness is the verifier's score of the first
  sample that gave it. Answers are grouped by normalised strings (`normalize_answer`), not by math-verify
  equivalence: grouping with the verifier would cost up to k^2 / 2 timed checks per problem, and equal
  answers written differently (`0.5` and `\frac{1}{2}`) then split their votes, which can only lower
  maj@k. Samples without an answer do not vote; a problem where none has one scores 0.
- `wilson_interval(p, n)`: the Wilson score interval (Wilson 1927) at 95% (z = 1.96). Unlike the normal
  approximation p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not degenerate at p = 0 or 1, which
  matters for small evaluation subsets. `n` is the number of *problems*: with several samples per problem
  the accuracy is a mean of per-problem means, whose variance is at most p(1-p), so the interval is
  conservative then.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = [
    "Z_95",
    "mean_pass_at_k",
    "majority_vote",
    "normalize_answer",
    "pass_at_k",
    "wilson_interval",
]

Z_95 = 1.959963984540054
"""The two-sided 95% standard normal quantile."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `c` correct out of `n` samples (requires 1 <= k <= n).

    1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i); 1.0 when fewer than k samples are wrong.
    """
    if not (0 <= c <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not (1 <= k <= n):
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """pass@k averaged over problems, each with `n` samples of which `correct_counts[i]` are correct."""
    if not correct_counts:
        raise ValueError("mean_pass_at_k: no problems")
    return sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)


_LATEX_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\$|\s+")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def normalize_answer(answer: str | None) -> str | None:
    r"""A canonical string for grouping votes: no spaces, `\left`/`\right`, `$`, `\text{}` wrappers,
    `\dfrac`/`\tfrac` -> `\frac`, no trailing period, a number's thousands separators and trailing zeros
    (`1,000.50` -> `1000.5`). None (no answer) stays None."""
    if answer is None:
        return None
    s = _TEXT.sub(r"\1", str(answer))
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _LATEX_NOISE.sub("", s).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d+", s):
        s = s.rstrip("0").rstrip(".")
    return s or None


def majority_vote(answers: Sequence[str | None], scores: Sequence[float]) -> tuple[str | None, float]:
    """The majority answer of one problem's samples and its score (see the module docstring).

    `answers[i]` is sample i's extracted answer (None = none found) and `scores[i]` its verifier score.
    Returns (None, 0.0) when no sample has an answer.
    """
    if len(answers) != len(scores):
        raise ValueError(f"majority_vote: {len(answers)} answers but {len(scores)} scores")
    votes: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, answer in enumerate(answers):
        key = normalize_answer(answer)
        if key is None:
            continue
        votes[key] = votes.get(key, 0) + 1
        first.setdefault(key, i)
    if not votes:
        return None, 0.0
    # max() keeps the first maximum in insertion order, i.e. the answer seen first among the ties.
    winner = max(votes, key=lambda key: votes[key])
    i = first[winner]
    return answers[i], float(scores[i])


def wilson_interval(p: float, n: int | float, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a proportion `p` observed over `n` trials; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"wilson_interval: p must be in [0, 1], got {p}")
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo = 0.0 if p == 0.0 else max(0.0, centre - half)  # exact ends: rounding leaves 1 - 1e-16 otherwise
    hi = 1.0 if p == 1.0 else min(1.0, centre + half)
    return lo, hi
