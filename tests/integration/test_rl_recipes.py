"""Each classic-RL recipe runs a few steps and writes its outputs; DQN, PPO and tabular runs resume exactly;
bad input is a clear error naming the option."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from align.config import ConfigError
from align.rl.common import load_model, parse_rl_config
from align.rl.dqn import DQNConfig, DQNTrainer
from align.rl.policy_gradient import PPOConfig, PPOTrainer
from align.rl.tabular_trainer import TabularConfig, TabularTrainer
from align.trainer import Callback, read_metrics
from tests.support import reset_accelerate_state

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import a2c_cartpole  # noqa: E402
import dqn_cartpole  # noqa: E402
import ppo_cartpole  # noqa: E402
import reinforce_cartpole  # noqa: E402
import tabular_frozenlake  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


QUICK = ["--disable_progress_bar", "true", "--logging_steps", "1", "--eval_episodes", "3"]

RECIPES = {
    "dqn": (dqn_cartpole, ["--max_steps", "5", "--learning_starts", "600", "--gradient_steps", "8"]),
    "ppo": (ppo_cartpole, ["--max_steps", "3", "--num_epochs", "2"]),
    "a2c": (a2c_cartpole, ["--max_steps", "4"]),
    "reinforce": (reinforce_cartpole, ["--max_steps", "3"]),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_writes_outputs(tmp_path, name):
    module, extra = RECIPES[name]
    out = tmp_path / name
    summary = module.main(["--output_dir", str(out), *QUICK, *extra])
    for f in (
        "metrics.jsonl",
        "config.yaml",
        "summary.json",
        "learning_curve.png",
        "model/model.safetensors",
    ):
        assert (out / f).exists(), f
    rows = read_metrics(out)
    assert any("episode/return" in r for r in rows) and rows[-1]["env/steps"] == summary["env_steps"] > 0
    assert json.loads((out / "summary.json").read_text())["eval_episodes"] == 3
    assert summary["eval_return_mean"] >= 8 and summary["eval_return_std"] >= 0
    # the saved model rebuilds from model/ and acts like the trained one
    model = load_model(out / "model")
    obs = torch.randn(5, 4)
    if name == "dqn":
        actions = model(obs).argmax(-1)
    else:
        actions = model.mode(model.dist_params(obs))
    assert actions.shape == (5,)


def test_recipe_saved_model_matches_trainer(tmp_path):
    cfg = parse_rl_config(
        PPOConfig,
        ["--output_dir", str(tmp_path / "p"), *QUICK, "--max_steps", "1"],
        ppo_cartpole.DEFAULT_CONFIG,
    )
    trainer = PPOTrainer(cfg)
    trainer.train()
    trainer.save_model(tmp_path / "p" / "model")
    model = load_model(tmp_path / "p" / "model")
    obs = torch.randn(7, 4)
    assert torch.equal(model.dist_params(obs), trainer.policy.dist_params(obs))


def test_tabular_recipe_prints_policy_map_and_exact_values(tmp_path, capsys):
    out = tmp_path / "fl"
    summary = tabular_frozenlake.main(
        [
            "--output_dir",
            str(out),
            "--max_steps",
            "300",
            "--eval_episodes",
            "50",
            "--disable_progress_bar",
            "true",
        ]
    )
    text = capsys.readouterr().out
    assert "policy" in text and "values" in text and "H" in text and "G" in text
    assert any(a in text for a in "←↓→↑")
    assert "optimal (value iteration" in text and "0.54" in text  # v*(start) of FrozenLake 4x4, gamma 0.99
    assert summary["eval"]["eval/optimal_value_start"] == pytest.approx(0.54203, abs=1e-5)
    assert 0.0 <= summary["eval"]["eval/success_exact"] <= 1.0
    assert (out / "model" / "model.safetensors").exists() and (out / "learning_curve.png").exists()


def test_tabular_recipe_value_iteration(tmp_path, capsys):
    summary = tabular_frozenlake.main(
        ["--output_dir", str(tmp_path / "vi"), "--method", "value_iteration", "--eval_episodes", "20",
         "--disable_progress_bar", "true", "--logging_steps", "1"]
    )  # fmt: skip
    assert summary["eval"]["eval/success_exact"] == pytest.approx(0.7402, abs=1e-4)
    rows = read_metrics(tmp_path / "vi")
    assert (tmp_path / "vi" / "learning_curve.png").exists()  # exact start values per sweep
    assert rows[-1]["dp/converged"] == 1.0 and rows[-1]["dp/residual"] < 1e-10
    assert rows[-1]["policy/value_start"] == pytest.approx(0.54203, abs=1e-5)


# ------------------------------------------------------------------------------------------ resume


class _Interrupt(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, metrics):
        if trainer.state.step == self.at:
            raise KeyboardInterrupt


def _drop_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _run(trainer_cls, config, interrupt_at=None):
    trainer = trainer_cls(config)
    if interrupt_at is not None:
        trainer.callbacks.append(_Interrupt(interrupt_at))
    trainer.train()
    return trainer


def _resume_equals_uninterrupted(tmp_path, config_cls, trainer_cls, args, interrupt_at, state_of):
    full = _run(trainer_cls, parse_rl_config(config_cls, ["--output_dir", str(tmp_path / "full"), *args]))
    full_state, full_rows = state_of(full), read_metrics(tmp_path / "full")
    reset_accelerate_state()
    cut_args = ["--output_dir", str(tmp_path / "cut"), *args]
    with pytest.raises(KeyboardInterrupt):
        _run(trainer_cls, parse_rl_config(config_cls, cut_args), interrupt_at)
    reset_accelerate_state()
    resumed = _run(
        trainer_cls, parse_rl_config(config_cls, [*cut_args, "--resume_from_checkpoint", "latest"])
    )
    rows = read_metrics(tmp_path / "cut")
    assert [r["step"] for r in rows] == [r["step"] for r in full_rows]
    assert _drop_time(rows) == _drop_time(full_rows)
    resumed_state = state_of(resumed)
    assert resumed_state.keys() == full_state.keys()
    for k in full_state:
        assert torch.equal(resumed_state[k], full_state[k]), k
    return full, resumed


def _params(trainer):
    return {
        k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
    }


def test_dqn_resume_equals_uninterrupted(tmp_path):
    args = [
        "--max_steps", "8", "--train_freq", "40", "--learning_starts", "100", "--gradient_steps", "3",
        "--per_device_train_batch_size", "16", "--hidden_sizes", "32", "--target_update_interval", "70",
        "--save_steps", "3", "--logging_steps", "1", "--disable_progress_bar", "true", "--eval_steps", "4",
        "--eval_episodes", "2", "--double_q", "true",
    ]  # fmt: skip

    def state(tr):
        out = _params(tr)
        out.update({f"target.{k}": v for k, v in tr.target_net.state_dict().items()})
        out["buffer.obs"] = torch.from_numpy(tr.buffer.obs.copy())
        out["obs"] = torch.as_tensor(np.asarray(tr._obs))
        return out

    full, resumed = _resume_equals_uninterrupted(tmp_path, DQNConfig, DQNTrainer, args, 5, state)
    # 8 optimizer steps, 3 per round of 40 environment steps after learning_starts=100: rounds end at
    # 120, 160 and 200; the checkpoint at step 3 falls between rounds, the kill at 5 inside one.
    assert resumed.num_timesteps == full.num_timesteps == 200 and resumed.episodes == full.episodes


def test_ppo_resume_equals_uninterrupted(tmp_path):
    args = [
        "--max_steps", "12", "--num_envs", "2", "--n_steps", "24", "--per_device_train_batch_size", "16",
        "--num_epochs", "2", "--save_steps", "2", "--logging_steps", "1", "--disable_progress_bar", "true",
        "--lr_scheduler_type", "linear", "--clip_eps_schedule", "linear", "--learning_rate", "0.003",
    ]  # fmt: skip

    def state(tr):
        return {**_params(tr), "obs": torch.as_tensor(tr._obs)}

    # 2 epochs x 3 minibatches = 6 optimizer steps per rollout of 48 transitions: the checkpoint at step 4
    # is in the middle of the first rollout's plan, whose pending steps it holds.
    full, resumed = _resume_equals_uninterrupted(tmp_path, PPOConfig, PPOTrainer, args, 5, state)
    assert resumed.num_timesteps == full.num_timesteps == 2 * 48


def test_tabular_resume_equals_uninterrupted(tmp_path):
    args = [
        "--max_steps",
        "60",
        "--save_steps",
        "20",
        "--logging_steps",
        "5",
        "--disable_progress_bar",
        "true",
    ]
    full, resumed = _resume_equals_uninterrupted(
        tmp_path, TabularConfig, TabularTrainer, args, 45, lambda tr: {"q": tr.table.q.clone()}
    )
    assert resumed.agent.episodes == full.agent.episodes == 60


# --------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "module,args,message",
    [
        (ppo_cartpole, ["--env_id", "CartPoel-v1"], r"env_id: unknown environment id 'CartPoel-v1'"),
        (
            dqn_cartpole,
            ["--env_id", "Pendulum-v1"],
            r"env_id: DQN needs a discrete action space, but Pendulum-v1",
        ),
        (reinforce_cartpole, ["--gamma", "1.5"], r"gamma must be in \[0.0, 1.0\], got 1.5"),
        (tabular_frozenlake, ["--gamma", "-0.1"], r"gamma must be in \[0.0, 1.0\]"),
        (
            tabular_frozenlake,
            ["--env_id", "CartPole-v1"],
            r"env_id: tabular methods need a Discrete observation",
        ),
        (
            tabular_frozenlake,
            ["--env_id", "Pendulum-v1"],
            r"env_id: tabular RL needs a discrete action space, but Pendulum-v1",
        ),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, module, args, message):
    with pytest.raises(ConfigError, match=message):
        module.main(["--output_dir", str(tmp_path / "x"), *args])
    assert not (tmp_path / "x").exists()  # nothing was written
