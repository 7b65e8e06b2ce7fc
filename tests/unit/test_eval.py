"""Evaluation: task loading and validation, extraction and scoring, metrics against closed forms, the
harness on canned completions, the report files, log-likelihood scoring against lm-eval, the config."""

import json
import math
from pathlib import Path

import pytest
import torch

from align.config import ConfigError, parse_config
from align.eval import (
    EvalConfig,
    choice_loglikelihoods,
    default_ks,
    encode_choices,
    evaluate_generate,
    evaluate_loglikelihood,
    get_task,
    majority_vote,
    mean_pass_at_k,
    normalize_answer,
    pass_at_k,
    wilson_interval,
)
from align.eval.report import breakdown, write_outputs
from align.generation import SamplingParams, build_rollout, tokenize_prompts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(name: str, **kw):
    task = get_task(name)
    return task, task.load(FIXTURES / f"{name}.jsonl", **kw)


# --------------------------------------------------------------------------------------------------
# Loading and bad input
# --------------------------------------------------------------------------------------------------


def test_fixtures_load_in_hub_schema():
    task, rows = _rows("math500")
    assert len(rows) == 6 and set(rows[0]) == {
        "problem",
        "solution",
        "answer",
        "subject",
        "level",
        "unique_id",
    }
    assert task.row_id(rows[0], 0) == "fixture/precalculus/1.json"
    task, rows = _rows("arc_easy")
    assert set(rows[0]) == {"id", "question", "choices", "answerKey"}
    assert [task.gold_index(r) for r in rows] == [1, 2, 0, 2]  # row 2 has digit labels "1".."4", gold "3"
    assert [len(task.choices(r)) for r in rows] == [4, 4, 3, 5]
    assert task.context(rows[1]) == "Question: Which of these is a source of light?\nAnswer:"
    task, rows = _rows("arc_challenge", limit=2)
    assert len(rows) == 2 and task.gold_index(rows[1]) == 0 and task.labels(rows[1]) == ["1", "2", "3", "4"]
    task, rows = _rows("gsm8k")
    assert [task.gold(r) for r in rows] == ["72", "1000", "3"]  # "#### 1,000" -> "1000"


def test_load_parquet_and_split_folder(tmp_path):
    from datasets import Dataset

    rows = [json.loads(line) for line in (FIXTURES / "arc_easy.jsonl").read_text().splitlines()]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    task = get_task("arc_easy")
    loaded = task.load(tmp_path, split="test")  # a folder in the layout `datasets` writes
    assert [r["id"] for r in loaded] == [r["id"] for r in rows]
    assert [task.gold_index(r) for r in loaded] == [1, 2, 0, 2]
    assert len(task.load(tmp_path / "test-00000-of-00001.parquet", limit=1)) == 1


def test_default_sources(monkeypatch):
    """Without a path each task loads its hub dataset (no network here: the loader is replaced)."""
    from datasets import Dataset

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, split, config))
        return Dataset.from_json(str(FIXTURES / ("arc_easy.jsonl" if "arc" in name else "math500.jsonl")))

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    get_task("math500").load(limit=1)
    get_task("arc_challenge").load(split="validation")
    get_task("arc_easy").load("someone/arc-copy")  # not a path: a hub name
    assert calls == [
        ("HuggingFaceH4/MATH-500", "test", None),
        ("allenai/ai2_arc", "validation", "ARC-Challenge"),
        ("someone/arc-copy", "test", "ARC-Easy"),
    ]
    # The project's own generated test set needs no network.
    rows = get_task("math").load(limit=2)
    assert len(rows) == 2 and {"problem", "answer", "level", "subject"} <= set(rows[0])


def test_bad_input_errors(tmp_path):
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text(json.dumps({"problem": "1+1?", "solution": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['answer'\]"):
        get_task("math500").load(no_answer)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        get_task("gsm8k").load(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        get_task("math500").load(tmp_path / "missing.jsonl")
    bad_key = tmp_path / "arc.jsonl"
    bad_key.write_text(
        json.dumps(
            {
                "id": "q1",
                "question": "?",
                "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                "answerKey": "C",
            }
        )
        + "\n"
    )
    with pytest.raises(ValueError, match=r"row 0 \(id 'q1'\).*answerKey 'C'"):
        get_task("arc_easy").load(bad_key)
    with pytest.raises(ValueError, match="limit"):
        get_task("math500").load(FIXTURES / "math500.jsonl", limit=0)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("mmlu")


# --------------------------------------------------------------------------------------------------
# Extraction and scoring: the task's score is the reward
# --------------------------------------------------------------------------------------------------


def test_math_extraction_and_scoring():
    task, rows = _rows("math500")
    polar, four, _, frac, _, unparsable = rows
    assert task.score(polar, r"So $(r,\theta) = \boxed{(3, \frac{\pi}{2})}$.") == 1.0
    assert task.score(frac, r"The sum is \boxed{\dfrac{63}{400}}") == 1.0
    assert task.score(frac, "The final answer is 63/400.") == 1.0  # fallback extraction, as in training
    assert task.extract(four, r"first \boxed{3}, no wait \boxed{4}") == "4"
    assert task.score(four, r"\boxed{5}") == 0.0
    # No answer at all: wrong, not a crash.
    assert task.extract(four, "I do not know.") is None
    assert task.score(four, "I do not know.") == 0.0
    # Unparsable gold: not applicable (None), and counted.
    assert task.score(unparsable, r"\boxed{triangle}") is None
    stats = task.pop_stats()
    assert stats["no_answer"] == 1 and stats["gold_unparsable"] == 1
    # The score is literally the training reward.
    from align.rewards import make_math_reward

    reward = make_math_reward()
    assert reward([""], [r"\boxed{4}"], answer=[four["answer"]]) == [task.score(four, r"\boxed{4}")]


def test_gsm8k_and_arc_scoring():
    task, rows = _rows("gsm8k")
    assert task.score(rows[1], r"4 boxes of 250 is \boxed{1000}") == 1.0
    assert task.score(rows[1], "So the school buys 1,000 pencils.") == 1.0
    assert task.score(rows[0], "#### 71") == 0.0
    arc, arows = _rows("arc_easy")
    digits = arows[1]  # labels "1".."4", gold "3"
    assert arc.score(digits, "The Sun gives light. Answer: 3") == 1.0
    assert arc.extract(digits, "Answer: 3") == "3"
    assert arc.score(digits, "Answer: B") == 0.0  # B is not a label of this row
    assert arc.extract(digits, "hmm") is None and arc.score(digits, "hmm") == 0.0
    assert arc.score(arows[0], "(B) carbon dioxide") == 1.0
    prompt = arc.build_prompt(digits)[0]["content"]
    assert "1. the Moon" in prompt and "(1, 2, 3 or 4)" in prompt


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def test_pass_at_k_matches_closed_form():
    for n in (1, 2, 5, 10, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # C(2000, 1000) ~ 2e600 overflows a float; the product form never forms it (1 - 1000/2000 here).
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert mean_pass_at_k([0, 2, 4], 4, 2) == pytest.approx((0 + (1 - 1 / 6) + 1) / 3)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    assert default_ks(1) == [1] and default_ks(8) == [1, 2, 4, 8] and default_ks(6) == [1, 2, 4, 6]


def test_majority_vote_and_normalisation():
    assert normalize_answer(r"\dfrac{1}{2}") == r"\frac{1}{2}"
    assert normalize_answer(r"\text{ 1,000.50 }") == "1000.5"
    assert normalize_answer(r"\left( 3, \frac{\pi}{2} \right)") == r"(3,\frac{\pi}{2})"
    assert normalize_answer(None) is None
    # "1,000" and "1000" vote together and win over "7"; its score is the first such sample's.
    assert majority_vote(["7", "1,000", None, "1000"], [0.0, 1.0, 0.0, 1.0]) == ("1,000", 1.0)
    assert majority_vote(["3", "4"], [0.0, 1.0]) == ("3", 0.0)  # a tie goes to the answer seen first
    assert majority_vote([None, None], [0.0, 0.0]) == (None, 0.0)


def test_wilson_interval():
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_interval(0.0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(1.0, 10)[1] == 1.0
    assert wilson_interval(0.3, 0) == (0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# The harness on canned completions
# --------------------------------------------------------------------------------------------------


class CannedGenerator:
    """A Generator that returns, for each prompt, the next `num_generations` canned completions."""

    def __init__(self, tokenizer, by_prompt: dict[str, list[str]]):
        self.tokenizer = tokenizer
        self.by_prompt = by_prompt
        self.calls: list[SamplingParams] = []

    def sync_weights(self, model):
        pass

    def generate(self, prompts, params):
        self.calls.append(params)
        G = params.num_generations
        texts = [t for p in prompts for t in self.by_prompt[p[-1]["content"]][:G]]
        eos = self.tokenizer.eos_token_id
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
        prompt_ids = [ids_ for ids_ in tokenize_prompts(self.tokenizer, prompts) for _ in range(G)]
        return build_rollout(
            prompts=prompts,
            num_generations=G,
            prompt_ids=prompt_ids,
            completion_ids=ids,
            logprobs=None,
            tokenizer=self.tokenizer,
            eos_ids=[eos],
            pad_id=eos,
        )


MATH_COMPLETIONS = [  # 4 samples per fixture row, in file order
    [r"\boxed{(3, \frac{\pi}{2})}", r"\boxed{(3, 0)}", r"\boxed{\left(3,\frac{\pi}{2}\right)}", "no idea"],
    [r"\boxed{4}", r"\boxed{4}", r"\boxed{4}", r"\boxed{4}"],
    [r"\boxed{6}", r"\boxed{8}", r"\boxed{6}", r"\boxed{7}"],
    ["I cannot parse this", "nor this", r"\boxed{}", "63/401 maybe"],
    [r"\boxed{2}", r"\boxed{3}", r"\boxed{3}", r"\boxed{2}"],
    [r"\boxed{triangle}", r"\boxed{square}", "???", r"\boxed{circle}"],
]


def _math_harness(tiny_tokenizer, **kw):
    task, rows = _rows("math500")
    by_prompt = {task.build_prompt(r)[-1]["content"]: c for r, c in zip(rows, MATH_COMPLETIONS)}
    generator = CannedGenerator(tiny_tokenizer, by_prompt)
    kw = {"num_samples": 4, "temperature": 1.0, "batch_size": 4, "progress": False, **kw}
    return task, rows, generator, evaluate_generate(task, rows, generator, **kw)


def test_generate_harness_metrics(tiny_tokenizer):
    task, rows, generator, result = _math_harness(tiny_tokenizer, seed=7)
    correct = [2, 4, 1, 0, 2]  # row 5's gold "???" cannot be parsed: it is left out of every metric
    s = result.summary
    assert s["n"] == 6 and s["n_scorable"] == 5 and s["num_samples"] == 4 and s["correct"] == sum(correct)
    assert s["accuracy"] == pytest.approx(sum(correct) / 20) == s["pass@1"]
    for k in (2, 4):
        expected = sum(1 - math.comb(4 - c, k) / math.comb(4, k) for c in correct) / 5
        assert s[f"pass@{k}"] == pytest.approx(expected)
    # maj@4: row 0 ("(3,pi/2)" twice once \left...\right is normalised away: right), row 1 right,
    # row 2 "6" (2 votes) wrong, row 3 only "63/401" votes: wrong, row 4 tie 2-2 -> "2" seen first: right.
    assert s["maj@4"] == pytest.approx(3 / 5)
    assert s["no_answer"] == 5  # "no idea", the three unparsable texts of row 3, "???"
    assert s["unscorable"] == 1 and s["unscorable_indices"] == [5]
    assert s["verifier"]["gold_unparsable"] == 4  # the reward's own count: one per sample
    assert s["timeouts"] == 0
    assert s["accuracy_ci95"] == pytest.approx(list(wilson_interval(s["accuracy"], 5)), abs=1e-6)
    assert s["ci_method"] == "wilson (sample size = scorable problems)"
    unscorable = result.samples[20:]
    assert all(rec["score"] is None and rec["correct"] is None for rec in unscorable)
    assert result.problems[5]["scorable"] is False and result.problems[5]["accuracy"] is None
    assert [p.seed for p in generator.calls] == [7, 8]  # batch b uses seed + b
    # Samples: one per (problem, sample) in dataset order, with the report's columns.
    assert len(result.samples) == 24
    first = result.samples[0]
    assert (first["index"], first["sample"], first["gold"], first["correct"]) == (
        0,
        0,
        r"\left( 3, \frac{\pi}{2} \right)",
        True,
    )
    assert (
        first["extracted"] == r"(3, \frac{\pi}{2})"
        and first["subject"] == "Precalculus"
        and first["level"] == 2
    )
    assert result.samples[12]["extracted"] is None and result.samples[12]["correct"] is False
    assert result.samples[15]["extracted"] == "63/401" and result.samples[15]["correct"] is False


def _constructed_harness(tiny_tokenizer, rows, completions):
    task = get_task("math500")
    by_prompt = {task.build_prompt(r)[-1]["content"]: c for r, c in zip(rows, completions)}
    return evaluate_generate(task, rows, CannedGenerator(tiny_tokenizer, by_prompt), progress=False)


def test_unscorable_gold_is_left_out_of_the_metrics(tiny_tokenizer, tmp_path):
    """A row whose gold cannot be parsed is not a wrong answer: accuracy = correct / scorable problems (1/2
    here, not 1/3), with the interval, pass@k and maj@k over those; the row is counted and listed."""
    rows = [
        {"problem": "What is 2 + 2?", "answer": "4", "level": 1},
        {"problem": "Which shape | has three sides?\nName it.", "answer": "???", "level": 1},
        {"problem": "What is 3 + 4?", "answer": "7", "level": 2},
    ]
    result = _constructed_harness(
        tiny_tokenizer, rows, [[r"\boxed{4}"], [r"\boxed{triangle}"], [r"\boxed{8}"]]
    )
    s = result.summary
    assert (s["n"], s["n_scorable"], s["unscorable"], s["unscorable_indices"]) == (3, 2, 1, [1])
    assert s["correct"] == 1 and s["accuracy"] == 0.5 == s["pass@1"] == s["maj@1"]
    assert s["accuracy_ci95"] == pytest.approx(list(wilson_interval(0.5, 2)), abs=1e-6)
    assert [rec["correct"] for rec in result.samples] == [True, None, False]

    meta = {"model": {"name_or_path": "canned", "adapter": None}, "settings": {}}
    write_outputs([result], tmp_path, meta)
    report = (tmp_path / "math500" / "report.md").read_text()
    assert "### Unscorable gold answers (left out of the metrics)" in report
    # index, id (the index: these rows have none), the question's start (pipes escaped), the gold as written
    assert "| 1 | 1 | Which shape \\| has three sides? Name it. | `` ??? `` |" in report
    assert "unscorable gold: 1 (left out of the metrics, which are over 2 problems)" in report
    assert "| 1 | 1 | 100.0 |" in report  # by level: level 1 holds only the scorable row 0
    assert "| math500 | generate | 2 of 3 | 50.0 |" in (tmp_path / "report.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())["tasks"]["math500"]
    assert summary["unscorable"] == 1 and summary["accuracy"] == 0.5


def test_no_scorable_gold_gives_no_accuracy(tiny_tokenizer, tmp_path, capsys):
    from align.eval.runner import _print_result

    rows = [{"problem": "Name a shape.", "answer": "???"}]
    result = _constructed_harness(tiny_tokenizer, rows, [[r"\boxed{circle}"]])
    s = result.summary
    assert s["accuracy"] is None and s["accuracy_ci95"] is None and s["pass@1"] is None and s["maj@1"] is None
    assert s["n_scorable"] == 0 and s["unscorable"] == 1 and math.isnan(result.accuracy)
    write_outputs([result], tmp_path, {"model": {"name_or_path": "canned"}, "settings": {}})
    assert "| accuracy (pass@1) | - | - |" in (tmp_path / "report.md").read_text()
    _print_result("math500", s)
    assert "none of the 1 problems has a scorable gold answer" in capsys.readouterr().out


def test_heldout_accuracy_leaves_unscorable_rows_out(tiny_tokenizer):
    """The in-training check counts as `align eval` does: a row whose gold cannot be parsed is not wrong."""
    from align.eval.heldout import heldout_accuracy
    from align.rewards import make_math_reward

    dataset = [
        {"prompt": [{"role": "user", "content": q}], "answer": a}
        for q, a in [("2 + 2?", "4"), ("Name a shape.", "???"), ("3 + 4?", "7")]
    ]
    generator = CannedGenerator(
        tiny_tokenizer,
        {"2 + 2?": [r"\boxed{4}"], "Name a shape.": [r"\boxed{circle}"], "3 + 4?": [r"\boxed{8}"]},
    )
    res = heldout_accuracy(generator, dataset, make_math_reward())
    assert (res["n"], res["unscorable"], res["correct"], res["accuracy"]) == (3, 1, 1, 0.5)
    res = heldout_accuracy(generator, dataset[1:2], make_math_reward())
    assert res["unscorable"] == 1 and math.isnan(res["accuracy"])


def test_samples_jsonl_writes_json_types(tiny_tokenizer, tmp_path):
    """Booleans and numbers are JSON booleans and numbers (pandas reads typed columns), numpy and torch
    scalars included; an unscorable sample's correct and score are null."""
    np = pytest.importorskip("numpy")
    _, _, _, result = _math_harness(tiny_tokenizer)
    result.samples[0].update(
        level=np.int64(2), score=np.float32(1.0), correct=np.bool_(True), completion_tokens=torch.tensor(5)
    )
    result.summary["seconds"] = np.float64(1.5)
    write_outputs([result], tmp_path, {"model": {"name_or_path": "canned"}, "settings": {}})
    lines = (tmp_path / "math500" / "samples.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for rec in records:
        assert type(rec["index"]) is int and type(rec["sample"]) is int and type(rec["level"]) is int
        assert type(rec["truncated"]) is bool and type(rec["completion_tokens"]) is int
        assert (rec["correct"], rec["score"]) == (None, None) or (
            type(rec["correct"]) is bool and type(rec["score"]) is float
        )
    assert (
        '"correct": true' in lines[0] and '"score": 1.0' in lines[0] and '"completion_tokens": 5' in lines[0]
    )
    assert '"correct": null, "score": null' in lines[20]  # row 5: its gold cannot be parsed
    assert json.loads((tmp_path / "math500" / "summary.json").read_text())["seconds"] == 1.5
    pd = pytest.importorskip("pandas")
    frame = pd.read_json(tmp_path / "math500" / "samples.jsonl", lines=True)
    assert frame["index"].dtype == "int64" and frame["truncated"].dtype == bool
    # null for an unscorable sample makes pandas' mean of `correct` the summary's accuracy (9 of 20)
    assert frame["score"].dtype == "float64" and frame["correct"].mean() == pytest.approx(9 / 20)


def test_generate_harness_counts_timeouts(tiny_tokenizer, monkeypatch):
    task, rows = _rows("math500", limit=2)
    rows = [
        rows[1]
    ] * 2  # gold 4: sympy compares the tower with it (row 0's tuple gold is told apart at once)
    task.reward.timeout_s = 0.5
    # A power tower: sympy computes it in one C call, which only killing the worker process stops.
    by_prompt = {task.build_prompt(r)[-1]["content"]: [r"\boxed{9^{9^{9^{9}}}}"] for r in rows}
    result = evaluate_generate(task, rows, CannedGenerator(tiny_tokenizer, by_prompt), progress=False)
    assert result.summary["timeouts"] == 2 and result.summary["accuracy"] == 0.0
    assert all(rec["correct"] is False and rec["score"] == 0.0 for rec in result.samples)


def test_generate_harness_errors(tiny_tokenizer):
    task, rows = _rows("math500", limit=1)
    gen = CannedGenerator(tiny_tokenizer, {})
    with pytest.raises(ValueError, match="temperature > 0"):
        evaluate_generate(task, rows, gen, num_samples=2, temperature=0.0)
    with pytest.raises(ValueError, match="no rows"):
        evaluate_generate(task, [], gen)
    with pytest.raises(ValueError, match="pass@k"):
        evaluate_generate(task, rows, gen, num_samples=2, temperature=1.0, ks=[4])


def test_report_files(tiny_tokenizer, tmp_path):
    _, _, _, result = _math_harness(tiny_tokenizer)
    levels = {g["value"]: g for g in breakdown(result.problems, "level")}
    assert levels[1]["n"] == 2 and levels[1]["accuracy"] == pytest.approx((1.0 + 0.25) / 2)
    meta = {"model": {"name_or_path": "canned", "adapter": None}, "settings": {"num_samples": 4}}
    write_outputs([result], tmp_path, meta)
    task_dir = tmp_path / "math500"
    lines = (task_dir / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 24
    assert {"prompt", "completion", "extracted", "gold", "correct"} <= set(json.loads(lines[0]))
    summary = json.loads((task_dir / "summary.json").read_text())
    assert summary["model"]["name_or_path"] == "canned" and summary["pass@4"] == result.summary["pass@4"]
    top = json.loads((tmp_path / "summary.json").read_text())
    assert top["tasks"]["math500"]["accuracy"] == result.summary["accuracy"]
    report = (tmp_path / "report.md").read_text()
    assert "### By subject" in report and "### By level" in report and "| Number Theory | 1 |" in report
    assert "math500/accuracy_by_level.png" in report
    assert (task_dir / "accuracy_by_level.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------
# Log-likelihood multiple choice
# --------------------------------------------------------------------------------------------------


def _naive_loglikelihood(model, context, continuation):
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(logprobs[len(context) - 1 + t, tok].item() for t, tok in enumerate(continuation))


def test_choice_loglikelihoods_match_one_forward_per_choice(tiny_model, tiny_tokenizer):
    questions = [
        (
            "Question: Which gas do plants take in?\nAnswer:",
            [" carbon dioxide", " oxygen", " a very long answer here"],
        ),
        ("Question: 2 + 2?\nAnswer:", [" 4", " 5"]),
        # Choices that differ only in their last token share one row of the continuation pass.
        ("Question: 40 + 5?\nAnswer:", [" 45", " 47", " 123", " a bat", " a cow", " 45"]),
        ("Question: Pick one of these five options, please.\nAnswer: ", ["A", "B", "C", "D", "E"]),
    ]
    requests = [encode_choices(tiny_tokenizer, c, k) for c, k in questions]
    # The trailing space of the last context moved into its continuations, as lm-eval does.
    assert (
        requests[-1].context
        == tiny_tokenizer("Question: Pick one of these five options, please.\nAnswer:")["input_ids"]
    )
    for batch_size in (1, 4, 64):  # one question per batch, mixed batches, everything at once
        got = choice_loglikelihoods(
            tiny_model, requests, pad_id=tiny_tokenizer.pad_token_id, batch_size=batch_size
        )
        for r, values in zip(requests, got):
            expected = [_naive_loglikelihood(tiny_model, r.context, c) for c in r.continuations]
            assert values == pytest.approx(expected, abs=1e-4)


def test_loglikelihoods_match_lm_eval_hflm(tiny_model, tiny_tokenizer):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    task, rows = _rows("arc_easy")
    lm = HFLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, batch_size=8, device="cpu")
    instances = [
        Instance(request_type="loglikelihood", doc=row, arguments=(task.context(row), " " + choice), idx=j)
        for row in rows
        for j, choice in enumerate(task.choices(row))
    ]
    reference = [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    result = evaluate_loglikelihood(task, rows, tiny_model, tiny_tokenizer, batch_size=5, progress=False)
    ours = [ll for rec in result.samples for ll in rec["loglikelihoods"]]
    assert ours == pytest.approx(reference, abs=1e-4)


def test_loglikelihood_acc_and_acc_norm(tiny_model, tiny_tokenizer, monkeypatch):
    task, rows = _rows("arc_easy")
    # Fixed log-likelihoods: acc picks the largest sum, acc_norm the largest sum per character.
    fixed = [
        [-9.0, -12.0, -8.0, -20.0],  # choices: oxygen(6) carbon dioxide(14) nitrogen(8) helium(6)
        [-5.0, -6.0, -4.5, -7.0],  # the Moon(8) a mirror(8) the Sun(7) a window(8)
        [-1.0, -2.0, -3.0],
        [-4.0, -5.0, -6.0, -6.0, -4.5],  # ruler(5) balance(7) thermometer(11) stopwatch(9) magnet(6)
    ]
    monkeypatch.setattr("align.eval.harness.choice_loglikelihoods", lambda *a, **k: fixed)
    result = evaluate_loglikelihood(task, rows, tiny_model, tiny_tokenizer, progress=False)
    # acc:      nitrogen (wrong), the Sun (right), solid (right), ruler (wrong)
    # acc_norm: -12/14 carbon dioxide (right), -5/8 the Moon (wrong), -1/5 solid (right),
    #           -6/11 thermometer (right)
    assert [s["extracted"] for s in result.samples] == ["C", "3", "A", "A"]
    assert [s["extracted_norm"] for s in result.samples] == ["B", "1", "A", "C"]
    assert result.summary["acc"] == 0.5 and result.summary["acc_norm"] == 0.75
    assert result.summary["accuracy"] == result.summary["acc"]


def test_loglikelihood_mode_needs_choices(tiny_model, tiny_tokenizer):
    task, rows = _rows("math500", limit=1)
    with pytest.raises(ValueError, match="no multiple-choice form"):
        evaluate_loglikelihood(task, rows, tiny_model, tiny_tokenizer)


# --------------------------------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------------------------------


def test_eval_config_parsing():
    cfg = parse_config(
        EvalConfig,
        [
            "--task",
            "math500,arc_easy",
            "--model",
            "some/model",
            "--data_path",
            "arc_easy=a.jsonl",
            "--limit",
            "5",
        ],
    )
    assert cfg.tasks == ["math500", "arc_easy"] and cfg.model_name_or_path == "some/model"
    assert cfg.data_path_by_task() == {"arc_easy": "a.jsonl"}
    assert cfg.task_mode("math500") == "generate" and cfg.task_mode("arc_easy") == "loglikelihood"
    cfg = parse_config(
        EvalConfig, ["--task", "arc_challenge", "--mode", "generate", "--data_path", "x.jsonl"]
    )
    assert (
        cfg.data_path_by_task() == {"arc_challenge": "x.jsonl"}
        and cfg.task_mode("arc_challenge") == "generate"
    )
    for argv, message in [
        (["--num_samples", "2.0", "--temperature", "1"], "num_samples: expected int"),
        (["--task", "mmlu"], "tasks must be one of"),
        (["--num_samples", "4"], "temperature > 0"),
        (["--task", "math500", "--mode", "loglikelihood"], "not available for task 'math500'"),
        (["--task", "math500", "gsm8k", "--data_path", "x.jsonl"], "TASK=PATH"),
        (["--num_samples", "2", "--temperature", "1", "--pass_k", "4"], "pass_k"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config(EvalConfig, argv)


def test_eval_config_types_checked_when_built_in_python():
    """EvalConfig(...) in Python goes through check_types as parse_config's values do."""
    with pytest.raises(ConfigError, match=r"num_samples: expected int, got 2\.0"):
        EvalConfig(num_samples=2.0, temperature=1.0)
    with pytest.raises(ConfigError, match=r"temperature: expected finite float, got inf"):
        EvalConfig(temperature=float("inf"))
    with pytest.raises(ConfigError, match=r"limit: expected int or None, got '5'"):
        EvalConfig(limit="5")  # Python values are taken as they are, not read from strings
    with pytest.raises(ConfigError, match="mode must be one of"):
        EvalConfig(mode="sample")
    cfg = EvalConfig(tasks="math500", pass_k=2, num_samples=2, temperature=1)
    assert cfg.tasks == ["math500"] and cfg.pass_k == [2]
    assert cfg.temperature == 1.0 and type(cfg.temperature) is float
