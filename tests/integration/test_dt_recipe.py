"""recipes/decision_transformer.py runs a few steps on a small generated dataset, writes its outputs (the
DT model loads back with transformers), warns about a target above the data, resumes exactly, and refuses
bad input with a message naming the file, row or option."""

import json
import sys
import warnings
from pathlib import Path

import pytest

from align.trainer import read_metrics
from tests.support import reset_accelerate_state

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import decision_transformer  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _quick(tmp_path, out, *extra):
    return [
        "--output_dir", str(out), "--data_dir", str(tmp_path / "data"), "--dataset_steps", "1500",
        "--hidden_size", "16", "--n_layer", "1", "--context_length", "5", "--max_steps", "4",
        "--bc_max_steps", "3", "--eval_episodes", "2", "--target_returns", "20", "900",
        "--logging_steps", "1", "--disable_progress_bar", "true", *extra,
    ]  # fmt: skip


def test_recipe_writes_outputs_and_warns_about_unreached_target(tmp_path):
    out = tmp_path / "dt"
    with pytest.warns(UserWarning, match=r"\[900\.0\] exceed the best episode return"):
        s = decision_transformer.main(_quick(tmp_path, out))
    for f in ("metrics.jsonl", "config.yaml", "summary.json", "learning_curve.png", "return_vs_target.png"):
        assert (out / f).is_file(), f
    assert s["targets_above_data"] == [900.0] and set(s["dt"]) == {"20", "900"}
    assert s["bc"]["return_mean"] > 0 and s["dataset"]["steps"] >= 1500
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    from transformers import DecisionTransformerModel

    model = DecisionTransformerModel.from_pretrained(out / "model")
    assert model.config.state_dim == 4 and model.config.act_dim == 2
    meta = json.loads((out / "model" / "dt_meta.json").read_text())
    assert meta["context_length"] == 5 and len(meta["state_mean"]) == 4
    assert (out / "bc" / "metrics.jsonl").is_file()


def test_recipe_resumes_exactly(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = tmp_path / "full"
        decision_transformer.main(_quick(tmp_path, full, "--max_steps", "6", "--bc_max_steps", "0"))
        reset_accelerate_state()
        part = tmp_path / "part"
        decision_transformer.main(_quick(tmp_path, part, "--save_steps", "3", "--bc_max_steps", "0"))
        reset_accelerate_state()
        decision_transformer.main(
            _quick(
                tmp_path,
                part,
                "--max_steps",
                "6",
                "--bc_max_steps",
                "0",
                "--resume_from_checkpoint",
                "latest",
            )
        )
    a = [r["loss"] for r in read_metrics(full)]
    b = [r["loss"] for r in read_metrics(part)]
    assert len(a) == 6 and a == pytest.approx(b, rel=1e-6)


def test_bad_dataset_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    row = {
        "observations": [[0.0] * 4] * 2,
        "actions": [0, 1],
        "terminals": [False, True],
        "timesteps": [0, 1],
    }
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, row 0 .*missing field 'rewards'"):
        decision_transformer.main(_quick(tmp_path, tmp_path / "o", "--dataset_path", str(bad)))


def test_context_longer_than_the_episodes_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"context_length=600 is longer than every episode"):
        decision_transformer.main(_quick(tmp_path, tmp_path / "o", "--context_length", "600"))
