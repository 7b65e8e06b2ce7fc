"""One environment id for every agent (issue 16): the tabular and DQN recipes train on the text id
``align/FrozenLakeText-v0`` (FrozenLake 4x4, not slippery, ``max_turns`` 20) through their ``main()``, the code
path of ``python recipes/...`` and of ``benchmarks/frozenlake_agents.py``."""

import sys
from pathlib import Path

import pytest

from align.envs.text import reference_scores
from align.rl.common import load_model
from align.rl.envs import make_env

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import dqn_cartpole  # noqa: E402
import tabular_frozenlake  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

ENV_ID = "align/FrozenLakeText-v0"
QUICK = ["--disable_progress_bar", "true", "--eval_episodes", "20"]


def test_text_id_is_the_discrete_lake_with_the_turn_limit():
    env = make_env(ENV_ID)
    assert env.observation_space.n == 16 and env.action_space.n == 4
    assert env.spec.max_episode_steps == 20  # the text env's max_turns
    ref = reference_scores(env)
    assert ref["horizon"] == 20 and ref["optimal_success"] == pytest.approx(1.0)


def test_q_learning_recipe_solves_the_text_id(tmp_path):
    summary = tabular_frozenlake.main(
        ["--output_dir", str(tmp_path / "q"), "--env_id", ENV_ID, "--max_steps", "300", *QUICK]
    )
    assert summary["env_id"] == ENV_ID and summary["episodes"] == 300
    assert summary["eval"]["eval/success_rate"] == 1.0
    assert summary["eval"]["eval/success_exact"] == pytest.approx(1.0)  # within the 20-step limit


def test_value_iteration_recipe_on_the_text_id_matches_reference_scores(tmp_path):
    summary = tabular_frozenlake.main(
        ["--output_dir", str(tmp_path / "vi"), "--env_id", ENV_ID, "--method", "value_iteration", *QUICK]
    )
    ref = reference_scores(make_env(ENV_ID))
    assert summary["eval"]["eval/success_exact"] == pytest.approx(ref["optimal_success"])
    assert summary["eval"]["eval/success_rate"] == 1.0


def test_dqn_recipe_runs_on_the_text_id_with_one_hot_states(tmp_path):
    out = tmp_path / "dqn"
    summary = dqn_cartpole.main(
        ["--output_dir", str(out), "--env_id", ENV_ID, "--total_timesteps", "400", "--learning_starts", "100",
         "--train_freq", "4", "--gradient_steps", "1", "--hidden_sizes", "32", "--eval_steps", "0",
         "--metric_for_best_model", "", *QUICK]
    )  # fmt: skip
    assert summary["env_id"] == ENV_ID and summary["env_steps"] == 400 and summary["episodes"] > 0
    assert 0.0 <= summary["eval_return_mean"] <= 1.0  # reward 1 at the goal only
    assert summary["eval"]["eval/length_mean"] <= 20  # the text env's turn limit cuts every episode
    net = load_model(out / "model")
    assert net.encoder.num_states == 16 and net.encoder.dim == 16  # Discrete(16) one-hot (ObsEncoder)
