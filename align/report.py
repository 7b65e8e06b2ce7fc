"""``align report RUN_DIR [RUN_DIR ...] -o report.html``: one self-contained HTML page about one or more runs.

The page opens from disk with no network: plotly.js is written once, inline, at the top, every figure's
data is in the page, and the samples browser's filter is a few lines of inline script. Sections, in order:

* **Runs**: each run's directory, its algorithm and model (from ``config.yaml``), the number of logged
  rows and the scalars of its ``summary.json``.
* **Training curves**: every numeric key of ``metrics.jsonl`` against ``step``, grouped (reward, held-out
  evaluation, KL, entropy, clipping, completions, throughput and time, memory, loss, optimisation,
  environment episodes, ...). Keys that share a scale share a figure (the total reward and each reward
  function's mean; the clip fractions; the completion lengths); the others get one figure each. Several
  runs overlay on the same axes, one trace per run (and key), named by the run directory.
* **Monitors** (``monitor/<name>/firing`` and ``/fired``, :mod:`align.monitors`): a table of each
  monitor's fire count and the steps it fired at, and a timeline with a marker per firing.
* **Samples**: from ``completions.jsonl``, per logged step and group (the prompt, or an environment
  episode's reset seed) the best, the worst and one random completion with its reward and, where logged,
  each reward function's score; a text box filters the rows.
* **Evaluation**: ``align eval`` outputs (``summary.json`` with ``tasks``), given as a RUN_DIR or found in
  a run's subfolders: accuracy with 95% intervals, pass@k, maj@k, acc_norm per task, and accuracy by level
  (with Wilson intervals) from ``<task>/samples.jsonl`` where problems have a level.
* **Verifier agreement**: ``agreement.json`` of a run dir or of an eval's math task (``align eval`` writes
  ``<task>/agreement.json``): the training reward, the eval scorer and lm-eval's MATH checker compared.
* **Classic RL** (runs with ``episode/*`` metrics, a Q table or a Decision Transformer summary): episode
  returns and lengths, evaluation returns, value loss, explained variance, TD error, exploration; the
  final greedy evaluation from ``summary.json``; the greedy policy of a grid world drawn from the saved Q
  table (``model/model.safetensors``, key ``q``) over its map; the Decision Transformer's achieved return
  against the target return (beside behaviour cloning and the data's best).

A section with no data for any of the runs is left out (the page's contents list says which sections are
there). A RUN_DIR that holds neither ``metrics.jsonl`` nor an evaluation's ``summary.json`` is a
:class:`align.errors.UserError` that names it.
"""

from __future__ import annotations

import html
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.errors import DataError, UserError

__all__ = ["Run", "build_report", "load_run", "main", "write_report"]

MAX_POINTS = 2000
"""Points per trace: a longer curve is thinned to every k-th row (the last row always kept)."""
MAX_SAMPLE_ROWS = 3000
"""Rows of the samples browser over all runs (the earliest steps are dropped beyond it)."""
MAX_TEXT = 4000
"""Characters of a prompt or completion shown in the samples browser (the rest is cut, marked)."""
MAX_LISTED_STEPS = 30
"""Steps listed per monitor in the monitors table (all of them are on the timeline)."""

# Last segments of reward/<name>/<stat> keys that are counts or spreads rather than scores in [0, 1]
# (the same list align.monitors uses to tell a proxy score from a statistic).
REWARD_STATS = frozenset(
    {"std", "none_frac", "nonfinite", "timeouts", "errors", "gold_missing", "gold_unparsable", "no_answer",
     "judge_unparsable", "judge_mass", "flagged", "over_budget", "truncated", "missing"}
)  # fmt: skip


# --------------------------------------------------------------------------------------------- loading


@dataclass
class EvalResult:
    """One ``align eval`` output folder: its summary and, per task, accuracy by level."""

    path: Path
    tasks: dict[str, dict[str, Any]]
    by_level: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Task -> its ``agreement.json`` (align.eval.agreement), where ``align eval`` wrote one."""


@dataclass
class Run:
    """What the report reads from one run directory."""

    name: str
    path: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    completions: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    evals: list[EvalResult] = field(default_factory=list)
    q_table: list[list[float]] | None = None
    agreement: dict[str, Any] = field(default_factory=dict)
    """The run directory's own ``agreement.json`` (align.eval.agreement), if any."""

    def metric_keys(self) -> set[str]:
        return {k for row in self.metrics for k, v in row.items() if _is_number(v)} - {"step"}

    @property
    def is_classic(self) -> bool:
        return (
            any(k.startswith("episode/") for k in self.metric_keys())
            or self.q_table is not None
            or isinstance(self.summary.get("dt"), dict)
            or "env_steps" in self.summary
        )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                break  # a run still being written: its last line may be cut
            raise DataError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_eval_dir(path: Path) -> bool:
    return isinstance(_read_json(path / "summary.json").get("tasks"), dict)


def _wilson(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``p`` over ``n`` trials (align.eval.metrics has the
    same; it is repeated here so that a report does not import torch)."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _level_breakdown(samples_path: Path) -> list[dict[str, Any]]:
    """Accuracy by ``level`` from an eval task's samples.jsonl: a problem's accuracy is the mean of its
    samples' ``correct`` (unscorable samples, ``score`` None, left out), then averaged per level."""
    if not samples_path.is_file():
        return []
    problems: dict[Any, list[float]] = {}
    levels: dict[Any, Any] = {}
    for s in _read_jsonl(samples_path):
        if "level" not in s or s.get("score") is None or not isinstance(s.get("correct"), bool):
            continue
        problems.setdefault(s.get("index"), []).append(float(s["correct"]))
        levels[s.get("index")] = s["level"]
    groups: dict[Any, list[float]] = {}
    for index, accs in problems.items():
        groups.setdefault(levels[index], []).append(sum(accs) / len(accs))

    def order(v: Any) -> tuple:
        try:
            return (0, float(v), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(v))

    out = []
    for level in sorted(groups, key=order):
        accs = groups[level]
        acc = sum(accs) / len(accs)
        out.append({"level": level, "n": len(accs), "accuracy": acc, "ci95": list(_wilson(acc, len(accs)))})
    return out


def _load_eval(path: Path) -> EvalResult:
    tasks = _read_json(path / "summary.json").get("tasks", {})
    by_level = {task: rows for task in tasks if (rows := _level_breakdown(path / task / "samples.jsonl"))}
    agreement = {task: a for task in tasks if (a := _read_json(path / task / "agreement.json"))}
    return EvalResult(path=path, tasks=tasks, by_level=by_level, agreement=agreement)


def _load_q_table(path: Path) -> list[list[float]] | None:
    file = path / "model" / "model.safetensors"
    if not file.is_file():
        return None
    try:
        from safetensors.numpy import load_file

        tensors = load_file(str(file))
    except Exception:  # not a safetensors file we can read: no policy map
        return None
    q = tensors.get("q")
    if q is None or q.ndim != 2:
        return None
    return q.astype(float).tolist()


def _run_names(paths: Sequence[Path]) -> list[str]:
    """Each run's directory name; where two share a name, enough of their parents to tell them apart."""
    names = [p.name or str(p) for p in paths]
    depth = 1
    while len(set(names)) < len(names) and depth < 6:
        depth += 1
        names = ["/".join(p.parts[-depth:]) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read a run directory (or an ``align eval`` output folder). Raises :class:`UserError` naming the
    directory when it is neither."""
    import yaml

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a run directory (no such directory)")
    metrics_file = path / "metrics.jsonl"
    if not metrics_file.is_file() and not _is_eval_dir(path):
        raise UserError(
            f"{path}: not a run directory (no metrics.jsonl, and no evaluation summary.json with 'tasks')"
        )
    run = Run(name=name or path.resolve().name, path=path)
    if metrics_file.is_file():
        run.metrics = sorted(
            (r for r in _read_jsonl(metrics_file) if _is_number(r.get("step"))), key=lambda r: r["step"]
        )
    if (path / "completions.jsonl").is_file():
        run.completions = _read_jsonl(path / "completions.jsonl")
    if (path / "config.yaml").is_file():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError:
            config = None
        run.config = config if isinstance(config, dict) else {}
    summary = _read_json(path / "summary.json")
    if _is_eval_dir(path):
        run.evals.append(_load_eval(path))
    else:
        run.summary = summary
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and p.name not in ("checkpoints", "model")):
        if _is_eval_dir(sub):
            run.evals.append(_load_eval(sub))
    run.q_table = _load_q_table(path)
    if not _is_eval_dir(path):
        run.agreement = _read_json(path / "agreement.json")
    return run


# --------------------------------------------------------------------------------------------- figures

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#7f7f7f", "#bcbd22"]  # fmt: skip


class _Page:
    """Collects figures as HTML divs (plotly.js written once for the whole page)."""

    def __init__(self) -> None:
        self.count = 0

    def figure(self, fig: Any, *, height: int = 270) -> str:
        self.count += 1
        fig.update_layout(
            height=height,
            margin={"l": 50, "r": 10, "t": 40, "b": 40},
            template="plotly_white",
            legend={"font": {"size": 10}},
            title={"font": {"size": 13}},
        )
        return fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"fig{self.count}",
            config={"displaylogo": False, "displayModeBar": False, "responsive": True},
        )


def _thin(xs: list, ys: list) -> tuple[list, list]:
    if len(xs) <= MAX_POINTS:
        return xs, ys
    k = math.ceil(len(xs) / MAX_POINTS)
    idx = list(range(0, len(xs), k))
    if idx[-1] != len(xs) - 1:
        idx.append(len(xs) - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


def _series(run: Run, key: str) -> tuple[list, list]:
    xs, ys = [], []
    for row in run.metrics:
        v = row.get(key)
        if _is_number(v) and math.isfinite(v):
            xs.append(row["step"])
            ys.append(v)
    return _thin(xs, ys)


def _curve_figure(page: _Page, runs: Sequence[Run], keys: Sequence[str], title: str) -> str | None:
    import plotly.graph_objects as go

    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
    for r_i, run in enumerate(runs):
        for k_i, key in enumerate(keys):
            xs, ys = _series(run, key)
            if not xs:
                continue
            if len(runs) > 1 and len(keys) > 1:
                name = f"{run.name}: {key}"
            elif len(keys) > 1:
                name = key
            else:
                name = run.name
            # Runs are told apart by colour; keys of one figure by the line's dash (by colour for one run).
            color = COLORS[(r_i if len(runs) > 1 else k_i) % len(COLORS)]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    name=name,
                    mode="lines+markers" if len(xs) < 40 else "lines",
                    line={"color": color, "dash": dashes[k_i % len(dashes)] if len(runs) > 1 else "solid"},
                    marker={"size": 5},
                )
            )
    if not fig.data:
        return None
    fig.update_layout(title=title, xaxis_title="step", showlegend=len(fig.data) > 1)
    return page.figure(fig)


# Curve groups: (group title, rule). A rule maps the sorted keys a group may take to the figures to draw,
# each (figure title, keys on its axes). Keys are taken by the first group whose rule claims them.
Rule = Callable[[list[str]], list[tuple[str, list[str]]]]


def _one_each(pred: Callable[[str], bool]) -> Rule:
    return lambda keys: [(k, [k]) for k in keys if pred(k)]


def _together(title: str, pred: Callable[[str], bool], *, rest: Callable[[str], bool] | None = None) -> Rule:
    def rule(keys: list[str]) -> list[tuple[str, list[str]]]:
        shared = [k for k in keys if pred(k)]
        figures = [(title, shared)] if shared else []
        if rest is not None:
            figures += [(k, [k]) for k in keys if rest(k) and k not in shared]
        return figures

    return rule


def _is_reward_score(k: str) -> bool:
    """reward/mean, reward/<function>/mean and a rubric's reward/<rubric>/<criterion>: scores, one scale."""
    parts = k.split("/")
    if k == "reward/mean":
        return True
    if parts[0] != "reward" or len(parts) < 3:
        return False
    return parts[-1] == "mean" or (len(parts) == 3 and parts[-1] not in REWARD_STATS)


def _starts(*prefixes: str) -> Callable[[str], bool]:
    return lambda k: any(k == p.rstrip("/") or k.startswith(p) for p in prefixes)


TRAINING_GROUPS: list[tuple[str, Rule]] = [
    ("Reward", _together("reward: total and per function / criterion (mean)", _is_reward_score)),
    ("Zero-variance groups", _one_each(lambda k: "zero_std" in k or k == "completions/skipped_fraction")),
    ("Reward diagnostics", _one_each(_starts("reward/"))),
    ("Held-out evaluation", _one_each(_starts("eval/", "heldout/"))),
    ("KL", _one_each(lambda k: k == "kl" or k.startswith("kl/") or k.startswith("kl_"))),
    ("Entropy", _one_each(lambda k: k == "entropy" or k.startswith("entropy/"))),
    (
        "Clipping",
        _together(
            "clip fraction",
            lambda k: k.startswith("clip/") and k.endswith("fraction"),
            rest=_starts("clip/"),
        ),
    ),
    (
        "Completions",
        _together(
            "completion length (tokens)",
            lambda k: k in ("completions/mean_length", "completions/min_length", "completions/max_length"),
            rest=_starts("completions/", "prompts/"),
        ),
    ),
    ("Throughput and time", _one_each(_starts("throughput/", "time/"))),
    ("Memory", _one_each(lambda k: "memory" in k or k.startswith("mem/") or k.startswith("gpu/"))),
    ("Loss", _one_each(lambda k: k == "loss" or k.startswith("loss/"))),
    ("Optimisation", _one_each(lambda k: k in ("grad_norm", "lr") or k.startswith("train/"))),
    ("Rollouts (importance correction)", _one_each(_starts("rollout/"))),
    ("Environment", _one_each(_starts("env/"))),
]

CLASSIC_KEYS = _starts("episode/", "eval/return", "eval/length", "eval/success", "value/", "loss/value",
                       "loss/td", "td/", "q/", "epsilon", "alpha", "buffer/", "target/", "action/")  # fmt: skip
CLASSIC_GROUPS: list[tuple[str, Rule]] = [
    ("Episode returns", _one_each(_starts("episode/return", "episode/length", "episode/"))),
    ("Evaluation returns", _one_each(_starts("eval/"))),
    ("Value function", _one_each(_starts("value/", "loss/value", "loss/td", "td/", "q/", "target/"))),
    ("Exploration and replay", _one_each(_starts("epsilon", "alpha", "buffer/"))),
    ("Supervised actions (Decision Transformer)", _one_each(_starts("action/"))),
]


def _grouped(keys: Iterable[str], groups: list[tuple[str, Rule]], *, other: str | None) -> list:
    left = sorted(keys)
    out = []
    for title, rule in groups:
        figures = rule(left)
        if figures:
            out.append((title, figures))
            taken = {k for _, ks in figures for k in ks}
            left = [k for k in left if k not in taken]
    if left and other:
        out.append((other, [(k, [k]) for k in left]))
    return out


# --------------------------------------------------------------------------------------------- sections

e = html.escape


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "") -> str:
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _runs_section(runs: Sequence[Run]) -> str:
    parts = []
    rows = []
    for run in runs:
        cfg = run.config
        what = cfg.get("algorithm") or run.summary.get("algorithm") or cfg.get("method") or ""
        model = cfg.get("model_name_or_path") or cfg.get("env_id") or run.summary.get("env_id") or ""
        steps = run.metrics[-1]["step"] if run.metrics else "-"
        rows.append([e(run.name), e(str(run.path)), e(str(what)), e(str(model)), e(_fmt(steps)),
                     str(len(run.completions))])  # fmt: skip
    parts.append(
        _table(["run", "directory", "algorithm", "model / environment", "last step", "samples"], rows)
    )
    summaries: dict[str, dict[str, Any]] = {}
    for run in runs:
        flat = {k: v for k, v in run.summary.items() if _is_number(v) or isinstance(v, str)}
        ev = run.summary.get("eval")
        if isinstance(ev, dict):
            flat |= {f"eval.{k}": v for k, v in ev.items() if _is_number(v)}
        summaries[run.name] = flat
    keys = list(dict.fromkeys(k for flat in summaries.values() for k in flat))
    if keys:
        parts.append("<h3>summary.json</h3>")
        parts.append(
            _table(
                ["key", *(run.name for run in runs)],
                [[e(k), *(e(_fmt(summaries[run.name].get(k, "-"))) for run in runs)] for k in keys],
                cls="kv",
            )
        )
    return "".join(parts)


# Keys always drawn; any other key whose every value is 0 in every run (a counter of skipped prompts,
# non-finite steps, missing rewards) is listed in one line under its group instead of a flat figure.
ALWAYS_DRAWN = _starts("reward/mean", "eval/", "kl", "entropy", "clip/fraction", "completions/mean_length",
                       "throughput/", "loss", "episode/return", "value/", "monitor/")  # fmt: skip


def _all_zero(runs: Sequence[Run], key: str) -> bool:
    return all(row.get(key, 0) == 0 for run in runs for row in run.metrics)


def _curves_html(page: _Page, runs: Sequence[Run], grouped: list) -> str:
    parts = []
    for title, figures in grouped:
        zero = [k for _, keys in figures for k in keys if len(keys) == 1 and not ALWAYS_DRAWN(k) and _all_zero(runs, k)]  # fmt: skip
        divs = [
            d
            for fig_title, keys in figures
            if not (len(keys) == 1 and keys[0] in zero) and (d := _curve_figure(page, runs, keys, fig_title))
        ]
        note = f"<p class='zero'>Always 0: {e(', '.join(zero))}.</p>" if zero else ""
        if divs or note:
            parts.append(f"<h3>{e(title)}</h3>{note}<div class='grid'>{''.join(divs)}</div>")
    return "".join(parts)


MONITOR_RE = re.compile(r"^monitor/(?P<name>[^/]+)/(?P<stat>firing|fired)$")


def _monitors_section(page: _Page, runs: Sequence[Run]) -> str | None:
    import plotly.graph_objects as go

    names = sorted({m["name"] for run in runs for k in run.metric_keys() if (m := MONITOR_RE.match(k))})
    if not names:
        return None
    rows, fig = [], go.Figure()
    any_fired = False
    for r_i, run in enumerate(runs):
        xs, ys = [], []
        for name in names:
            steps = [row["step"] for row in run.metrics if row.get(f"monitor/{name}/firing", 0) >= 0.5]
            counts = [row[f"monitor/{name}/fired"] for row in run.metrics if _is_number(row.get(f"monitor/{name}/fired"))]  # fmt: skip
            if not counts and not steps and f"monitor/{name}/firing" not in run.metric_keys():
                continue
            fired = int(max(counts)) if counts else len(steps)
            any_fired |= fired > 0
            listed = ", ".join(str(s) for s in steps[:MAX_LISTED_STEPS])
            if len(steps) > MAX_LISTED_STEPS:
                listed += f", ... ({len(steps) - MAX_LISTED_STEPS} more)"
            status = "<span class='fired'>fired</span>" if fired else "quiet"
            rows.append([e(name), e(run.name), status, str(fired), e(str(steps[0])) if steps else "-",
                         e(listed) or "-"])  # fmt: skip
            xs += steps
            ys += [name] * len(steps)
        if xs:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="markers",
                    name=run.name,
                    marker={"symbol": "x", "size": 10, "color": COLORS[r_i % len(COLORS)]},
                )
            )
    table = _table(
        ["monitor", "run", "status", "rows fired", "first step", "steps fired"], rows, cls="monitors"
    )
    if not any_fired:
        return f"<p>No monitor fired.</p>{table}"
    fig.update_layout(
        title="monitor firings (one marker per logged row that fired)",
        xaxis_title="step",
        yaxis={"categoryorder": "array", "categoryarray": names, "type": "category"},
    )
    return page.figure(fig, height=max(220, 60 + 30 * len(names))) + table


def _text_of(value: Any) -> str:
    """A prompt or completion (string, or chat messages) as plain text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        out = []
        for m in value:
            if isinstance(m, dict):
                out.append(f"[{m.get('role', '?')}] {m.get('content', '')}")
            else:
                out.append(str(m))
        return "\n".join(out)
    return "" if value is None else json.dumps(value)


def _short(text: str) -> str:
    return (
        text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f" ... [{len(text) - MAX_TEXT} more characters]"
    )


def _sample_reward(row: dict[str, Any]) -> float | None:
    for key in ("reward", "return", "score"):
        v = row.get(key)
        if _is_number(v) and math.isfinite(v):
            return float(v)
    return None


def _pick_samples(run: Run) -> list[tuple[str, dict[str, Any]]]:
    """(which, row) for each logged step and group: best, worst and one random other completion."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in run.completions:
        if "group" in row:
            gkey = ("g", row["group"])
        elif "reset_seed" in row:
            gkey = ("seed", row["reset_seed"])
        else:
            gkey = ("prompt", _text_of(row.get("prompt")))
        groups.setdefault((row.get("step"), gkey), []).append(row)
    picked = []
    for (step, gkey), rows in groups.items():
        scored = sorted(
            range(len(rows)),
            key=lambda i: (_sample_reward(rows[i]) is None, -(_sample_reward(rows[i]) or 0.0)),
        )
        best, worst = scored[0], scored[-1]
        choice = [("best", best)]
        if worst != best:
            choice.append(("worst", worst))
        others = [i for i in range(len(rows)) if i not in (best, worst)]
        if others:
            choice.append(("random", random.Random(f"{run.name}/{step}/{gkey}").choice(others)))
        if len(rows) == 1:
            choice = [("only", best)]
        picked += [(which, rows[i]) for which, i in choice]
    return picked


def _samples_section(runs: Sequence[Run]) -> str | None:
    rows = []
    for run in runs:
        for which, row in _pick_samples(run):
            reward = _sample_reward(row)
            scores = row.get("rewards") if isinstance(row.get("rewards"), dict) else {}
            for key in ("criteria", "scores"):
                if isinstance(row.get(key), dict):
                    scores = {**scores, **row[key]}
            extra = {k: row[k] for k in ("answer", "answerKey", "turns", "success", "truncated") if k in row}
            if "messages" in row:
                prompt, completion = "", _text_of(row["messages"])
            else:
                prompt, completion = _text_of(row.get("prompt")), _text_of(row.get("completion"))
            rows.append((run.name, row.get("step"), which, reward, scores, extra, prompt, completion))
    if not rows:
        return None
    total = len(rows)
    if total > MAX_SAMPLE_ROWS:
        rows = rows[-MAX_SAMPLE_ROWS:]
    body = []
    for name, step, which, reward, scores, extra, prompt, completion in rows:
        details = "".join(
            f"<span class='tag'>{e(str(k))}: {e(_fmt(v))}</span>" for k, v in {**scores, **extra}.items()
        )
        text = (
            f"<div class='prompt'>{e(_short(prompt))}</div>" if prompt else ""
        ) + f"<div class='completion'>{e(_short(completion))}</div>"
        body.append(
            f"<tr class='sample {which}'><td>{e(name)}</td><td>{e(_fmt(step))}</td><td>{which}</td>"
            f"<td>{e(_fmt(reward))}</td><td>{details}</td><td>{text}</td></tr>"
        )
    note = f" (the last {MAX_SAMPLE_ROWS} of {total})" if total > MAX_SAMPLE_ROWS else ""
    return (
        "<p>Per logged step and group: the best, the worst and one random completion (episode) of those "
        f"logged in completions.jsonl{note}.</p>"
        "<p><input id='sample-filter' type='search' placeholder='filter: text in any column' size='50'> "
        f"<span id='sample-count'>{len(rows)} of {len(rows)} rows</span></p>"
        "<table id='samples'><thead><tr><th>run</th><th>step</th><th>pick</th><th>reward</th>"
        "<th>scores</th><th>prompt / completion</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>"
    )


SAMPLES_SCRIPT = """
(function () {
  var box = document.getElementById('sample-filter');
  if (!box) return;
  var rows = Array.prototype.slice.call(document.querySelectorAll('#samples tbody tr'));
  var texts = rows.map(function (r) { return r.textContent.toLowerCase(); });
  var count = document.getElementById('sample-count');
  box.addEventListener('input', function () {
    var words = box.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var shown = 0;
    rows.forEach(function (r, i) {
      var ok = words.every(function (w) { return texts[i].indexOf(w) >= 0; });
      r.style.display = ok ? '' : 'none';
      if (ok) shown++;
    });
    count.textContent = shown + ' of ' + rows.length + ' rows';
  });
})();
"""


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if _is_number(v) else "-"


def _ci(v: Any) -> str:
    return f"[{100 * v[0]:.1f}, {100 * v[1]:.1f}]" if isinstance(v, list | tuple) and len(v) == 2 else "-"


def _eval_label(run: Run, ev: Any) -> str:
    return run.name if ev.path == run.path else f"{run.name}/{ev.path.name}"


def _level_figure(title: str, levels: list[dict[str, Any]], color: str) -> Any:
    """Accuracy (%) by difficulty level with 95% Wilson intervals, one bar per level."""
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Bar(
            x=[str(g["level"]) for g in levels],
            y=[100 * g["accuracy"] for g in levels],
            text=[f"n={g['n']}" for g in levels],
            marker_color=color,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [100 * (g["ci95"][1] - g["accuracy"]) for g in levels],
                "arrayminus": [100 * (g["accuracy"] - g["ci95"][0]) for g in levels],
            },
        )
    )
    fig.update_layout(
        title=f"{title} accuracy (%) by level (95% Wilson interval)",
        xaxis={"title": "level", "type": "category"},
        yaxis={"range": [0, 100]},
    )
    return fig


def _evaluation_section(page: _Page, runs: Sequence[Run]) -> str | None:
    import plotly.graph_objects as go

    evals = [(run, ev) for run in runs for ev in run.evals]
    if not evals:
        return None
    parts, rows = [], []
    ks = sorted(
        {k for _, ev in evals for t in ev.tasks.values() for k in t if re.match(r"^(pass|maj)@\d+$", k)},
        key=lambda k: (k.split("@")[0], int(k.split("@")[1])),
    )
    fig = go.Figure()
    for i, (run, ev) in enumerate(evals):
        label = _eval_label(run, ev)
        names, accs, lo, hi = [], [], [], []
        for task, s in ev.tasks.items():
            rows.append([e(label), e(task), e(str(s.get("mode", ""))), e(_fmt(s.get("n"))),
                         _pct(s.get("accuracy")), _ci(s.get("accuracy_ci95")),
                         *(_pct(s.get(k)) for k in ks), _pct(s.get("acc_norm"))])  # fmt: skip
            if _is_number(s.get("accuracy")):
                ci = s.get("accuracy_ci95") or [s["accuracy"], s["accuracy"]]
                names.append(task)
                accs.append(100 * s["accuracy"])
                lo.append(100 * (s["accuracy"] - ci[0]))
                hi.append(100 * (ci[1] - s["accuracy"]))
        fig.add_trace(
            go.Bar(x=names, y=accs, name=label, marker_color=COLORS[i % len(COLORS)],
                   error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo})
        )  # fmt: skip
    fig.update_layout(title="accuracy (%) with 95% interval", barmode="group", yaxis={"range": [0, 100]})
    parts.append(page.figure(fig))
    header = [
        "evaluation",
        "task",
        "mode",
        "n",
        "accuracy (%)",
        "95% CI",
        *(f"{k} (%)" for k in ks),
        "acc_norm (%)",
    ]
    parts.append(_table(header, rows))
    for i, (run, ev) in enumerate(evals):
        for task, levels in ev.by_level.items():
            fig = _level_figure(f"{_eval_label(run, ev)}: {task}", levels, COLORS[i % len(COLORS)])
            parts.append(page.figure(fig, height=280))
    return "".join(parts)


FROZENLAKE_ARROWS = ["←", "↓", "→", "↑"]  # LEFT, DOWN, RIGHT, UP
CLIFF_ARROWS = ["↑", "→", "↓", "←"]  # UP, RIGHT, DOWN, LEFT


def _agreement_section(runs: Sequence[Run]) -> str | None:
    """Each verifier-agreement table (train reward, eval scorer, lm-eval) found in the runs' folders."""
    from align.eval.agreement import AgreementTable

    found = [(run.name, run.agreement) for run in runs if run.agreement]
    found += [
        (f"{run.name} / {task}", a) for run in runs for ev in run.evals for task, a in ev.agreement.items()
    ]
    parts = []
    for label, data in found:
        table = AgreementTable.from_dict(data)
        parts.append(f"<h3>{e(label)} ({table.n} samples)</h3>{table.to_html()}")
    return "".join(parts) or None


def _grid_layout(run: Run, num_states: int) -> tuple[list[list[str]] | None, tuple[int, int] | None]:
    """The grid world's tiles (rows of letters, as FrozenLake's desc) and shape, from the run's env."""
    env_id = str(run.config.get("env_id") or run.summary.get("env_id") or "")
    kwargs = {k: run.config[k] for k in ("map_name", "is_slippery") if run.config.get(k) is not None}
    try:
        import gymnasium

        try:  # gymnasium's own ids without importing torch; align's text ids through align.rl.envs
            env = gymnasium.make(env_id, **kwargs).unwrapped
        except gymnasium.error.Error:
            from align.rl.envs import make_env

            env = make_env(env_id, **kwargs).unwrapped
        desc = getattr(env, "desc", None)
        if desc is not None:
            tiles = [[c.decode() if isinstance(c, bytes) else str(c) for c in row] for row in desc.tolist()]
            if len(tiles) * len(tiles[0]) == num_states:
                return tiles, (len(tiles), len(tiles[0]))
        shape = getattr(env, "shape", None)
        if shape is not None and shape[0] * shape[1] == num_states:
            return None, (int(shape[0]), int(shape[1]))
    except Exception:  # an id this process cannot make: fall back to a square grid
        pass
    side = int(round(math.sqrt(num_states)))
    return (None, (side, side)) if side * side == num_states else (None, None)


def _policy_map(page: _Page, run: Run) -> str | None:
    import plotly.graph_objects as go

    q = run.q_table
    if not q:
        return None
    tiles, shape = _grid_layout(run, len(q))
    if shape is None:
        return None
    env_id = str(run.config.get("env_id") or "")
    arrows = CLIFF_ARROWS if "Cliff" in env_id else FROZENLAKE_ARROWS
    rows, cols = shape
    values, text = [], []
    for r in range(rows):
        vrow, trow = [], []
        for c in range(cols):
            s = r * cols + c
            best = max(q[s])
            tile = tiles[r][c] if tiles else ""
            vrow.append(best)
            if tile in ("H", "G"):
                trow.append(f"<b>{tile}</b>")
            else:
                acts = [a for a, v in enumerate(q[s]) if v == best and len(q[s]) <= len(arrows)]
                symbol = "".join(arrows[a] for a in acts) if best != 0 or any(q[s]) else "·"
                trow.append(f"{'S ' if tile == 'S' else ''}{symbol}<br>{best:.2f}")
        values.append(vrow)
        text.append(trow)
    fig = go.Figure(
        go.Heatmap(
            z=values,
            text=text,
            texttemplate="%{text}",
            textfont={"size": 15},
            colorscale="Blues",
            colorbar={"title": "max_a Q"},
            hovertemplate="row %{y}, col %{x}: max Q %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{run.name}: greedy policy and max_a Q(s, a)"
        + (" (S start, H hole, G goal)" if tiles else ""),
        yaxis={"autorange": "reversed", "showticklabels": False},
        xaxis={"showticklabels": False, "scaleanchor": "y"},
    )
    return page.figure(fig, height=min(700, 120 + 60 * rows))


def _dt_figure(page: _Page, runs: Sequence[Run]) -> str | None:
    import plotly.graph_objects as go

    fig = go.Figure()
    lo_hi: list[float] = []
    for i, run in enumerate(runs):
        dt = run.summary.get("dt")
        if not isinstance(dt, dict):
            continue
        points = sorted(
            (float(v["target"]), float(v["return_mean"]), float(v.get("return_std", 0.0)))
            for v in dt.values()
            if isinstance(v, dict) and _is_number(v.get("target")) and _is_number(v.get("return_mean"))
        )
        if not points:
            continue
        color = COLORS[i % len(COLORS)]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                error_y={"type": "data", "array": [p[2] for p in points]},
                mode="lines+markers",
                name=f"{run.name}: Decision Transformer",
                line={"color": color},
            )
        )
        lo_hi += [p[0] for p in points]
        bc = run.summary.get("bc")
        if isinstance(bc, dict) and _is_number(bc.get("return_mean")):
            fig.add_hline(y=bc["return_mean"], line={"dash": "dash", "color": color},
                          annotation_text=f"{run.name}: behaviour cloning")  # fmt: skip
        data_max = (run.summary.get("dataset") or {}).get("return_max")
        if _is_number(data_max):
            fig.add_hline(y=data_max, line={"dash": "dot", "color": "#888"},
                          annotation_text="best return in the data")  # fmt: skip
    if not fig.data:
        return None
    top = max(lo_hi)
    fig.add_trace(
        go.Scatter(
            x=[0, top],
            y=[0, top],
            mode="lines",
            name="return = target",
            line={"color": "#bbb", "dash": "dot"},
        )
    )
    fig.update_layout(title="Decision Transformer: achieved return vs target return", xaxis_title="target return",
                      yaxis_title="return (mean ± std over evaluation episodes)")  # fmt: skip
    return page.figure(fig, height=380)


def _classic_eval_table(runs: Sequence[Run]) -> str | None:
    rows = []
    for run in runs:
        ev = run.summary.get("eval")
        if isinstance(ev, dict):
            rows += [[e(run.name), e(k), e(_fmt(v))] for k, v in ev.items() if _is_number(v)]
        for key in ("dt_greedy", "bc", "bc_greedy"):
            v = run.summary.get(key)
            if isinstance(v, dict) and _is_number(v.get("return_mean")):
                rows.append([e(run.name), e(f"{key} return_mean"), e(_fmt(v["return_mean"]))])
    if not rows:
        return None
    return "<h3>Final greedy evaluation (summary.json)</h3>" + _table(
        ["run", "metric", "value"], rows, cls="kv"
    )


def _classic_section(page: _Page, runs: Sequence[Run], classic_keys: set[str]) -> str | None:
    parts = [_curves_html(page, runs, _grouped(classic_keys, CLASSIC_GROUPS, other="Other"))]
    parts.append(_classic_eval_table(runs) or "")
    maps = [m for run in runs if (m := _policy_map(page, run))]
    if maps:
        parts.append(
            "<h3>Policy map (from the saved Q table)</h3><div class='grid'>" + "".join(maps) + "</div>"
        )
    dt = _dt_figure(page, runs)
    if dt:
        parts.append("<h3>Decision Transformer: return vs target</h3>" + dt)
    body = "".join(parts)
    return body or None


# --------------------------------------------------------------------------------------------- the page

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0 2em 3em; color: #222; }
h1 { margin-top: 0.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.6em; }
nav a { margin-right: 1.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; vertical-align: top; text-align: left; }
th { background: #f4f4f4; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 8px; }
.zero { color: #666; font-size: 13px; }
.fired { color: #c00; font-weight: bold; }
#samples td:last-child { max-width: 900px; }
.prompt { color: #555; white-space: pre-wrap; border-bottom: 1px dashed #ccc; margin-bottom: 3px; }
.completion { white-space: pre-wrap; font-family: monospace; font-size: 12px; }
.tag { display: inline-block; background: #eef; border-radius: 3px; padding: 0 4px; margin: 1px; }
tr.best td:nth-child(3) { color: #080; } tr.worst td:nth-child(3) { color: #c00; }
"""


def build_report(runs: Sequence[Run], *, title: str = "align report") -> str:
    """The report page for ``runs`` as one HTML string (plotly.js inline once)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise UserError(
            "align report needs plotly: pip install 'align[report]' (or pip install plotly)"
        ) from None

    page = _Page()
    classic = any(run.is_classic for run in runs)
    keys = set().union(*(run.metric_keys() for run in runs)) if runs else set()
    keys = {k for k in keys if not k.startswith("monitor/")}
    classic_keys = {k for k in keys if CLASSIC_KEYS(k)} if classic else set()
    sections: list[tuple[str, str, str | None]] = [
        ("runs", "Runs", _runs_section(runs)),
        (
            "curves",
            "Training curves",
            _curves_html(page, runs, _grouped(keys - classic_keys, TRAINING_GROUPS, other="Other metrics"))
            or None,
        ),  # fmt: skip
        ("monitors", "Monitors", _monitors_section(page, runs)),
        ("samples", "Samples", _samples_section(runs)),
        ("evaluation", "Evaluation", _evaluation_section(page, runs)),
        ("agreement", "Verifier agreement", _agreement_section(runs)),
        ("classic", "Classic RL", _classic_section(page, runs, classic_keys) if classic else None),
    ]
    present = [(sid, name, body) for sid, name, body in sections if body]
    nav = " ".join(f"<a href='#{sid}'>{e(name)}</a>" for sid, name, _ in present)
    absent = [name for _, name, body in sections if not body]
    absent_note = f"<p class='absent'>No data for: {e(', '.join(absent))}.</p>" if absent else ""
    body = "".join(
        f"<section id='{sid}'><h2>{e(name)}</h2>{content}</section>" for sid, name, content in present
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><style>{STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{e(title)}</h1><nav>{nav}</nav>{absent_note}{body}"
        f"<script>{SAMPLES_SCRIPT}</script></body></html>"
    )


def write_report(run_dirs: Sequence[str | Path], output: str | Path, *, title: str | None = None) -> Path:
    """Read ``run_dirs``, write the report to ``output`` and return its path. Raises :class:`UserError`
    naming a directory that is not a run, before anything is written."""
    if not run_dirs:
        raise UserError("align report: give at least one run directory")
    paths = [Path(p) for p in run_dirs]
    names = _run_names([p.resolve() for p in paths])
    runs = [load_run(p, name) for p, name in zip(paths, names)]
    output = Path(output)
    if output.is_dir():
        raise UserError(f"{output}: the report's output (-o) is a directory; give a file name (report.html)")
    text = build_report(runs, title=title or "align report: " + ", ".join(r.name for r in runs))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(output)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """``align report RUN_DIR [RUN_DIR ...] [-o report.html] [--title TEXT]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="align report",
        description="One self-contained HTML page (plots and data inline, opens offline) about one or more "
        "run directories: training curves overlaid, monitors, a samples browser, evaluation results and "
        "classic RL views.",
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or align eval outputs)"
    )
    parser.add_argument("-o", "--output", default="report.html", help="the HTML file to write (report.html)")
    parser.add_argument("--title", default=None, help="the page's title (default: the runs' names)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    path = write_report(args.run_dirs, args.output, title=args.title)
    print(f"report written to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
