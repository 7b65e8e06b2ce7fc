"""The GRPO recipes run end to end on a tiny model: outputs, resume, and the rubric report."""

import json

import pytest

from align.testing import reset_accelerate_state, save_tiny_model
from align.trainer import read_metrics

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


SMALL = ["--num_generations", "4", "--per_device_train_batch_size", "8", "--max_new_tokens", "12",
         "--disable_progress_bar", "true"]  # fmt: skip


def _load(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grpo_math_recipe_outputs_and_resume(tmp_path, tiny_dir):
    recipe = _load("grpo_math")
    out = tmp_path / "run"
    args = ["--model_name_or_path", tiny_dir, "--output_dir", str(out), "--eval_limit", "4", *SMALL]
    # skip_zero_std_groups off: the tiny model earns no reward, and the loss metrics (entropy, clip) come
    # only from rows that run with a weight.
    args += ["--skip_zero_std_groups", "false"]
    summary = recipe.main([*args, "--max_steps", "2", "--save_steps", "1"])
    for name in (
        "metrics.jsonl",
        "config.yaml",
        "completions.jsonl",
        "summary.json",
        "model/model.safetensors",
    ):
        assert (out / name).exists(), name
    assert summary["steps"] == 2 and 0.0 <= summary["heldout_accuracy_after"] <= 1.0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward/mean", "reward/math/mean", "completions/mean_length", "entropy", "clip/fraction",
                "reward/zero_std_group_fraction", "throughput/completion_tokens_per_second", "time/step_seconds"):  # fmt: skip
        assert key in rows[0], key
    # An existing run is not overwritten...
    reset_accelerate_state()
    with pytest.raises(FileExistsError):
        recipe.main([*args, "--max_steps", "3"])
    # ...but resumes.
    reset_accelerate_state()
    recipe.main([*args, "--max_steps", "3", "--resume_from_checkpoint", "latest"])
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


def test_grpo_math_recipe_lora(tmp_path, tiny_dir):
    recipe = _load("grpo_math")
    out = tmp_path / "lora"
    recipe.main(["--model_name_or_path", tiny_dir, "--output_dir", str(out), "--eval_limit", "2", "--max_steps", "1",
                 "--use_lora", "true", "--lora_r", "4", "--beta", "0.04", *SMALL])  # fmt: skip
    assert (out / "model" / "adapter_model.safetensors").exists()
    assert "kl" in read_metrics(out)[0]


def test_grpo_math_recipe_bad_config_exits_with_message(tmp_path):
    recipe = _load("grpo_math")
    with pytest.raises(SystemExit, match="num_generations must be >= 2"):
        recipe.main(["--output_dir", str(tmp_path / "x"), "--num_generations", "1"])


def test_grpo_rubric_recipe_reports_criteria(tmp_path, tiny_dir):
    recipe = _load("grpo_rubric")
    out = tmp_path / "rubric"
    result = recipe.main(["--model_name_or_path", tiny_dir, "--output_dir", str(out), "--max_steps", "1",
                          "--score_limit", "3", *SMALL])  # fmt: skip
    saved = json.loads((out / "rubric_scores.json").read_text())
    assert set(saved["before"]) == {"boxed", "correct", "concise", "shows_step", "clear", "total"}
    assert result["after"].keys() == result["before"].keys()
    assert any(k.startswith("reward/math_explainer/") for k in read_metrics(out)[0])
