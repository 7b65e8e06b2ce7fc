"""Writing an evaluation's outputs: samples.jsonl, summary.json, a markdown report and a plot.

Layout of `output_dir` (one folder per task, so several tasks fit in one call):

    output_dir/
      config.yaml            the resolved EvalConfig (reloads with --config)
      summary.json           {"model": ..., "settings": ..., "tasks": {task: summary, ...}}
      report.md              every task's metrics; MATH-style tasks broken down by subject and level;
                             the problems whose gold cannot be parsed (left out of the metrics)
      <task>/samples.jsonl   one line per (problem, sample): prompt, completion, extracted, gold, correct, ...
      <task>/summary.json    that task's summary with model and settings
      <task>/agreement.json  math tasks: train reward vs eval scorer vs lm-eval (align.eval.agreement)
      <task>/accuracy_by_level.png   tasks with a `level` column (MATH500)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from align.eval.harness import TaskResult
from align.eval.metrics import wilson_interval

__all__ = ["breakdown", "plot_accuracy_by_level", "render_report", "write_outputs", "write_task_outputs"]


def _sort_key(value: Any) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def breakdown(problems: Sequence[dict], column: str) -> list[dict[str, Any]]:
    """Per-value accuracy of `column` over the scorable problems (accuracy not None): [{value, n, accuracy,
    ci95}], values sorted (numerically when they are numbers). Problems without the column are grouped
    under None."""
    groups: dict[Any, list[float]] = {}
    for p in problems:
        if p.get("accuracy") is None:
            continue
        groups.setdefault(p.get(column), []).append(float(p["accuracy"]))
    out = []
    for value in sorted(groups, key=_sort_key):
        accs = groups[value]
        acc = sum(accs) / len(accs)
        out.append(
            {"value": value, "n": len(accs), "accuracy": acc, "ci95": list(wilson_interval(acc, len(accs)))}
        )
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "-" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _cell(value: Any, limit: int, *, tail: bool = False) -> str:
    """``value`` as one markdown table cell: whitespace collapsed, cut to ``limit`` characters (keeping the
    end when ``tail``: a GSM8K answer's number comes last), pipes escaped; "(missing)" for None or blank."""
    text = " ".join(str(value).split()) if value is not None else ""
    if not text:
        return "(missing)"
    if len(text) > limit:
        text = "..." + text[-limit:] if tail else text[:limit] + "..."
    return text.replace("|", "\\|")


MAX_LISTED = 50
"""Unscorable problems listed in a task's report section; all their indices are in summary.json."""


def _unscorable_section(result: TaskResult) -> list[str]:
    """The list of problems whose gold answer cannot be parsed: index, id, question start, gold as written."""
    rows = [p for p in result.problems if p.get("scorable") is False]
    if not rows:
        return []
    lines = [
        "### Unscorable gold answers (left out of the metrics)",
        "",
        "| index | id | question | gold as written |",
        "|---|---|---|---|",
    ]
    for p in rows[:MAX_LISTED]:
        gold = _cell(p.get("raw_gold"), 60, tail=True)
        lines.append(
            f"| {p['index']} | {_cell(p.get('id'), 40)} | {_cell(p.get('question'), 60)} | "
            + (gold if gold == "(missing)" else f"`` {gold} ``")
            + " |"
        )
    if len(rows) > MAX_LISTED:
        lines += ["", f"... and {len(rows) - MAX_LISTED} more (`unscorable_indices` in summary.json)."]
    return [*lines, ""]


def _task_section(result: TaskResult, *, plot_name: str | None) -> list[str]:
    s = result.summary
    lines = [f"## {result.task} ({result.mode})", ""]
    lines += ["| metric | value (%) | 95% CI |", "|---|---|---|"]
    if result.mode == "loglikelihood":
        lines.append(f"| acc | {_pct(s['acc'])} | {_ci(s['acc_ci95'])} |")
        lines.append(f"| acc_norm | {_pct(s['acc_norm'])} | {_ci(s['acc_norm_ci95'])} |")
    else:
        lines.append(f"| accuracy (pass@1) | {_pct(s['accuracy'])} | {_ci(s['accuracy_ci95'])} |")
        for key in s:
            if (key.startswith("pass@") and key != "pass@1") or key.startswith("maj@"):
                lines.append(f"| {key} | {_pct(s[key])} | |")
    lines.append("")
    counts = [f"{s['n']} problems"]
    if result.mode == "generate":
        counts += [
            f"{s['num_samples']} sample(s) each",
            f"unscorable gold: {s['unscorable']} (left out of the metrics, which are over "
            f"{s['n_scorable']} problems)",
            f"no answer: {s['no_answer']}",
            f"verifier timeouts: {s['timeouts']}",
            f"truncated: {s['truncated']}",
            f"mean completion tokens: {s['mean_completion_tokens']:.1f}",
        ]
    lines += ["; ".join(counts) + ". Interval: " + s["ci_method"] + ".", ""]
    lines += _unscorable_section(result)
    columns = [c for c in ("subject", "level") if any(c in p for p in result.problems)]
    for column in columns:
        lines += [f"### By {column}", "", f"| {column} | n | accuracy (%) | 95% CI |", "|---|---|---|---|"]
        for g in breakdown(result.problems, column):
            lines.append(f"| {g['value']} | {g['n']} | {_pct(g['accuracy'])} | {_ci(g['ci95'])} |")
        lines.append("")
    if plot_name:
        lines += [f"![accuracy by level]({plot_name})", ""]
    return lines


def render_report(
    results: Sequence[TaskResult], meta: dict[str, Any], plots: dict[str, str] | None = None
) -> str:
    """The markdown report of several tasks; `plots` maps a task to its plot's path relative to the report."""
    plots = plots or {}
    model = meta.get("model", {})
    lines = ["# Evaluation report", ""]
    lines.append(
        f"Model: `{model.get('name_or_path')}`"
        + (f" + adapter `{model['adapter']}`" if model.get("adapter") else "")
    )
    settings = meta.get("settings", {})
    if settings:
        shown = ", ".join(f"{k}={v}" for k, v in settings.items() if k in _SHOWN_SETTINGS)
        lines.append(f"Settings: {shown}")
    lines.append("")
    lines += ["| task | mode | n | accuracy (%) | 95% CI |", "|---|---|---|---|---|"]
    for r in results:
        s = r.summary
        n = f"{s['n_scorable']} of {s['n']}" if s.get("unscorable") else s["n"]
        lines.append(f"| {r.task} | {r.mode} | {n} | {_pct(s['accuracy'])} | {_ci(s['accuracy_ci95'])} |")
    lines.append("")
    for r in results:
        lines += _task_section(r, plot_name=plots.get(r.task))
    return "\n".join(lines)


_SHOWN_SETTINGS = (
    "num_samples",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "seed",
    "limit",
    "dtype",
    "backend",
)


def plot_accuracy_by_level(result: TaskResult, path: str | Path) -> Path | None:
    """A bar chart of accuracy by `level` with 95% Wilson intervals; None when no problem has a level."""
    groups = [g for g in breakdown(result.problems, "level") if g["value"] is not None]
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{g['value']}\n(n={g['n']})" for g in groups]
    acc = [100 * g["accuracy"] for g in groups]
    err = [
        [100 * (g["accuracy"] - g["ci95"][0]) for g in groups],
        [100 * (g["ci95"][1] - g["accuracy"]) for g in groups],
    ]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.bar(labels, acc, yerr=err, capsize=4, color="#4C72B0")
    ax.set_xlabel("level")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{result.task}: accuracy by level (95% CI)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _json_value(value: Any) -> Any:
    """``json.dumps``'s fallback for what it cannot write: numpy and torch scalars and arrays as numbers,
    booleans and lists (``.item()`` / ``.tolist()``), so that readers (pandas, jq) get typed values;
    anything else (a path, ...) as its string."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()  # a 0-d array or tensor, or a numpy scalar: a Python number or bool
    return str(value)


def _dumps(data: Any, **kwargs: Any) -> str:
    return json.dumps(data, default=_json_value, **kwargs)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(_dumps(data, indent=2) + "\n")


def write_task_outputs(result: TaskResult, directory: str | Path, meta: dict[str, Any]) -> dict[str, Path]:
    """samples.jsonl, summary.json (with `meta`: model, settings), report.md and, for tasks with levels,
    accuracy_by_level.png in `directory`. Returns the written paths by kind."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"samples": directory / "samples.jsonl", "summary": directory / "summary.json"}
    with open(paths["samples"], "w") as f:
        for record in result.samples:
            f.write(_dumps(record) + "\n")
    _write_json(paths["summary"], {**result.summary, **meta})
    plot = plot_accuracy_by_level(result, directory / "accuracy_by_level.png")
    if plot is not None:
        paths["plot"] = plot
    paths["report"] = directory / "report.md"
    paths["report"].write_text(
        render_report([result], meta, {result.task: plot.name} if plot is not None else None) + "\n"
    )
    return paths


def write_outputs(
    results: Sequence[TaskResult], output_dir: str | Path, meta: dict[str, Any]
) -> dict[str, Any]:
    """Every task's folder plus the top-level summary.json and report.md (see the module docstring)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    written: dict[str, Any] = {}
    for result in results:
        paths = write_task_outputs(result, output_dir / result.task, meta)
        written[result.task] = paths
        if "plot" in paths:
            plots[result.task] = f"{result.task}/{paths['plot'].name}"
    summary = {**meta, "tasks": {r.task: r.summary for r in results}}
    _write_json(output_dir / "summary.json", summary)
    (output_dir / "report.md").write_text(render_report(results, meta, plots) + "\n")
    written["summary"] = output_dir / "summary.json"
    written["report"] = output_dir / "report.md"
    return written
