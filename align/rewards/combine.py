"""Combining reward functions, and resolving reward names from configs.

`CombinedReward(funcs, weights)` calls every function with the same arguments and returns the weighted
total and the per-function lists:

    combined = CombinedReward([make_math_reward(), boxed_format_reward], weights=[1.0, 0.2])
    total, per_func = combined(prompts, completions, answer=answers)
    trainer.log(combined.metrics())     # reward/math/mean, reward/math/std, reward/math/timeouts, ...

A sample's reward is missing, and its total NaN, when every function returned None ("not applicable"),
when a function gave NaN or inf under `nonfinite="skip"`, or when a function's call overran `timeout_s`.
Trainers drop a missing sample from its group's baseline and from the loss, count it (`reward/missing`)
and stop when a whole rollout is missing (`MissingRewardError`); a missing reward never becomes 0. NaN or
inf is an error naming the function under `nonfinite="error"` (the default): a reward that cannot say
"not applicable" with None has a bug. TRL instead reads NaN as "not applicable" and gives an all-None
sample 0.0, which biases the group's baseline without a trace.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, NamedTuple

from align.rewards.isolation import RewardTimeout, run_with_timeout

__all__ = [
    "KNOWN_REWARDS",
    "CombinedReward",
    "MissingRewardError",
    "NonFiniteRewardError",
    "RewardOutput",
    "get_reward_funcs",
    "reward_name",
]


class NonFiniteRewardError(ValueError):
    """A reward function returned NaN or inf under `nonfinite="error"`."""


class MissingRewardError(RuntimeError):
    """No sample of a whole rollout got a reward."""


def reward_name(func: Callable) -> str:
    """The metric name of a reward function: its `__name__` (a `functools.partial` gives its function's)."""
    name = getattr(func, "__name__", None)
    if name is None and hasattr(func, "func"):
        name = getattr(func.func, "__name__", None)
    return name or type(func).__name__


class RewardOutput(NamedTuple):
    total: list[float]
    """Weighted sum per sample over the functions that scored it; NaN where the reward is missing."""
    per_func: dict[str, list[float | None]]
    """Each function's raw scores, keyed by its name, in the order of `funcs`."""


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))  # population std


_TIMED_OUT = object()


def _is_async(func: Callable) -> bool:
    # an `async def` function, or an object whose __call__ is one
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


def _as_score(value: Any) -> float | None:
    return (
        None if value is None else float(value)
    )  # float() raises for non-numbers; the caller names the function


class CombinedReward:
    """Several reward functions used as one (see the module docstring): `funcs` need distinct `__name__`s
    (metric keys `reward/<name>/...`); `weights` are finite, one per function (default 1.0), as TRL's.
    `nonfinite`: "error" (NaN or inf from a function stops, naming it) or "skip" (the sample's reward is
    missing, counted in `reward/<name>/nonfinite`). `timeout_s`: a bound on each function's call for a
    batch, in this process (Python code only; `math` bounds each check in a worker process of its own);
    an overrun makes the batch's rewards missing and is counted in `reward/<name>/timeouts`. `async def`
    functions (TRL's contract allows them) are awaited concurrently, each under `timeout_s`."""

    def __init__(
        self,
        funcs: Sequence[Callable],
        weights: Sequence[float] | None = None,
        *,
        nonfinite: Literal["error", "skip"] = "error",
        timeout_s: float | None = None,
    ):
        funcs = list(funcs)
        if not funcs:
            raise ValueError("CombinedReward needs at least one reward function")
        self.funcs = funcs
        self.names = [reward_name(f) for f in funcs]
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"reward function names must be distinct (they are metric keys); repeated: {duplicates}. "
                "Give one a different name (the factories take name=...)."
            )
        if weights is None:
            weights = [1.0] * len(funcs)
        weights = [float(w) for w in weights]
        if len(weights) != len(funcs):
            raise ValueError(
                f"got {len(weights)} reward weights for {len(funcs)} reward functions {self.names}"
            )
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"reward weights must be finite, got {weights}")
        if nonfinite not in ("error", "skip"):
            raise ValueError(f"nonfinite must be 'error' or 'skip', got {nonfinite!r}")
        self.weights = weights
        self.nonfinite = nonfinite
        self.timeout_s = timeout_s
        self.__name__ = "+".join(self.names)
        self._reset()

    def _reset(self) -> None:
        self._values: dict[str, list[float]] = {n: [] for n in self.names}
        self._nones: dict[str, int] = {n: 0 for n in self.names}
        self._failed: dict[str, dict[str, int]] = {n: {"nonfinite": 0, "timeouts": 0} for n in self.names}
        self._totals: list[float] = []
        self._missing = 0

    def _call(self, name: str, func: Callable, prompts: list, completions: list, columns: dict) -> list:
        """One (synchronous) function's scores: see :meth:`_check`."""
        try:
            raw = run_with_timeout(
                lambda: func(prompts=prompts, completions=completions, **columns), self.timeout_s
            )
        except RewardTimeout:
            raw = _TIMED_OUT
        except Exception as e:
            raise RuntimeError(f"reward function {name!r} failed: {type(e).__name__}: {e}") from e
        return self._check(name, raw, len(completions))

    async def _call_async(
        self, name: str, func: Callable, prompts: list, completions: list, columns: dict
    ) -> Any:
        try:
            return await asyncio.wait_for(
                func(prompts=prompts, completions=completions, **columns), self.timeout_s
            )
        except asyncio.TimeoutError:
            return _TIMED_OUT
        except Exception as e:
            raise RuntimeError(f"reward function {name!r} failed: {type(e).__name__}: {e}") from e

    def _gather_async(
        self, calls: list[tuple[str, Callable]], prompts: list, completions: list, columns: dict
    ) -> list:
        """The async functions (TRL's contract allows ``async def`` rewards: a judge or a sandbox behind a
        network call) awaited concurrently, each under ``timeout_s``. In a thread of its own when this
        thread already runs an event loop (a notebook)."""

        async def gather() -> list:
            return await asyncio.gather(
                *(self._call_async(n, f, prompts, completions, columns) for n, f in calls)
            )

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(gather())
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, gather()).result()

    def _check(self, name: str, raw: Any, n: int) -> list:
        """``raw`` as scores: None where not applicable, NaN where failed (a timeout, a skipped NaN)."""
        if raw is _TIMED_OUT:
            self._failed[name]["timeouts"] += 1
            return [math.nan] * n
        try:
            if raw is None or len(raw) != n:
                got = "None" if raw is None else f"{len(raw)} values"
                raise ValueError(f"returned {got} for {n} completions")
            scores = [_as_score(v) for v in raw]
        except Exception as e:
            raise RuntimeError(f"reward function {name!r} failed: {type(e).__name__}: {e}") from e
        bad = [i for i, v in enumerate(scores) if v is not None and not math.isfinite(v)]
        if bad and self.nonfinite == "error":
            raise NonFiniteRewardError(
                f"reward function {name!r} returned {scores[bad[0]]} for completion {bad[0]} of {n} "
                f"({len(bad)} non-finite in this batch); return None for 'not applicable', or set "
                "reward_nonfinite: skip to drop such completions from the baseline and the loss"
            )
        self._failed[name]["nonfinite"] += len(bad)
        for i in bad:
            scores[i] = math.nan
        return scores

    def __call__(self, prompts: list, completions: list, **columns) -> RewardOutput:
        n = len(completions)
        per_func: dict[str, list[float | None]] = {}
        pending = [(name, f) for name, f in zip(self.names, self.funcs) if _is_async(f)]
        if pending:
            for (name, _), raw in zip(pending, self._gather_async(pending, prompts, completions, columns)):
                per_func[name] = self._check(name, raw, n)
        for name, func in zip(self.names, self.funcs):
            if name not in per_func:
                per_func[name] = self._call(name, func, prompts, completions, columns)
        per_func = {name: per_func[name] for name in self.names}
        total: list[float] = []
        for i in range(n):
            scores = [(w, per_func[name][i]) for name, w in zip(self.names, self.weights)]
            failed = any(s is not None and math.isnan(s) for _, s in scores)
            parts = [w * s for w, s in scores if s is not None]
            missing = failed or not parts
            self._missing += missing
            total.append(math.nan if missing else float(sum(parts)))
        for name, scores in per_func.items():
            self._values[name] += [s for s in scores if s is not None and not math.isnan(s)]
            self._nones[name] += sum(s is None for s in scores)
            per_func[name] = [None if s is not None and math.isnan(s) else s for s in scores]
        self._totals += [t for t in total if not math.isnan(t)]
        return RewardOutput(total, per_func)

    def metrics(self) -> dict[str, float]:
        """Metrics since the previous call, then reset: per function `reward/<name>/mean`, `.../std`
        (population std over its scores; left out when there were none), `.../none_frac`, and
        `.../nonfinite`, `.../timeouts` when nonzero; `reward/mean`, `reward/std` of the weighted total over
        the samples that have one; `reward/missing` (samples without a reward); and every function's
        `pop_stats()` (see `align.rewards`)."""
        out: dict[str, float] = {}
        for name in self.names:
            values, nones = self._values[name], self._nones[name]
            if values:
                out[f"reward/{name}/mean"], out[f"reward/{name}/std"] = _mean_std(values)
            if values or nones:
                out[f"reward/{name}/none_frac"] = nones / (len(values) + nones)
            out.update({f"reward/{name}/{k}": float(v) for k, v in self._failed[name].items() if v})
        if self._totals:
            out["reward/mean"], out["reward/std"] = _mean_std(self._totals)
        if self._totals or self._missing:
            out["reward/missing"] = float(self._missing)
        for func in self.funcs:
            pop = getattr(func, "pop_stats", None)
            if callable(pop):
                for key, value in pop().items():
                    out[key] = out.get(key, 0.0) + value
        self._reset()
        return out


def _math(arg: str | None):
    from align.rewards.math import make_math_reward

    return make_math_reward() if arg is None else make_math_reward(timeout_s=float(arg))


def _choice(arg: str | None):
    from align.rewards.choice import make_choice_reward

    return make_choice_reward() if arg is None else make_choice_reward(labels=tuple(arg.split(",")))


def _boxed_format(arg: str | None):
    from align.rewards.format import boxed_format_reward

    if arg is not None:
        raise ValueError("'boxed_format' takes no argument")
    return boxed_format_reward


def _tags_format(arg: str | None):
    from align.rewards.format import make_tags_format_reward

    return make_tags_format_reward() if arg is None else make_tags_format_reward(tuple(arg.split(",")))


def _length(arg: str | None):
    from align.rewards.format import make_length_reward

    if arg is None:
        raise ValueError("'length' needs a budget in characters, e.g. 'length:1000'")
    return make_length_reward(int(arg))


def _rubric(arg: str | None):
    from align.rewards.rubric import make_rubric_reward

    if not arg:
        raise ValueError("'rubric' needs a file, e.g. 'rubric:data/rubrics/math_explainer.yaml'")
    path = Path(arg)
    if not path.exists() and not path.is_absolute():
        from align.data import repo_root

        candidate = repo_root() / path
        if candidate.exists():
            path = candidate
    return make_rubric_reward(path)


def _reward_model(arg: str | None):
    from align.rewards.reward_model import reward_model_from_name

    return reward_model_from_name(arg)


KNOWN_REWARDS: dict[str, tuple[Callable[[str | None], Callable], str]] = {
    "math": (_math, "math | math:<timeout_s>"),
    "choice": (_choice, "choice | choice:<label,label,...>"),
    "boxed_format": (_boxed_format, "boxed_format"),
    "tags_format": (_tags_format, "tags_format | tags_format:<tag,tag,...>"),
    "length": (_length, "length:<budget_chars>"),
    "rubric": (_rubric, "rubric:<path.yaml|path.json>"),
    "reward_model": (_reward_model, "reward_model:<directory saved by recipes/reward_model.py>"),
}


def get_reward_funcs(names: Sequence[str | Callable]) -> list[Callable]:
    """Reward functions from names, as written in configs: `kind` or `kind:argument` (the usages are in
    `KNOWN_REWARDS`; a relative rubric path is tried from the working directory, then from the repository
    root). A callable is passed through. Each call makes fresh reward objects, so their `pop_stats()`
    counts are not shared.
    """
    funcs: list[Callable] = []
    for item in names:
        if callable(item):
            funcs.append(item)
            continue
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"reward name must be a non-empty string or a callable, got {item!r}")
        kind, _, arg = item.strip().partition(":")
        if kind not in KNOWN_REWARDS:
            known = ", ".join(usage for _, usage in KNOWN_REWARDS.values())
            raise ValueError(f"unknown reward {item!r}; known rewards: {known}")
        factory, usage = KNOWN_REWARDS[kind]
        try:
            funcs.append(factory(arg or None))
        except (ValueError, TypeError) as e:
            raise ValueError(f"reward {item!r}: {e} (usage: {usage})") from e
    return funcs
