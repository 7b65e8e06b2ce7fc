"""Text environments (align.envs.text): toy-text MDPs a language model plays through text, and the same
ids for classic agents."""

import dataclasses
import warnings

import gymnasium as gym
import pytest
import torch

from align.envs import (
    TEXT_ENVS,
    TextEnv,
    discrete_env,
    make_text_env,
    parse_action,
    reference_scores,
    text_env_of,
)
from align.rl.envs import make_env, make_vec_env, resolve_env_id
from align.rl.mdp import TabularEnv, from_toy_text, random_walk
from align.rl.tabular import QTable, TabularAgent, evaluate_policy, value_iteration

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID = ("left", "down", "right", "up")
# FrozenLake 4x4, not slippery: S(0,0) -> G(3,3) avoiding the holes at (1,1), (1,3), (2,3), (3,0).
OPTIMAL_4X4 = ["down", "down", "right", "down", "right", "right"]


@pytest.fixture
def lake():
    env = gym.make("align/FrozenLakeText-v0")
    yield env
    env.close()


def tagged(name: str) -> str:
    return f"<action>{name}</action>"


# ---------------------------------------------------------------------------------------- episodes


def test_reset_message_has_task_map_actions_and_format(lake):
    obs, info = lake.reset(seed=0)
    assert "goal G" in obs and "@FFF\nFHFH\nFFFH\nHFFG" in obs
    assert "Actions: left, down, right, up." in obs and "<action></action>" in obs
    assert info == {"role": "user", "state": 0, "invalid_action": False, "action": None, "turn": 0}
    assert lake.observation_space.contains(obs)
    assert text_env_of(lake).system_prompt is None and lake.get_wrapper_attr("tools") == []


def test_scripted_optimal_episode_reaches_the_goal(lake):
    lake.reset(seed=0)
    for t, name in enumerate(OPTIMAL_4X4):
        obs, reward, terminated, truncated, info = lake.step(f"Thinking... {tagged(name)}")
        assert info["role"] == "user" and info["action"] == GRID.index(name) and not info["invalid_action"]
        assert lake.observation_space.contains(obs)
        if t < len(OPTIMAL_4X4) - 1:
            assert (reward, terminated, truncated) == (0.0, False, False) and "success" not in info
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["success"] is True and info["state"] == 15 and "goal" in obs
    with pytest.raises(RuntimeError, match="reset"):
        lake.step(tagged("down"))


def test_hole_ends_without_success(lake):
    lake.reset(seed=0)
    lake.step(tagged("down"))
    _, reward, terminated, _, info = lake.step(tagged("right"))  # (1, 1) is a hole
    assert terminated and reward == 0.0 and info["success"] is False


# ----------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<action>down</action>", 1),
        ("I will go <ACTION> Right </ACTION> now", 2),
        ("<action>left</action> no wait <action>up</action>", 3),
        ("Let me think: not left. I go DOWN.", 1),
        ("Go south", 1),
        ("<action>2</action>", 2),
        (" 3 ", 3),
        ("<action>nowhere</action> then right", 2),
        ("I am at row 2", None),
        ("<action>7</action>", None),
        ("leftover downtown", None),
        ("", None),
    ],
)
def test_parse_action(text, expected):
    assert parse_action(text, GRID) == expected


def test_parse_taxi_synonyms():
    taxi = ("south", "north", "east", "west", "pickup", "dropoff")
    assert parse_action("<action>Pick up</action>", taxi) == 4
    assert parse_action("drop-off the passenger", taxi) == 5
    assert parse_action("move up", taxi) == 1


def test_invalid_action_continue_penalises_counts_and_keeps_state(lake):
    lake.reset(seed=0)
    lake.step(tagged("down"))
    obs, reward, terminated, truncated, info = lake.step("I do not know")
    assert (reward, terminated, truncated) == (-0.1, False, False)
    assert info["invalid_action"] is True and info["state"] == 4 and "No valid action" in obs
    inner = text_env_of(lake)
    assert inner.invalid_actions == 1 and inner.episode_invalid_actions == 1
    lake.reset(seed=0)
    lake.step("???")
    assert inner.invalid_actions == 2 and inner.episode_invalid_actions == 1


def test_invalid_action_end_truncates():
    env = make_text_env("align/FrozenLakeText-v0", on_invalid="end", invalid_action_penalty=-0.5)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step("garbage")
    assert (reward, terminated, truncated) == (-0.5, False, True)
    assert info["invalid_action"] is True and info["success"] is False


def test_on_invalid_is_checked():
    with pytest.raises(ValueError, match="on_invalid"):
        make_text_env("align/FrozenLakeText-v0", on_invalid="retry")


def test_max_turns_truncates_valid_and_invalid_turns():
    env = make_text_env("align/FrozenLakeText-v0", max_turns=3)
    env.reset(seed=0)
    assert env.step(tagged("left"))[2:4] == (False, False)  # bumps the wall
    assert env.step("nonsense")[2:4] == (False, False)
    _, _, terminated, truncated, info = env.step(tagged("up"))
    assert (terminated, truncated) == (False, True) and info["success"] is False and info["turn"] == 3


def test_same_seed_same_episode_on_a_slippery_lake():
    def play(seed):
        env = make_text_env("align/FrozenLakeText-v0", is_slippery=True)
        out = [env.reset(seed=seed)[0]]
        for name in ["right", "down"] * 5:
            obs, _, terminated, truncated, _ = env.step(tagged(name))
            out.append(obs)
            if terminated or truncated:
                break
        return out

    assert play(3) == play(3)
    assert len({tuple(play(s)) for s in range(6)}) > 1  # the slips do depend on the seed


# -------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("env_id", list(TEXT_ENVS))
def test_every_registered_id_makes_resets_and_steps(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the passive env checker warns on observations outside the space
        env = gym.make(env_id)
        obs, info = env.reset(seed=0)
        names = text_env_of(env).action_names
        obs2, reward, terminated, truncated, info2 = env.step(tagged(names[-1]))
    assert (
        isinstance(obs, str) and env.observation_space.contains(obs) and env.observation_space.contains(obs2)
    )
    assert isinstance(reward, float) and info2["action"] == len(names) - 1 and info2["role"] == "user"
    assert isinstance(discrete_env(env).action_space, gym.spaces.Discrete)
    assert env.unwrapped is discrete_env(env).unwrapped


def test_wraps_a_tabular_mdp_without_a_map():
    env = TextEnv(TabularEnv(dataclasses.replace(random_walk(), layout=None, shape=None)), max_turns=5)
    obs, info = env.reset(seed=0)
    assert "You are in state 3." in obs and "Actions: left, right." in obs
    assert env.step("right")[4]["state"] == 4


def test_unknown_id_names_the_registered_ids():
    with pytest.raises(ValueError, match="Did you mean 'align/FrozenLakeText-v0'") as err:
        make_text_env("align/FrozenLakText-v0")
    assert all(env_id in str(err.value) for env_id in TEXT_ENVS) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="align/TaxiText-v0"):
        make_env("align/NoSuchText-v0")


def test_options_reach_the_discrete_env():
    env = make_text_env("align/FrozenLakeText-v0", map_name="8x8", is_slippery=True)
    assert env.unwrapped.desc.shape == (8, 8) and env.unwrapped.P[0][1][0][0] < 1.0


# ------------------------------------------------------------------------------------ exact solving


def test_value_iteration_optimum_and_random_policy_on_frozenlake_4x4(lake):
    scores = reference_scores(lake)
    assert scores["horizon"] == 20
    assert scores["optimal_success"] == pytest.approx(1.0) and scores["optimal_return"] == pytest.approx(1.0)
    assert scores["random_success"] < 0.2
    # The exact random-policy number agrees with sampling it.
    mdp = from_toy_text(discrete_env(lake))
    uniform = torch.full((mdp.num_states, mdp.num_actions), 0.25, dtype=torch.float64)
    _, _, sampled = evaluate_policy(discrete_env(lake), uniform, episodes=500, seed=0)
    assert sampled == pytest.approx(scores["random_success"], abs=0.02)


def test_one_id_serves_classic_agents():
    assert resolve_env_id("align/FrozenLakeText-v0") == "align/FrozenLakeText-v0"
    env = make_env("align/FrozenLakeText-v0", seed=0)
    assert isinstance(env.observation_space, gym.spaces.Discrete) and env.spec.max_episode_steps == 20
    assert env.unwrapped.P[0][1] == [(1.0, 4, 0, False)]  # not slippery, like the text env
    _, _, policy, _ = value_iteration(from_toy_text(env))
    assert evaluate_policy(env, policy, episodes=5)[2] == 1.0
    # Q-learning from a uniformly random behaviour (off-policy) learns a greedy policy that succeeds.
    table = QTable(16, 4)
    agent = TabularAgent(table, env, method="q_learning", epsilon=1.0, alpha=0.5, gamma=0.99, seed=0)
    for step in range(400):
        agent.step(step)
    assert evaluate_policy(env, table.greedy_policy(), episodes=5)[2] == 1.0
    # Text-only options are dropped, max_turns becomes the time limit; vector envs work too.
    env = make_env("align/FrozenLakeText-v0", max_turns=7, on_invalid="end")
    assert env.spec.max_episode_steps == 7
    vec = make_vec_env("align/MazeText-v0", 2, seed=0)
    assert isinstance(vec.single_action_space, gym.spaces.Discrete)
