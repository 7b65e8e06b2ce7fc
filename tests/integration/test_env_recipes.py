"""The environment recipes (grpo_env, grpo_tools) run end to end on a tiny model and resume exactly."""

import pytest
import torch

from align.trainer import read_metrics
from tests.integration.exactness import Interrupt, read_jsonl, stable
from tests.integration.test_grpo_recipes import _load, _weights
from tests.support import reset_accelerate_state, save_tiny_model

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


SMALL = ["--num_generations", "2", "--per_device_train_batch_size", "4", "--max_new_tokens", "6",
         "--max_turns", "3", "--eval_episodes", "2", "--disable_progress_bar", "true", "--learning_rate", "1e-3"]  # fmt: skip


def test_grpo_env_recipe_reports_against_the_optimum(tmp_path, tiny_dir, capsys):
    recipe = _load("grpo_env")
    summary = recipe.main(["--model_name_or_path", tiny_dir, "--output_dir", str(tmp_path / "fl"), *SMALL,
                           "--max_steps", "1", "--max_turns", "8"])  # fmt: skip
    assert summary["optimal_success"] == 1.0 and summary["random_success"] < 0.05 and summary["horizon"] == 8
    for key in ("success_rate", "return", "invalid_action_rate", "turns"):
        assert f"{key}_before" in summary and f"{key}_after" in summary
    assert "value iteration 1.000" in capsys.readouterr().out
    episodes = read_jsonl(tmp_path / "fl" / "completions.jsonl")
    assert episodes[0]["messages"][0]["content"].startswith("Frozen lake")


def test_grpo_tools_recipe_runs_with_the_calculator(tmp_path, tiny_dir):
    recipe = _load("grpo_tools")
    summary = recipe.main(["--model_name_or_path", tiny_dir, "--output_dir", str(tmp_path / "tools"), *SMALL,
                           "--max_steps", "1"])  # fmt: skip
    assert summary["eval_env_id"] == "align/MathToolsTest-v0"
    assert "tool_calls_after" in summary and "optimal_success" not in summary


def test_grpo_env_resume_equals_uninterrupted(tmp_path, tiny_dir, monkeypatch):
    """Killed after step 3 and resumed from step 2's checkpoint, an environment run ends where an
    uninterrupted one does: reset seeds and sampling streams are keyed by the rollout counter."""
    from align.trainers.grpo import GRPOTrainer

    recipe = _load("grpo_env")
    args = lambda name: ["--model_name_or_path", tiny_dir, "--output_dir", str(tmp_path / name), *SMALL,  # noqa: E731
                         "--max_steps", "4", "--save_steps", "2", "--log_completions", "4", "--eval_episodes", "0"]  # fmt: skip
    recipe.main(args("full"))
    reset_accelerate_state()
    init = GRPOTrainer.__init__

    def with_interrupt(self, *a, **kw):
        init(self, *a, **kw)
        self.callbacks.append(Interrupt(3))

    with monkeypatch.context() as m:
        m.setattr(GRPOTrainer, "__init__", with_interrupt)
        with pytest.raises(KeyboardInterrupt):
            recipe.main(args("cut"))
    reset_accelerate_state()
    recipe.main([*args("cut"), "--resume_from_checkpoint", "latest"])
    full_rows, cut_rows = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [r["step"] for r in cut_rows] == [1, 2, 3, 4]
    assert stable(cut_rows) == stable(full_rows)
    assert full_rows[-1]["env/episodes"] == 16
    assert read_jsonl(tmp_path / "cut" / "completions.jsonl") == read_jsonl(
        tmp_path / "full" / "completions.jsonl"
    )
    full_w, cut_w = _weights(tmp_path / "full" / "model"), _weights(tmp_path / "cut" / "model")
    assert all(torch.equal(full_w[k], cut_w[k]) for k in full_w)
