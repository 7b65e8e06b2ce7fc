"""align report on run directories written by hand: sections, two runs overlaid, the monitors table, the
samples browser's rows, evaluation results, the policy map, bad input, and a page that needs no network."""

import json
import re

import pytest

pytest.importorskip("plotly")

from align.cli import main as align_main  # noqa: E402
from align.errors import UserError  # noqa: E402
from align.report import build_report, load_run, write_report  # noqa: E402


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _grpo_run(path, *, reward_scale=1.0, fire_at=(3,)):
    path.mkdir(parents=True)
    rows = []
    for step in range(1, 6):
        rows.append({
            "step": step, "reward/mean": 0.1 * step * reward_scale, "reward/math/mean": 0.1 * step,
            "reward/format/mean": 0.5, "reward/math/no_answer": 2.0, "kl": 0.01 * step, "entropy": 2.0 - 0.1 * step,
            "clip/fraction": 0.05, "completions/mean_length": 40.0 + step, "reward/zero_std_group_fraction": 0.25,
            "throughput/completion_tokens_per_second": 300.0, "prompts/skipped": 0.0, "eval/accuracy": 0.2,
            "monitor/kl_spike/firing": 1.0 if step in fire_at else 0.0,
            "monitor/kl_spike/fired": float(sum(s <= step for s in fire_at)),
            "monitor/repetition/firing": 0.0, "monitor/repetition/fired": 0.0,
        })  # fmt: skip
    _jsonl(path / "metrics.jsonl", rows)
    samples = []
    for step in (1, 2):
        for i, (text, reward) in enumerate([("the answer is \\boxed{4}", 1.0), ("banana", 0.0), ("maybe 5", 0.2),
                                            ("I think 4", 0.5)]):  # fmt: skip
            samples.append({"step": step, "prompt": [{"role": "user", "content": "What is 2+2?"}], "completion": text,
                            "group": 0, "reward": reward, "rewards": {"math": reward, "format": 1.0}, "answer": "4",
                            "i": i})  # fmt: skip
    _jsonl(path / "completions.jsonl", samples)
    (path / "config.yaml").write_text("model_name_or_path: tiny\nlearning_rate: 1.0e-05\n")
    (path / "summary.json").write_text(
        json.dumps({"heldout_accuracy_before": 0.1, "heldout_accuracy_after": 0.2})
    )
    return path


def _plot_traces(page, title_part):
    """Trace names of the plotly figures whose layout title contains ``title_part``."""
    names = []
    for m in re.finditer(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{", page, re.S):
        data, layout = m.group(1), m.group(2)
        if title_part in layout:
            names += [json.loads(f'"{n}"') for n in re.findall(r"\"name\":\"([^\"]*)\"", data)]
    return names


def test_sections_and_self_contained(tmp_path):
    run = _grpo_run(tmp_path / "grpo")
    out = write_report([run], tmp_path / "r" / "report.html")
    page = out.read_text()
    for section in ("runs", "curves", "monitors", "samples"):
        assert f"<section id='{section}'>" in page, section
    assert "<section id='evaluation'>" not in page and "<section id='classic'>" not in page
    assert "No data for: Evaluation, Verifier agreement, Classic RL." in page
    for heading in ("Reward", "Held-out evaluation", "KL", "Entropy", "Clipping", "Completions",
                    "Zero-variance groups", "Throughput and time"):  # fmt: skip
        assert f"<h3>{heading}</h3>" in page, heading
    # The total reward and each function's mean share one figure; an all-zero counter is a line of text.
    assert {"reward/mean", "reward/math/mean", "reward/format/mean"} <= set(
        _plot_traces(page, "reward: total")
    )
    assert "Always 0: prompts/skipped." in page
    # Self-contained: plotly.js inline, no script loaded from anywhere.
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"<link[^>]*\bhref=[\"']?https?:", page)  # no stylesheet from the network either
    assert page.count("<script type='text/javascript'>") == 1  # plotly.js once for all figures


def test_two_runs_overlay(tmp_path):
    a = _grpo_run(tmp_path / "a" / "run", reward_scale=1.0)
    b = _grpo_run(tmp_path / "b" / "run", reward_scale=2.0, fire_at=())
    page = build_report([load_run(a, "a"), load_run(b, "b")])
    # One trace per run on the same axes (per key where a figure holds several keys).
    assert _plot_traces(page, '"text":"kl"') == ["a", "b"]
    assert {"a: reward/mean", "b: reward/mean"} <= set(_plot_traces(page, "reward: total"))
    # Names made distinct from the directories when both are called "run".
    out = write_report([a, b], tmp_path / "two.html")
    assert "a/run" in out.read_text() and "b/run" in out.read_text()


def test_monitors_table(tmp_path):
    run = _grpo_run(tmp_path / "grpo", fire_at=(2, 4))
    page = build_report([load_run(run)])
    section = page.split("<section id='monitors'>")[1].split("</section>")[0]
    rows = re.findall(
        r"<tr><td>(.*?)</td><td>.*?</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>",
        section,
    )
    by_name = {r[0]: r[1:] for r in rows}
    assert by_name["kl_spike"] == ("<span class='fired'>fired</span>", "2", "2", "2, 4")
    assert by_name["repetition"] == ("quiet", "0", "-", "-")
    assert "monitor firings" in section  # the timeline with one marker per firing
    quiet = build_report([load_run(_grpo_run(tmp_path / "quiet", fire_at=()))])
    assert "No monitor fired." in quiet


def test_samples_browser(tmp_path):
    run = _grpo_run(tmp_path / "grpo")
    page = build_report([load_run(run)])
    rows = re.findall(
        r"<tr class='sample (\w+)'><td>grpo</td><td>(\d+)</td><td>\w+</td><td>([^<]*)</td>(.*?)</tr>", page
    )
    # Per step and group: best, worst, one random other, with their rewards and per-function scores.
    assert [(r[0], r[1]) for r in rows] == [("best", "1"), ("worst", "1"), ("random", "1"),
                                            ("best", "2"), ("worst", "2"), ("random", "2")]  # fmt: skip
    assert rows[0][2] == "1" and "boxed{4}" in rows[0][3] and "math: 1" in rows[0][3]
    assert rows[1][2] == "0" and "banana" in rows[1][3]
    assert rows[2][2] in ("0.2", "0.5")
    assert "id='sample-filter'" in page and "addEventListener('input'" in page
    # Text is escaped, so a completion cannot inject markup.
    evil = tmp_path / "evil"
    evil.mkdir()
    _jsonl(evil / "metrics.jsonl", [{"step": 1, "reward/mean": 0.0}])
    _jsonl(
        evil / "completions.jsonl",
        [{"step": 1, "prompt": "p", "completion": "<script>alert(1)</script>", "reward": 0}],
    )
    assert "<script>alert(1)" not in build_report([load_run(evil)])


def test_environment_episodes_in_samples(tmp_path):
    run = tmp_path / "env"
    run.mkdir()
    _jsonl(run / "metrics.jsonl", [{"step": 1, "env/return": 0.5}])
    eps = [{"step": 1, "reset_seed": 7, "messages": [{"role": "user", "content": f"grid {i}"},
            {"role": "assistant", "content": "RIGHT"}], "return": float(i), "turns": 1, "success": i == 1}
           for i in range(2)]  # fmt: skip
    _jsonl(run / "completions.jsonl", eps)
    page = build_report([load_run(run)])
    assert "[assistant] RIGHT" in page and "<tr class='sample best'>" in page and "success: True" in page


def test_evaluation_and_classic(tmp_path):
    ev = tmp_path / "eval"
    (ev / "math500").mkdir(parents=True)
    task = {"task": "math500", "mode": "generate", "n": 4, "accuracy": 0.5, "accuracy_ci95": [0.15, 0.85],
            "pass@1": 0.5, "pass@2": 0.75, "maj@2": 0.5}  # fmt: skip
    (ev / "summary.json").write_text(json.dumps({"tasks": {"math500": task}}))
    _jsonl(ev / "math500" / "samples.jsonl", [{"index": i, "sample": 0, "level": 1 + i % 2, "correct": i < 2,
                                               "score": float(i < 2)} for i in range(4)])  # fmt: skip
    tab = tmp_path / "tab"
    (tab / "model").mkdir(parents=True)
    _jsonl(
        tab / "metrics.jsonl",
        [{"step": s, "episode/return": s / 10, "epsilon": 1 - s / 10} for s in range(1, 4)],
    )
    (tab / "config.yaml").write_text("env_id: FrozenLake-v1\nmethod: q_learning\n")
    (tab / "summary.json").write_text(
        json.dumps({"algorithm": "q_learning", "eval": {"eval/success_rate": 0.7}})
    )
    import numpy as np
    from safetensors.numpy import save_file

    q = np.zeros((16, 4), dtype=np.float32)
    q[:, 2] = np.linspace(0.1, 0.9, 16)
    save_file({"q": q}, str(tab / "model" / "model.safetensors"))
    page = build_report([load_run(ev), load_run(tab)])
    evaluation = page.split("<section id='evaluation'>")[1].split("</section>")[0]
    assert "pass@2 (%)" in evaluation and "<td>75.0</td>" in evaluation and "[15.0, 85.0]" in evaluation
    assert "math500 accuracy (%) by level" in evaluation
    classic = page.split("<section id='classic'>")[1].split("</section>")[0]
    classic = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), classic)  # plotly's JSON
    assert "<h3>Episode returns</h3>" in classic and "eval/success_rate" in classic
    assert "greedy policy" in classic and "→" in classic and "<b>H</b>" in classic and "<b>G</b>" in classic


def test_bad_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: not a run directory"):
        write_report([tmp_path / "empty"], tmp_path / "r.html")
    assert align_main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty: not a run directory (no metrics.jsonl" in err[0]
    assert not (tmp_path / "r.html").exists()
    assert align_main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")]) == 2
    assert "missing: not a run directory" in capsys.readouterr().err


def test_cli_writes_the_page(tmp_path, capsys):
    run = _grpo_run(tmp_path / "grpo")
    assert align_main(["report", str(run), "-o", str(tmp_path / "out.html"), "--title", "my runs"]) == 0
    assert "report written to" in capsys.readouterr().out
    assert "<title>my runs</title>" in (tmp_path / "out.html").read_text()
