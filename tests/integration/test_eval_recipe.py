"""`recipes/eval.py` and `align eval` end to end on a tiny model saved to disk: several tasks in one call,
both ARC modes, a LoRA adapter on top of the base, the output files, and refusing to overwrite."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from align.cli import main as align_main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "eval"

_spec = importlib.util.spec_from_file_location("align_recipe_eval", ROOT / "recipes" / "eval.py")
eval_recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_recipe)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data_args(*tasks: str) -> list[str]:
    return ["--data_path", *(f"{t}={FIXTURES / t}.jsonl" for t in tasks)]


def test_recipe_several_tasks(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [
        "--model", str(tiny_model_dir),
        "--task", "math500", "gsm8k", "arc_easy", "arc_challenge",
        *_data_args("math500", "gsm8k", "arc_easy", "arc_challenge"),
        "--limit", "4", "--num_samples", "2", "--temperature", "1.0", "--max_new_tokens", "8",
        "--batch_size", "3", "--output_dir", str(out), "--disable_progress_bar",
    ]  # fmt: skip
    assert eval_recipe.main(argv) == 0
    printed = capsys.readouterr().out
    assert "math500 (generate): accuracy" in printed and "arc_easy (loglikelihood)" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {"math500", "gsm8k", "arc_easy", "arc_challenge"}
    math = summary["tasks"]["math500"]
    assert math["n"] == 4 and math["num_samples"] == 2 and {"pass@1", "pass@2", "maj@2"} <= set(math)
    assert summary["tasks"]["gsm8k"]["n"] == 3  # the fixture has 3 rows; limit 4 keeps them all
    arc = summary["tasks"]["arc_challenge"]
    assert arc["mode"] == "loglikelihood" and arc["n"] == 3 and {"acc", "acc_norm"} <= set(arc)
    assert summary["model"]["name_or_path"] == str(tiny_model_dir)
    assert summary["settings"]["num_samples"] == 2 and summary["settings"]["temperature"] == 1.0

    for task in ("math500", "gsm8k", "arc_easy", "arc_challenge"):
        assert (out / task / "samples.jsonl").is_file() and (out / task / "summary.json").is_file()
    samples = [json.loads(line) for line in (out / "math500" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(isinstance(s["correct"], bool) for s in samples)
    for s in samples:  # JSON booleans and numbers, not their strings
        assert type(s["index"]) is int and type(s["sample"]) is int and type(s["score"]) is float
        assert type(s["truncated"]) is bool and type(s["completion_tokens"]) is int
    assert (out / "math500" / "accuracy_by_level.png").is_file()
    assert not (out / "arc_easy" / "accuracy_by_level.png").exists()
    report = (out / "report.md").read_text()
    assert "## math500 (generate)" in report and "### By level" in report and "| acc_norm |" in report
    assert (out / "config.yaml").is_file()

    # An existing evaluation is not overwritten unless asked.
    assert eval_recipe.main(argv) == 2
    assert "already holds a previous run" in capsys.readouterr().err
    assert eval_recipe.main([*argv, "--overwrite_output_dir"]) == 0


def test_align_eval_with_adapter_and_generative_arc(tiny_model_dir, tmp_path):
    from align.models import apply_lora, load_causal_lm, save_pretrained

    base = load_causal_lm(str(tiny_model_dir), dtype="float32")
    lora = apply_lora(base, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # a non-zero adapter, so that it changes the model
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5, generator=torch.Generator().manual_seed(0))
    adapter = save_pretrained(lora, None, tmp_path / "adapter")

    def run(out: str, *extra: str) -> dict:
        argv = [
            "eval", "--model", str(tiny_model_dir), "--task", "arc_easy", *_data_args("arc_easy"),
            "--output_dir", str(tmp_path / out), "--disable_progress_bar", *extra,
        ]  # fmt: skip
        assert align_main(argv) == 0
        return json.loads((tmp_path / out / "arc_easy" / "samples.jsonl").read_text().splitlines()[0])

    plain = run("base")
    adapted = run("with_adapter", "--adapter", str(adapter))
    assert adapted["loglikelihoods"] != pytest.approx(plain["loglikelihoods"], abs=1e-3)
    # The adapter folder as the model itself: its base loads from adapter_config.json.
    as_model = run("adapter_as_model", "--model", str(adapter))
    assert as_model["loglikelihoods"] == pytest.approx(adapted["loglikelihoods"], abs=1e-5)

    generated = run("generate", "--mode", "generate", "--max_new_tokens", "6")
    assert {"completion", "extracted", "gold", "correct"} <= set(generated)
    summary = json.loads((tmp_path / "generate" / "summary.json").read_text())["tasks"]["arc_easy"]
    assert summary["mode"] == "generate" and summary["n"] == 4


def test_align_eval_unscorable_gold(tiny_model_dir, tmp_path, capsys):
    """The fixture's row 5 has the gold "???": left out of the accuracy, counted and listed in the report."""
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_model_dir), "--task", "math500", *_data_args("math500"),
            "--max_new_tokens", "4", "--output_dir", str(out), "--disable_progress_bar"]  # fmt: skip
    assert align_main(argv) == 0
    assert "on 5 problems (1 with an unscorable gold left out)" in capsys.readouterr().out
    s = json.loads((out / "math500" / "summary.json").read_text())
    assert (s["n"], s["n_scorable"], s["unscorable"], s["unscorable_indices"]) == (6, 5, 1, [5])
    assert s["accuracy"] == s["correct"] / 5
    samples = [json.loads(line) for line in (out / "math500" / "samples.jsonl").read_text().splitlines()]
    assert samples[5]["correct"] is None and samples[5]["score"] is None
    assert all(type(rec["correct"]) is bool for rec in samples[:5])
    report = (out / "math500" / "report.md").read_text()
    assert "### Unscorable gold answers" in report
    assert (
        "| 5 | fixture/geometry/6.json | Name the shape whose vertices are listed in the figure. | `` ??? `` |"
        in report.splitlines()
    )


def test_align_eval_bad_input(tiny_model_dir, tmp_path, capsys):
    no_answer = tmp_path / "bad.jsonl"
    no_answer.write_text(json.dumps({"problem": "1 + 1?"}) + "\n")
    argv = ["eval", "--model", str(tiny_model_dir), "--task", "math500", "--data_path", str(no_answer),
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert align_main(argv) == 2
    assert "missing column(s) ['answer']" in capsys.readouterr().err
    assert align_main(["eval", "--task", "nope"]) == 2
