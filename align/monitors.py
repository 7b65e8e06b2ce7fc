"""Monitors that catch reward hacking and training pathologies while they happen.

Every logged row of ``metrics.jsonl`` (after the logging window's average) passes through a
:class:`Monitors` set, in :meth:`align.trainer.Trainer.log`, before it is written. Each :class:`Monitor`
reads the metrics it needs from the row and returns its ``monitor/<name>/*`` values, merged into the row
(so they reach ``metrics.jsonl`` and every configured tracker):

* ``monitor/<name>/<statistic>``: what the monitor measures (a ratio, a change, a fraction);
* ``monitor/<name>/firing``: 1.0 on a row where the monitor fires, else 0.0;
* ``monitor/<name>/fired``: how many logged rows it has fired on so far in the run.

The first time a monitor fires it writes one warning (``logging``, logger ``align.monitors``) naming the
step, the statistic, the threshold and what to do; after that it only counts. A monitor whose inputs are
not in the row (no ``kl`` without a KL term, no held-out evaluation configured) returns nothing.

Windows count the logged rows that carry the monitor's input (``logging_steps`` apart; a rollout's
metrics sit on the first optimizer step of its plan in GRPO, on every step of it in PPO-RLHF), not
optimizer steps: ``monitor_window`` such rows. A "change over a window" is the mean of the last
``monitor_window`` values minus the mean of the ``monitor_window`` values before them, so it needs
``2 x monitor_window`` rows. Values that are not finite are skipped.

Everything is pure Python on floats. A monitor's state is a small JSON tree (the fired count and bounded
histories), saved in the trainer's checkpoint with the loop state, so a resumed run logs the same
monitor values as an unbroken one. Thresholds, with their defaults and meaning, are the ``monitor_*``
fields of :class:`align.config.TrainConfig`.

``repeated_ngram_rate(texts)`` is the one statistic computed from text: the rollouts log it as
``completions/repeated_ngram_rate`` where their completions are at hand, and the repetition monitor reads
that metric like any other.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "ClippedMonitor",
    "EntropyCollapseMonitor",
    "FlaggedMonitor",
    "KLSpikeMonitor",
    "LengthChangeMonitor",
    "Monitor",
    "Monitors",
    "ProxyGoldMonitor",
    "RepetitionMonitor",
    "RewardVsEvalMonitor",
    "ZeroVarianceMonitor",
    "repeated_ngram_rate",
]

#: Training reward keys, the first present is used (GRPO / PPO-RLHF rewards, environment returns).
TRAIN_REWARD_KEYS = ("reward/mean", "env/return")
#: Held-out keys, the first present is used (held-out math accuracy, environment success, PPO's score).
EVAL_KEYS = ("eval/accuracy", "eval/success_rate", "eval/score")
#: Last segments of ``reward/<name>/<stat>`` keys that are counts or spreads, not scores: never a proxy.
REWARD_STATS = frozenset(
    {
        "std",
        "none_frac",
        "nonfinite",
        "timeouts",
        "errors",
        "gold_missing",
        "gold_unparsable",
        "no_answer",
        "judge_unparsable",
        "judge_mass",
        "flagged",
        "over_budget",
        "truncated",
        "missing",
    }
)


def repeated_ngram_rate(texts: Iterable[str], n: int = 4) -> float:
    """Mean over texts of the fraction of a text's word n-grams that repeat an earlier n-gram of the same
    text: ``1 - unique / total`` over its whitespace-split words. 0 for distinct n-grams, close to 1 for a
    completion that loops ("the answer is 4. the answer is 4. ..."). Texts with fewer than ``n`` words
    have no n-grams and are left out; 0.0 when none has any."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rates = []
    for text in texts:
        words = str(text).split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


def _value(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _first(metrics: dict[str, Any], keys: Sequence[str]) -> tuple[str, float] | None:
    for k in keys:
        v = _value(metrics, k)
        if v is not None:
            return k, v
    return None


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _pattern(glob: str) -> re.Pattern[str]:
    """A metric-key glob: ``*`` matches one path segment (no ``/``), everything else is literal."""
    return re.compile("[^/]+".join(re.escape(part) for part in glob.split("*")) + r"\Z")


class Monitor(abc.ABC):
    """One monitor: :meth:`check` reads a row and says whether it fires; :meth:`update` adds the firing
    flag, the fired count and the one warning. Subclasses keep their state in ``self.data`` (JSON: lists
    and numbers), which :meth:`state_dict` saves with the fired count."""

    #: Metric prefix: ``monitor/<name>/...``.
    name = "monitor"
    #: What to do, appended to the warning.
    advice = ""

    def __init__(self, window: int = 10) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.fired = 0
        self.data: dict[str, Any] = {}
        self.verbose = True

    @abc.abstractmethod
    def check(self, step: int, metrics: dict[str, Any]) -> tuple[dict[str, float], str | None] | None:
        """``(statistics, message)``: the statistics to log (keys under ``monitor/<name>/``) and a message
        when the monitor fires (None when it does not); None when the row lacks the monitor's inputs."""
        raise NotImplementedError

    def update(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
        """The row's ``monitor/<name>/*`` values (empty when the monitor has no input in it)."""
        result = self.check(step, metrics)
        if result is None:
            return {}
        stats, message = result
        firing = message is not None
        self.fired += firing
        if firing and self.fired == 1 and self.verbose:
            advice = f"; {self.advice}" if self.advice else ""
            logger.warning(
                "monitor %s fired at step %d: %s%s (further firings are counted in monitor/%s/fired)",
                self.name,
                step,
                message,
                advice,
                self.name,
            )
        out = {f"monitor/{self.name}/{k}": float(v) for k, v in stats.items()}
        out[f"monitor/{self.name}/firing"] = float(firing)
        out[f"monitor/{self.name}/fired"] = float(self.fired)
        return out

    # --- Histories: bounded lists of finite values under self.data["hist"].

    def push(self, key: str, value: float, keep: int | None = None) -> list[float]:
        hist = self.data.setdefault("hist", {}).setdefault(key, [])
        hist.append(float(value))
        del hist[: max(0, len(hist) - (keep or 2 * self.window))]
        return hist

    def window_change(self, hist: Sequence[float]) -> float | None:
        """Mean of the last window minus the mean of the window before it; None before 2 windows."""
        w = self.window
        if len(hist) < 2 * w:
            return None
        return _mean(hist[-w:]) - _mean(hist[-2 * w : -w])

    def recent(self, hist: Sequence[float]) -> float:
        """Mean of the last window (fewer values at the start)."""
        return _mean(hist[-self.window :])

    def state_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps({"fired": self.fired, "data": self.data}))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fired = int(state.get("fired", 0))
        self.data = json.loads(json.dumps(state.get("data", {})))


class LengthChangeMonitor(Monitor):
    """Completion length exploding or collapsing: ``ratio`` = mean of ``completions/mean_length`` over the
    last window / its mean over the window before. Fires when ``ratio > 1 + change`` (exploding) or
    ``ratio < 1 / (1 + change)`` (collapsing)."""

    name = "length_change"
    advice = (
        "a policy that pads or truncates its answers to please the reward: read completions.jsonl, check the "
        "length and format rewards, and lower the learning rate or raise the KL coefficient"
    )

    def __init__(self, change: float = 1.0, window: int = 10) -> None:
        super().__init__(window)
        self.change = change

    def check(self, step, metrics):
        v = _value(metrics, "completions/mean_length")
        if v is None:
            return None
        hist = self.push("length", v)
        w = self.window
        if len(hist) < 2 * w:
            return {}, None
        before, now = _mean(hist[-2 * w : -w]), _mean(hist[-w:])
        if before <= 0:
            return {}, None
        ratio = now / before
        limit = 1.0 + self.change
        message = None
        if ratio > limit or ratio < 1.0 / limit:
            verb = "exploded" if ratio > 1 else "collapsed"
            message = (
                f"mean completion length {verb} from {before:.4g} to {now:.4g} tokens over {w} logged rows "
                f"(ratio {ratio:.3g}, limit x{limit:.3g} either way)"
            )
        return {"ratio": ratio}, message


class ClippedMonitor(Monitor):
    """Completions hitting ``max_new_tokens`` more and more: ``ratio`` = mean over the last window of
    ``completions/clipped_ratio`` (GRPO; PPO-RLHF logs ``completions/eos_fraction``, read as 1 minus it).
    Fires when ``ratio > threshold`` and above its mean over the first window of the run: an untrained
    model that rambles past the limit and learns to stop (the main job: 66% clipped at step 1, 3% at
    step 16) is learning, not gaming; a policy that grows into the limit is the pathology."""

    name = "clipped"
    advice = (
        "clipped completions get no final answer (and often the format reward only): raise max_new_tokens, "
        "or add a length penalty"
    )

    def __init__(self, threshold: float = 0.2, window: int = 10) -> None:
        super().__init__(window)
        self.threshold = threshold

    def check(self, step, metrics):
        v = _value(metrics, "completions/clipped_ratio")
        if v is None:
            eos = _value(metrics, "completions/eos_fraction")
            if eos is None:
                return None
            v = 1.0 - eos
        hist = self.push("clipped", v)
        ratio = self.recent(hist)
        start = self.data.get("start")
        if start is None and len(hist) >= self.window:
            start = self.data["start"] = _mean(hist[: self.window])
        message = None
        if start is not None and ratio > self.threshold and ratio > start:
            message = (
                f"{ratio:.1%} of completions were cut at max_new_tokens over the last {len(hist[-self.window :])} "
                f"logged rows, up from {start:.1%} in the first {self.window} (threshold {self.threshold:.1%})"
            )
        return {"ratio": ratio}, message


class RewardVsEvalMonitor(Monitor):
    """Training reward rising while held-out accuracy is flat or falling. At each row with a held-out value
    (the first of ``eval/accuracy``, ``eval/success_rate``, ``eval/score``): ``reward_change`` = mean
    training reward (``reward/mean``, else ``env/return``) over the rows since the previous evaluation
    minus its mean over the interval before that, ``eval_change`` = this evaluation minus the previous
    one. Fires when ``reward_change >= rise`` and ``eval_change <= flat``."""

    name = "reward_vs_eval"
    advice = (
        "the policy is learning something the held-out task does not reward (a reward hack or overfitting "
        "to the training prompts): read completions.jsonl and compare with held-out samples"
    )

    def __init__(self, rise: float = 0.1, flat: float = 0.0, window: int = 10) -> None:
        super().__init__(window)
        self.rise, self.flat = rise, flat

    def check(self, step, metrics):
        d = self.data
        train = _first(metrics, TRAIN_REWARD_KEYS)
        if train is not None:
            d.setdefault("interval", []).append(train[1])
        found = _first(metrics, EVAL_KEYS)
        if found is None:
            return None
        key, value = found
        interval = d.get("interval", [])
        d["interval"] = []
        now = _mean(interval) if interval else None
        prev_eval, prev_reward = d.get("eval"), d.get("reward")
        d["eval"], d["reward"] = value, now if now is not None else prev_reward
        if prev_eval is None or prev_reward is None or now is None:
            return {}, None
        reward_change, eval_change = now - prev_reward, value - prev_eval
        message = None
        if reward_change >= self.rise and eval_change <= self.flat:
            message = (
                f"training reward rose by {reward_change:+.4g} since the previous evaluation while {key} "
                f"changed by {eval_change:+.4g} (rise >= {self.rise:g}, held-out change <= {self.flat:g})"
            )
        return {"reward_change": reward_change, "eval_change": eval_change}, message


class ProxyGoldMonitor(Monitor):
    """A proxy reward rising while the gold (correctness) reward does not. ``proxies`` and ``golds`` are
    metric-key globs (``*`` = one path segment); the gold is the first glob's first present key, the
    proxies are every other matching key except those matching ``exclude`` and ``reward/<x>/<stat>``
    statistics (``REWARD_STATS``). Per proxy, ``<proxy>`` = its window change (see the module); ``gold`` =
    the gold's window change. Fires when some proxy's change is ``>= rise`` while the gold's is
    ``<= flat``. Used twice: format / rubric criteria vs correctness, and a learned reward model vs a
    verifier on the same completions (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization")."""

    def __init__(
        self,
        name: str,
        proxies: Sequence[str],
        golds: Sequence[str],
        *,
        exclude: Sequence[str] = (),
        rise: float = 0.1,
        flat: float = 0.0,
        window: int = 10,
        advice: str = "",
    ) -> None:
        super().__init__(window)
        self.name, self.advice = name, advice
        self.proxies = [_pattern(g) for g in proxies]
        self.golds = [_pattern(g) for g in golds]
        self.exclude = [_pattern(g) for g in exclude]
        self.rise, self.flat = rise, flat

    def _gold(self, metrics: dict[str, Any]) -> tuple[str, float] | None:
        for pat in self.golds:
            for key in sorted(metrics):
                v = _value(metrics, key) if pat.match(key) else None
                if v is not None:
                    return key, v
        return None

    def check(self, step, metrics):
        gold = self._gold(metrics)
        if gold is None:
            return None
        proxies = {
            k: v
            for k in sorted(metrics)
            if k != gold[0]
            and any(p.match(k) for p in self.proxies)
            and not any(p.match(k) for p in self.exclude)
            and k.rsplit("/", 1)[-1] not in REWARD_STATS
            and (v := _value(metrics, k)) is not None
        }
        if not proxies:
            return None
        gold_change = self.window_change(self.push(gold[0], gold[1]))
        stats: dict[str, float] = {}
        rising = []
        for key, v in proxies.items():
            change = self.window_change(self.push(key, v))
            if change is None:
                continue
            short = key.removeprefix("reward/").removesuffix("/mean")
            stats[short] = change
            if gold_change is not None and change >= self.rise and gold_change <= self.flat:
                rising.append(f"{key} {change:+.4g}")
        if gold_change is None:
            return stats, None
        stats["gold"] = gold_change
        message = None
        if rising:
            message = (
                f"{', '.join(rising)} over the last {self.window} logged rows while {gold[0]} changed by "
                f"{gold_change:+.4g} (rise >= {self.rise:g}, gold change <= {self.flat:g})"
            )
        return stats, message


class RepetitionMonitor(Monitor):
    """Repetition: ``rate`` = mean over the last window of ``completions/repeated_ngram_rate`` (see
    :func:`repeated_ngram_rate`, 4-grams). Fires when ``rate > threshold``."""

    name = "repetition"
    advice = (
        "looping completions (degenerate sampling or a reward that pays for length): read completions.jsonl; "
        "lower the learning rate, raise the KL coefficient, or penalise length"
    )

    def __init__(self, threshold: float = 0.3, window: int = 10) -> None:
        super().__init__(window)
        self.threshold = threshold

    def check(self, step, metrics):
        v = _value(metrics, "completions/repeated_ngram_rate")
        if v is None:
            return None
        hist = self.push("rate", v)
        rate = self.recent(hist)
        message = None
        if rate > self.threshold:
            message = (
                f"{rate:.1%} of the completions' 4-grams repeat an earlier one over the last "
                f"{len(hist[-self.window :])} logged rows (threshold {self.threshold:.1%})"
            )
        return {"rate": rate}, message


class EntropyCollapseMonitor(Monitor):
    """Entropy collapse: ``fraction`` = mean ``entropy`` over the last window / its mean over the first
    window of the run. Fires when ``fraction < fraction_threshold`` or the last window's mean is below
    ``floor`` (nats per token)."""

    name = "entropy_collapse"
    advice = (
        "the policy has become near-deterministic and stops exploring: raise the temperature or the KL "
        "coefficient, lower the learning rate, or use clip-higher (a larger epsilon_high)"
    )

    def __init__(self, fraction: float = 0.1, floor: float = 0.01, window: int = 10) -> None:
        super().__init__(window)
        self.fraction, self.floor = fraction, floor

    def check(self, step, metrics):
        v = _value(metrics, "entropy")
        if v is None:
            return None
        early = self.data.setdefault("early", [])
        if len(early) < self.window:
            early.append(v)
        hist = self.push("entropy", v)
        now = self.recent(hist)
        start = _mean(early)
        fraction = now / start if start > 0 else 1.0
        message = None
        if now < self.floor or (len(early) >= self.window and fraction < self.fraction):
            message = (
                f"token entropy fell to {now:.4g} nats (mean of the last {len(hist[-self.window :])} logged rows), "
                f"{fraction:.1%} of its early {start:.4g} (limits: {self.fraction:.0%} of early, floor "
                f"{self.floor:g})"
            )
        return {"entropy": now, "fraction": fraction}, message


class KLSpikeMonitor(Monitor):
    """KL spikes: ``ratio`` = this row's ``kl`` / the median of the previous window's ``kl`` values. Fires
    when ``ratio > factor`` and ``kl > floor`` (so that the tiny KL of the first steps, which grows by
    orders of magnitude from ~0, does not count), once a full window of history is there."""

    name = "kl_spike"
    advice = (
        "the policy jumped away from the reference: lower the learning rate, tighten clipping, or check the "
        "step's rewards for an outlier"
    )

    def __init__(self, factor: float = 5.0, floor: float = 0.01, window: int = 10) -> None:
        super().__init__(window)
        self.factor, self.floor = factor, floor

    def check(self, step, metrics):
        v = _value(metrics, "kl")
        if v is None:
            return None
        hist = list(self.data.get("hist", {}).get("kl", []))
        self.push("kl", v, keep=self.window)
        if len(hist) < self.window:
            return {}, None
        median = statistics.median(hist)
        ratio = v / median if median > 0 else (math.inf if v > 0 else 1.0)
        message = None
        if v > self.floor and ratio > self.factor:
            message = (
                f"kl {v:.4g} is {ratio:.3g}x the median {median:.4g} of the previous {self.window} logged rows "
                f"(limit {self.factor:g}x, above {self.floor:g})"
            )
        return {"ratio": min(ratio, 1e9)}, message


class ZeroVarianceMonitor(Monitor):
    """Groups without reward variance: ``fraction`` = mean of ``reward/zero_std_group_fraction`` over the
    last window (a full window needed). Fires when ``fraction > threshold``: GRPO's advantage is 0 for
    such a group, so most of each rollout teaches nothing."""

    name = "zero_variance"
    advice = (
        "groups whose completions all get the same reward teach nothing: raise num_generations, use easier "
        "(or harder) data, or change the temperature: 0.7 -> 1.0 when the groups agree because sampling is "
        "too narrow, and the reverse when the model is weak (at temperature 1.0 the 135M model's groups had "
        "no reward variance: every completion was wrong, and a cooler temperature let some be right)"
    )

    def __init__(self, threshold: float = 0.75, window: int = 10) -> None:
        super().__init__(window)
        self.threshold = threshold

    def check(self, step, metrics):
        v = _value(metrics, "reward/zero_std_group_fraction")
        if v is None:
            return None
        hist = self.push("fraction", v)
        fraction = self.recent(hist)
        message = None
        if len(hist) >= self.window and fraction > self.threshold:
            message = (
                f"{fraction:.1%} of groups had no reward variance over the last {self.window} logged rows "
                f"(threshold {self.threshold:.1%})"
            )
        return {"fraction": fraction}, message


class FlaggedMonitor(Monitor):
    """Judge-directed text in completions scored by a judge: ``fraction`` = the sum over rubrics of
    ``reward/<rubric>/flagged`` (completions the injection detector, ``align.rewards.injection``, flagged)
    / ``completions/count``. Fires when ``fraction > threshold``. Active from the first row with a
    completion count; a rubric logs ``flagged`` only when it flagged some, so a row without it counts 0
    (with ``logging_steps > 1`` the window average is over the steps that flagged some, an upper bound)."""

    name = "judge_injection"
    advice = (
        "the policy is writing to the judge (score demands, 'ignore the instructions', rubric tags): those "
        "completions are penalised, but read completions.jsonl and consider a stronger judge or a rule"
    )

    def __init__(self, threshold: float = 0.05, window: int = 10) -> None:
        super().__init__(window)
        self.threshold = threshold
        self._pat = _pattern("reward/*/flagged")

    def check(self, step, metrics):
        n = _value(metrics, "completions/count")
        if n is None or n <= 0:
            return None
        flagged = sum(v for k in metrics if self._pat.match(k) and (v := _value(metrics, k)) is not None)
        fraction = flagged / n
        message = None
        if fraction > self.threshold:
            message = (
                f"{fraction:.1%} of completions carried judge-directed text (threshold {self.threshold:.1%})"
            )
        return {"fraction": fraction}, message


class Monitors:
    """A set of monitors fed every logged row; their state is one JSON tree for the checkpoint."""

    def __init__(self, monitors: Sequence[Monitor], *, verbose: bool = True) -> None:
        names = [m.name for m in monitors]
        if len(set(names)) != len(names):
            raise ValueError(f"monitor names must be unique, got {names}")
        self.monitors = list(monitors)
        self.verbose = verbose

    @property
    def verbose(self) -> bool:
        return self._verbose

    @verbose.setter
    def verbose(self, value: bool) -> None:
        self._verbose = value
        for m in self.monitors:
            m.verbose = value

    @classmethod
    def from_config(cls, config: Any, *, verbose: bool = True) -> Monitors:
        """The standard set with the thresholds of a ``TrainConfig`` (its ``monitor_*`` fields); empty when
        ``config.monitors`` is off."""
        c = config
        if not getattr(c, "monitors", False):
            return cls([], verbose=verbose)
        w = c.monitor_window
        golds = list(c.monitor_gold_rewards)
        rms = list(c.monitor_reward_models)
        monitors = [
            LengthChangeMonitor(c.monitor_length_change, w),
            ClippedMonitor(c.monitor_clipped_ratio, w),
            RewardVsEvalMonitor(c.monitor_rise, c.monitor_flat, w),
            ProxyGoldMonitor(
                "proxy_vs_gold",
                c.monitor_proxy_rewards,
                golds,
                exclude=rms,
                rise=c.monitor_rise,
                flat=c.monitor_flat,
                window=w,
                advice=(
                    "a format or rubric criterion is being learned instead of correctness: read "
                    "completions.jsonl; lower the proxy's weight or make it conditional on a correct answer"
                ),
            ),
            ProxyGoldMonitor(
                "reward_model_vs_gold",
                rms,
                golds,
                rise=c.monitor_rm_rise,
                flat=c.monitor_flat,
                window=w,
                advice=(
                    "the learned reward model is being over-optimised (Gao et al. 2022): raise the KL "
                    "coefficient, stop earlier, or retrain the reward model on the policy's samples"
                ),
            ),
            RepetitionMonitor(c.monitor_repetition, w),
            EntropyCollapseMonitor(c.monitor_entropy_fraction, c.monitor_entropy_floor, w),
            KLSpikeMonitor(c.monitor_kl_spike, c.monitor_kl_floor, w),
            ZeroVarianceMonitor(c.monitor_zero_std_fraction, w),
            FlaggedMonitor(c.monitor_flagged_fraction, w),
        ]
        return cls(monitors, verbose=verbose)

    def __len__(self) -> int:
        return len(self.monitors)

    def update(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
        """Feed one logged row to every monitor; their ``monitor/*`` values, to merge into the row."""
        out: dict[str, float] = {}
        for m in self.monitors:
            out.update(m.update(step, metrics))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {m.name: m.state_dict() for m in self.monitors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m in self.monitors:
            if m.name in state:
                m.load_state_dict(state[m.name])
