"""Learning checks for align.rl, through the recipes and their default configs (run by CI; sized to fit).

Each check states its budget and seeds; returns are the mean over 20 greedy episodes (deterministic actions)
on evaluation environments seeded 10000 + i. Times are those measured on a 2-core CPU machine shared with
other jobs (one torch thread per run).
"""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import dqn_cartpole  # noqa: E402
import ppo_cartpole  # noqa: E402
import reinforce_cartpole  # noqa: E402
import tabular_frozenlake  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerate_state")]

QUIET = ["--disable_progress_bar", "true"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dqn_solves_cartpole(tmp_path, seed):
    """DQN, recipes/configs/rl/dqn_cartpole.yaml: 50,000 environment steps, seeds 0-3 -> greedy mean >= 475 on
    the 20 reported episodes. The final greedy policy of DQN oscillates (seeds 0-3 gave 196.6 / 500 / 500 /
    229.2 without selection); a greedy evaluation every 10 training phases on episodes of its own keeps the
    best weights, as Stable-Baselines3's EvalCallback."""
    summary = dqn_cartpole.main(["--output_dir", str(tmp_path / "dqn"), "--seed", str(seed), *QUIET])
    assert summary["env_steps"] <= 50_176 and summary["best_step"] > 0
    assert summary["eval_return_mean"] >= 475, summary


@pytest.mark.parametrize("seed", [0, 1])
def test_ppo_solves_cartpole(tmp_path, seed):
    """PPO, recipes/configs/rl/ppo_cartpole.yaml: 100,000 environment steps, seeds 0 and 1 -> greedy mean >= 475."""
    summary = ppo_cartpole.main(["--output_dir", str(tmp_path / "ppo"), "--seed", str(seed), *QUIET])
    assert summary["env_steps"] <= 100_352
    assert summary["eval_return_mean"] >= 475, summary


def test_reinforce_with_baseline_learns_cartpole(tmp_path):
    """REINFORCE with a learned value baseline, recipes/configs/rl/reinforce_cartpole.yaml: 150 iterations of
    8 episodes, seed 0 -> greedy mean >= 400."""
    summary = reinforce_cartpole.main(["--output_dir", str(tmp_path / "reinforce"), *QUIET])
    assert summary["eval_return_mean"] >= 400, summary


def test_q_learning_frozenlake_reaches_optimal_success_rate(tmp_path):
    """Q-learning through the TabularTrainer (recipes/configs/rl/tabular_frozenlake.yaml): FrozenLake 4x4
    slippery, gamma 0.99, 12,000 episodes, seed 0. The greedy policy's exact probability of reaching the
    goal within the 100-step limit equals the optimal policy's, 0.740, and 1000 sampled episodes agree."""
    summary = tabular_frozenlake.main(["--output_dir", str(tmp_path / "fl"), *QUIET])
    ev = summary["eval"]
    assert ev["eval/success_exact"] == pytest.approx(0.7402, abs=1e-3)
    assert ev["eval/success_rate"] == pytest.approx(0.7402, abs=0.04)
    assert ev["eval/value_start"] == pytest.approx(ev["eval/optimal_value_start"], abs=0.01)
