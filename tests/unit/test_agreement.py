r"""The verifier-agreement table (align.eval.agreement) on hand-written samples.

Verdicts per sample (train reward, eval scorer, lm-eval):
  frac    \boxed{\frac{3}{4}}, gold 0.75       1 1 0  math-verify: equal values; lm-eval: strings differ
  minerva boxed 7, "Final Answer ... $8$", gold 7  1 1 0  lm-eval reads the Final Answer line, train the box
  minerva8 the same completion, gold 8          0 0 1
  badgold \boxed{3}, gold "\frac{" (unparsable)  - - 0  math-verify: not scorable; lm-eval: wrong
  right   \boxed{12}, gold 12                   1 1 1
  wrong   \boxed{13}, gold 12                   0 0 0
  final   "Final Answer ... $12$", gold 12      1 1 1  both find the unboxed answer
  stale   \boxed{5}, gold 5, recorded wrong     1 0 1  the eval row is the verdict samples.jsonl recorded
"""

from __future__ import annotations

import json
import sys

import pytest

from align.eval.agreement import AgreementTable, LmEvalMath, verifier_agreement, write_agreement

MINERVA = "So the total is \\boxed{7}.\nFinal Answer: The final answer is $8$. I hope it is correct."


def _samples() -> list[dict]:
    rows = [
        ("frac", r"so x = \boxed{\frac{3}{4}}", "0.75", True),
        ("minerva", MINERVA, "7", True),
        ("minerva8", MINERVA, "8", False),
        ("badgold", r"\boxed{3}", r"\frac{", None),
        ("right", r"\boxed{12}", "12", ...),  # ...: no recorded verdict, the task's scorer runs
        ("wrong", r"\boxed{13}", "12", ...),
        ("final", "Final Answer: The final answer is $12$. I hope it is correct.", "12", ...),
        ("stale", r"\boxed{5}", "5", False),
    ]
    out = []
    for i, (name, completion, gold, correct) in enumerate(rows):
        rec = {"task": "math500", "index": i, "id": name, "sample": 0, "completion": completion, "gold": gold}
        if correct is not ...:
            rec.update(correct=correct, extracted="recorded")
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def table() -> AgreementTable:
    return verifier_agreement(_samples(), task="math500", max_examples=5)


def test_rates_and_counts(table: AgreementTable) -> None:
    assert table.n == 8
    assert table.agree_counts == {
        "train_vs_eval": 7,
        "train_vs_lm_eval": 4,
        "eval_vs_lm_eval": 3,
        "all_three": 3,
    }
    assert table.agreement == {"train_vs_eval": 7 / 8, "train_vs_lm_eval": 4 / 8, "eval_vs_lm_eval": 3 / 8,
                               "all_three": 3 / 8}  # fmt: skip
    assert table.scored == {"train": 7, "eval": 7, "lm_eval": 8}
    assert table.accuracy == {"train": 5 / 7, "eval": 4 / 7, "lm_eval": 4 / 8}


def test_every_disagreement_is_listed(table: AgreementTable) -> None:
    assert table.patterns == {
        "train=1 eval=1 lm_eval=0": 2,
        "train=0 eval=0 lm_eval=1": 1,
        "train=- eval=- lm_eval=0": 1,
        "train=1 eval=1 lm_eval=1": 2,
        "train=0 eval=0 lm_eval=0": 1,
        "train=1 eval=0 lm_eval=1": 1,
    }
    assert set(table.disagreements()) == set(table.examples)
    ids = {p: [ex["id"] for ex in exs] for p, exs in table.examples.items()}
    assert ids == {
        "train=1 eval=1 lm_eval=0": ["frac", "minerva"],
        "train=0 eval=0 lm_eval=1": ["minerva8"],
        "train=- eval=- lm_eval=0": ["badgold"],
        "train=1 eval=0 lm_eval=1": ["stale"],
    }
    frac, minerva = table.examples["train=1 eval=1 lm_eval=0"]
    assert frac["train"] == {"verdict": True, "answer": r"\frac{3}{4}"}
    assert frac["lm_eval"] == {"verdict": False, "answer": r"\frac{3}{4}"}  # extracted alike, judged apart
    assert frac["gold"] == "0.75" and frac["completion"] == r"so x = \boxed{\frac{3}{4}}"
    assert minerva["train"]["answer"] == "7" and minerva["lm_eval"]["answer"] == "$8$"  # box vs Final Answer
    (bad,) = table.examples["train=- eval=- lm_eval=0"]
    assert (
        bad["train"]["verdict"] is None
        and bad["eval"]["verdict"] is None
        and bad["lm_eval"]["verdict"] is False
    )
    (stale,) = table.examples["train=1 eval=0 lm_eval=1"]
    assert stale["eval"] == {"verdict": False, "answer": "recorded"}  # as samples.jsonl recorded it


def test_max_examples_caps_the_list() -> None:
    samples = [
        {"index": i, "completion": r"\boxed{\frac{3}{4}}", "gold": "0.75", "correct": True} for i in range(4)
    ]
    table = verifier_agreement(samples, max_examples=2)
    assert table.patterns == {"train=1 eval=1 lm_eval=0": 4}
    assert [ex["index"] for ex in table.examples["train=1 eval=1 lm_eval=0"]] == [0, 1]


def test_all_agree() -> None:
    samples = [
        {"completion": r"\boxed{12}", "gold": "12"},
        {"completion": r"\boxed{13}", "gold": "12"},
        {
            "completion": "Final Answer: The final answer is $\\frac{1}{3}$. I hope it is correct.",
            "gold": r"\frac13",
        },
    ]
    table = verifier_agreement(samples)
    assert table.agreement == dict.fromkeys(
        ["train_vs_eval", "train_vs_lm_eval", "eval_vs_lm_eval", "all_three"], 1.0
    )
    assert table.examples == {} and table.disagreements() == {}
    assert "All verifiers agree on every sample." in table.to_markdown()


def test_renderings_and_json_round_trip(table: AgreementTable, tmp_path) -> None:
    md = table.to_markdown()
    assert "| all three | 3/8 | 37.5% |" in md
    assert "| train reward vs eval scorer | 7/8 | 87.5% |" in md
    for label in ("train reward right, eval scorer right, lm-eval wrong", "train reward n/a, eval scorer n/a, lm-eval wrong",
                  "train reward wrong, eval scorer wrong, lm-eval right", "train reward right, eval scorer wrong, lm-eval right"):  # fmt: skip
        assert f"**{label}**" in md
    line = table.one_line()
    assert line.startswith("math500 verifier agreement on 8 samples: train reward vs eval scorer 87.5%")
    path = write_agreement(table, tmp_path / "math500" / "agreement.json")
    again = AgreementTable.from_dict(json.loads(path.read_text()))
    assert again == table
    html = again.to_html()
    assert html.count("<table>") == 2 + 4 and "\\frac{3}{4}" in html  # rates, accuracy, 4 disagreements


def test_lm_eval_missing_is_a_clear_import_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match="pip install"):
        LmEvalMath()


def test_lm_eval_without_boxed_fallback_reads_only_the_final_answer_line() -> None:
    lm = LmEvalMath(boxed_fallback=False)
    assert lm.verdict(r"\boxed{12}", "12") == (False, None)
    assert lm.verdict(MINERVA, "8") == (True, "$8$")
    assert LmEvalMath().verdict(r"\boxed{12}", "12") == (True, "12")


def test_align_eval_writes_agreement_and_report_shows_it(tmp_path, capsys) -> None:
    pytest.importorskip("plotly")
    from align.eval.harness import TaskResult
    from align.eval.runner import _write_agreements
    from align.report import build_report, load_run

    out = tmp_path / "eval"
    samples = _samples()[:2]
    (out / "math500").mkdir(parents=True)
    summary = {"task": "math500", "mode": "generate", "n": 2, "accuracy": 1.0, "accuracy_ci95": [0.3, 1.0]}
    (out / "summary.json").write_text(json.dumps({"tasks": {"math500": summary}}))
    arc = TaskResult("arc_easy", "loglikelihood", {}, [{"completion": "A"}])  # not a math task: no table
    _write_agreements({"math500": TaskResult("math500", "generate", summary, samples), "arc_easy": arc}, out)
    assert (
        "math500 verifier agreement on 2 samples: train reward vs eval scorer 100.0%"
        in capsys.readouterr().out
    )
    assert not (out / "arc_easy").exists()
    data = json.loads((out / "math500" / "agreement.json").read_text())
    assert data["agree_counts"]["train_vs_lm_eval"] == 0 and data["task"] == "math500"
    page = build_report([load_run(out)])
    section = page.split("<section id='agreement'>")[1].split("</section>")[0]
    assert "<h2>Verifier agreement</h2>" in section and "eval / math500 (2 samples)" in section
    assert "train reward right, eval scorer right, lm-eval wrong: 2" in section
    # a run directory's own agreement.json is shown too; none at all: no section
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert "<section id='agreement'>" not in build_report([load_run(run)])
    (run / "agreement.json").write_text(json.dumps(data))
    assert "<h3>run (2 samples)</h3>" in build_report([load_run(run)])
