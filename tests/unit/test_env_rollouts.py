"""GRPO and PPO-RLHF over episodes in a registered text environment (env_id)."""

import gymnasium as gym
import pytest
import torch

from align.config import ConfigError, parse_config
from align.trainers.env_rollout import episode_metrics, episode_scores, reset_seeds
from align.trainers.grpo import GRPOConfig, GRPOTrainer
from align.trainers.ppo import PPOConfig, PPOTrainer
from tests.support import tiny_causal_lm, tiny_tokenizer
from tests.unit.test_multiturn import ScriptedSampler, WordEnv, _char_ids

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


class _WordTextEnv(gym.Env):
    """WordEnv as a gymnasium env with text spaces (registered below as test/Word-v0)."""

    observation_space = gym.spaces.Text(max_length=200, charset="".join(map(chr, range(32, 127))) + "\n")
    action_space = gym.spaces.Text(max_length=200, charset="".join(map(chr, range(32, 127))) + "\n")
    system_prompt = WordEnv.system_prompt

    def __init__(self):
        self.inner = WordEnv(turns=2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.inner.reset(seed)

    def step(self, action):
        obs, reward, term, trunc, info = self.inner.step(action)
        return obs, reward, term, trunc, {**info, "success": reward > 0}


if "test/Word-v0" not in gym.registry:
    gym.register("test/Word-v0", entry_point=_WordTextEnv, disable_env_checker=True)


def _grpo(tmp_path, *extra):
    args = ["--output_dir", str(tmp_path / "run"), "--env_id", "test/Word-v0", "--num_generations", "2",
            "--per_device_train_batch_size", "4", "--max_new_tokens", "8", "--max_turns", "3",
            "--disable_progress_bar", "true", "--max_steps", "1", "--eval_steps", "0", *extra]  # fmt: skip
    cfg = parse_config(GRPOConfig, args)
    tok = tiny_tokenizer()
    return GRPOTrainer(cfg, tiny_causal_lm(tok, seed=0), tok, [], None), tok


def test_grpo_trains_on_the_sampled_ids_of_each_turn(tmp_path):
    trainer, tok = _grpo(tmp_path)
    sampled = _char_ids(tok, "left")  # re-encoding "left" gives other ids: see test_multiturn
    trainer.generator = ScriptedSampler(tok, sampled)
    (step,) = trainer.plan_updates()
    turn = sampled + [trainer.generator.eos[0]]
    for mb, _ in step.micro_batches:
        for row in range(len(mb.completion_ids)):
            trained = mb.completion_ids[row][mb.completion_mask[row].bool()].tolist()
            assert trained == turn * 2  # two turns, each exactly the sampled ids
            attended = int(mb.attention_completion_mask[row].sum())
            assert attended > len(trained)  # the observation between the turns is attended, not trained
    assert step.metrics["env/return"] == 2.0 and step.metrics["env/turns"] == 2.0
    assert step.metrics["env/success_rate"] == 1.0
    assert trainer.state.counters["env/episodes"] == 4 and trainer.state.counters["env/steps"] == 8


def test_grpo_env_run_trains_and_logs(tmp_path):
    trainer, tok = _grpo(tmp_path, "--max_steps", "2")
    trainer.train()
    rows = [
        __import__("json").loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[-1]["env/episodes"] == 8 and rows[-1]["env/steps"] == 16 and "env/return" in rows[0]
    logged = [
        __import__("json").loads(x) for x in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()
    ]
    assert logged[0]["messages"][0]["content"] == "Which way?" and logged[0]["turns"] == 2


def test_ppo_runs_over_episodes(tmp_path):
    args = ["--output_dir", str(tmp_path / "ppo"), "--env_id", "test/Word-v0", "--rollout_batch_size", "4",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_new_tokens", "6",
            "--max_turns", "2", "--value_model", "shared", "--disable_progress_bar", "true", "--max_steps", "2",
            "--eval_steps", "0"]  # fmt: skip
    cfg = parse_config(PPOConfig, args)
    tok = tiny_tokenizer()
    trainer = PPOTrainer(cfg, tiny_causal_lm(tok, seed=0), tok, [], None)
    sampled = _char_ids(tok, "left")
    trainer.generator = ScriptedSampler(tok, sampled)
    steps = trainer.plan_updates()
    for step in steps:
        for mb, _ in step.micro_batches:
            trained = mb.mask.bool()
            assert torch.isfinite(mb.advantages[trained]).all()
            assert (mb.advantages[~trained] == 0).all()  # GAE skips observation tokens and padding
    assert steps[0].metrics["score/mean"] == 2.0


def test_env_config_errors():
    with pytest.raises(ConfigError, match="rewarded by the environment"):
        parse_config(GRPOConfig, ["--env_id", "test/Word-v0", "--reward_funcs", "boxed_format"])
    with pytest.raises(ConfigError, match="max_turns must be"):
        parse_config(GRPOConfig, ["--env_id", "test/Word-v0", "--max_turns", "0"])


def test_unknown_env_id_names_the_registered_ones(tmp_path):
    with pytest.raises(
        ConfigError, match=r"no environment 'align/Nope-v0' is registered; registered text .*align/"
    ):
        _grpo(tmp_path, "--env_id", "align/Nope-v0")


def test_reset_seeds_are_keyed_by_group_not_process():
    one = reset_seeds(3, 5, 0, 4, 2)
    assert one[0] == one[1] and one[0] != one[2]
    assert reset_seeds(3, 5, 2, 2, 2) == one[4:]  # process 1 of 2 resets groups 2 and 3


def test_episode_scores_and_metrics():
    from align.multiturn import Episode

    a = Episode(
        prompt_ids=[1],
        rewards=[0.0, 1.0],
        turns=2,
        terminated=True,
        infos=[{}, {"invalid_action": True}, {"success": True}],
    )
    b = Episode(prompt_ids=[1], rewards=[-0.1], turns=1, truncated=True, infos=[{}, {"success": False}])
    assert episode_scores([a, b], "sum") == [1.0, -0.1] and episode_scores([a, b], "final") == [1.0, -0.1]
    m = episode_metrics([a, b], [1.0, -0.1])
    assert m["env/success_rate"] == 0.5 and m["env/turns"] == 1.5 and m["env/truncated_fraction"] == 0.5
    assert m["env/invalid_action_rate"] == pytest.approx(1 / 3)


class _NoRewardEnv(_WordTextEnv):
    """Ends after one turn with a NaN reward (an environment that cannot score, e.g. an unreadable gold)."""

    def step(self, action):
        return "", float("nan"), True, False, {"role": "user"}


if "test/NoReward-v0" not in gym.registry:
    gym.register("test/NoReward-v0", entry_point=_NoRewardEnv, disable_env_checker=True)


def test_a_rollout_without_any_episode_reward_stops(tmp_path):
    from align.rewards.combine import MissingRewardError

    trainer, tok = _grpo(tmp_path, "--env_id", "test/NoReward-v0")
    trainer.generator = ScriptedSampler(tok, _char_ids(tok, "left"))
    with pytest.raises(MissingRewardError, match="rollout 1: no episode of test/NoReward-v0 got a reward"):
        trainer.plan_updates()


def test_math_tool_env_unreadable_gold_is_nan_not_zero():
    import math

    from align.envs.math_tools import MathToolEnv

    env = MathToolEnv([{"question": "1 + 1?", "answer": "\\frac{"}])
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("so \\boxed{2}")
    assert terminated and math.isnan(reward) and info["verifier_score"] is None
