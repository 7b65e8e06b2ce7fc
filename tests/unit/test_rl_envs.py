"""Environments, tabular MDP models and their text rendering (align.rl.envs, align.rl.mdp, align.rl.render)."""

from collections import deque

import gymnasium as gym
import numpy as np
import pytest
import torch

from align.rl.envs import (
    SUPPORTED_ENVS,
    action_space_kind,
    make_env,
    make_vec_env,
    require_discrete,
    resolve_env_id,
)
from align.rl.mdp import (
    DYNA_MAZE,
    TabularEnv,
    TabularMDP,
    from_toy_text,
    maze,
    random_walk,
    slippery_grid,
)
from align.rl.render import policy_map
from align.rl.tabular import uniform_policy, value_iteration

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------- envs


@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        ("CartPole-v1", {}),
        ("Acrobot-v1", {}),
        ("FrozenLake-v1", {"map_name": "8x8", "is_slippery": False}),
        ("CliffWalking-v0", {}),
        ("Taxi-v3", {}),
        ("align/Maze-v0", {}),
        ("align/SlipperyGrid-v0", {"rows": 3, "cols": 3}),
        ("align/RandomWalk-v0", {}),
    ],
)
def test_make_env_runs_and_is_discrete(env_id, kwargs):
    env = make_env(env_id, seed=0, **kwargs)
    obs, _ = env.reset()
    assert env.observation_space.contains(obs)
    obs, r, terminated, truncated, _ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and isinstance(float(r), float)
    assert action_space_kind(env) == "discrete"
    require_discrete(env, "DQN")  # no error
    env.close()


def test_old_toy_text_ids_are_aliases_of_gymnasium_1x_ids():
    assert resolve_env_id("CliffWalking-v0") == "CliffWalking-v1"
    assert resolve_env_id("Taxi-v3") == "Taxi-v4"
    assert make_env("CliffWalking-v0").spec.id == "CliffWalking-v1"


def test_unknown_env_id_names_it_lists_supported_and_suggests():
    with pytest.raises(ValueError, match="CartPol-v1") as err:
        make_env("CartPol-v1")
    msg = str(err.value)
    assert "Did you mean 'CartPole-v1'" in msg
    assert all(env_id in msg for env_id in SUPPORTED_ENVS)
    with pytest.raises(ValueError, match="NoSuchEnv-v9"):
        make_vec_env("NoSuchEnv-v9", 2, seed=0)


def test_continuous_env_rejected_by_discrete_only_algorithm():
    env = make_env("Pendulum-v1")
    assert action_space_kind(env) == "continuous"
    with pytest.raises(ValueError, match="DQN.*Pendulum-v1.*continuous"):
        require_discrete(env, "DQN")


def test_make_env_seed_is_reproducible():
    def rollout(seed):
        env = make_env("align/SlipperyGrid-v0", seed=seed)
        s, _ = env.reset()
        out = [s]
        for _ in range(20):
            s, *_ = env.step(2)
            out.append(s)
        return out

    assert rollout(3) == rollout(3)


def test_make_vec_env_sync_seeded():
    envs = make_vec_env("CartPole-v1", 3, seed=7)
    again = make_vec_env("CartPole-v1", 3, seed=7)
    obs, _ = envs.reset(seed=7)
    obs2, _ = again.reset(seed=7)
    assert obs.shape == (3, 4) and np.array_equal(obs, obs2)
    assert action_space_kind(envs) == "discrete"
    require_discrete(envs, "PPO")
    cont = make_vec_env("Pendulum-v1", 2, seed=0)
    with pytest.raises(ValueError, match="Pendulum-v1"):
        require_discrete(cont, "DQN")
    for e in (envs, again, cont):
        e.close()


# ----------------------------------------------------------------------------------------------- mdp


def test_tabular_mdp_validation_messages():
    P = torch.full((2, 1, 2), 0.5, dtype=torch.float64)
    R = torch.zeros(2, 1)
    TabularMDP(P=P, R=R, gamma=0.9)  # valid
    bad = P.clone()
    bad[1, 0, 0] = 0.7
    with pytest.raises(ValueError, match=r"P\[1, 0, :\] sums to 1.2"):
        TabularMDP(P=bad, R=R, gamma=0.9)
    with pytest.raises(ValueError, match=r"R must have shape \(2, 1\)"):
        TabularMDP(P=P, R=torch.zeros(2, 2), gamma=0.9)
    with pytest.raises(ValueError, match=r"P must have shape \(S, A, S\)"):
        TabularMDP(P=torch.ones(2, 1, 3) / 3, R=R, gamma=0.9)
    for g in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
            TabularMDP(P=P, R=R, gamma=g)
    with pytest.raises(ValueError, match="initial puts probability on terminal"):
        TabularMDP(
            P=P, R=R, gamma=0.9, terminal=torch.tensor([True, False]), initial=torch.tensor([1.0, 0.0])
        )


def test_slippery_grid_transition_probabilities():
    mdp = slippery_grid(3, 3, p_intended=0.5)
    center = 1 * 3 + 1  # LEFT, DOWN, RIGHT, UP lead to 3, 7, 5, 1
    right = 2
    probs = mdp.P[center, right]
    assert probs[5] == pytest.approx(0.5)  # intended: right
    for other in (3, 7, 1):  # the other three neighbours share the rest equally
        assert probs[other] == pytest.approx(0.5 / 3)
    assert float(probs.sum()) == pytest.approx(1.0)
    # a corner: moves off the grid stay put, their mass lands on the corner itself
    corner_up = mdp.P[0, 3]  # UP from (0, 0): intended is off-grid
    assert corner_up[0] == pytest.approx(0.5 + 0.5 / 3)  # UP (0.5) and LEFT (1/6) both bump
    assert corner_up[1] == pytest.approx(0.5 / 3) and corner_up[3] == pytest.approx(0.5 / 3)
    # goal: +1 on entering, terminal
    goal = 8
    assert bool(mdp.terminal[goal]) and mdp.R3[5, 1, goal] == 1.0
    assert mdp.R[5, 1] == pytest.approx(0.5)


def _bfs_distance(layout, start, goal):
    rows, cols = len(layout), len(layout[0])
    dist = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            nr, nc = r + dr, c + dc
            if 0 <= nr < rows and 0 <= nc < cols and layout[nr][nc] != "#" and (nr, nc) not in dist:
                dist[(nr, nc)] = dist[(r, c)] + 1
                queue.append((nr, nc))
    return dist[goal]


@pytest.mark.parametrize("layout", [None, ["S.#.", ".##G", "...."]])
def test_maze_optimal_value_is_minus_shortest_path(layout):
    mdp = maze(layout, gamma=1.0)
    grid = DYNA_MAZE if layout is None else layout
    find = lambda ch: next((r, c) for r, row in enumerate(grid) for c, x in enumerate(row) if x == ch)  # noqa: E731
    (sr, sc), goal = find("S"), find("G")
    v, _, _, _ = value_iteration(mdp)
    start = sr * len(grid[0]) + sc
    assert float(v[start]) == -_bfs_distance(grid, (sr, sc), goal)
    if layout is None:
        assert float(v[start]) == -14.0  # S&B Figure 8.2's Dyna maze
    # bumping a wall or the edge stays put and still costs -1
    assert mdp.P[start, 0, start] == 1.0 and mdp.R[start, 0] == -1.0


def test_from_toy_text_frozenlake_model():
    env = make_env("FrozenLake-v1", is_slippery=True)
    mdp = from_toy_text(env, gamma=0.99)
    assert mdp.num_states == 16 and mdp.num_actions == 4 and mdp.shape == (4, 4)
    assert mdp.action_names == ("LEFT", "DOWN", "RIGHT", "UP")
    assert set(torch.nonzero(mdp.terminal).flatten().tolist()) == {5, 7, 11, 12, 15}  # holes + goal
    assert torch.allclose(mdp.P.sum(-1), torch.ones(16, 4, dtype=torch.float64))
    # from 14, RIGHT slips to 10 / 14 / 15 (UP / RIGHT / DOWN -> stays): 1/3 chance of the goal's +1
    assert mdp.R[14, 2] == pytest.approx(1 / 3)
    assert mdp.initial[0] == 1.0


def test_from_toy_text_cliffwalking_and_taxi():
    cliff = from_toy_text(make_env("CliffWalking-v0"), gamma=1.0)
    assert cliff.action_names == ("UP", "RIGHT", "DOWN", "LEFT")
    assert torch.nonzero(cliff.terminal).flatten().tolist() == [47]
    assert cliff.P[36, 1, 36] == 1.0 and cliff.R[36, 1] == -100.0  # into the cliff: back to start
    v, _, _, _ = value_iteration(cliff)
    assert float(v[36]) == -13.0  # up, 11 right, down
    taxi = from_toy_text(make_env("Taxi-v3"), gamma=0.9)
    assert taxi.num_states == 500 and taxi.num_actions == 6 and int(taxi.terminal.sum()) == 4
    assert taxi.shape is None and taxi.R3 is None  # Taxi's reward is a function of (s, a)


def test_tabular_env_samples_from_the_model():
    mdp = slippery_grid(3, 3)
    env = TabularEnv(mdp)
    counts = np.zeros(9)
    env.reset(seed=0)
    n = 3000
    for _ in range(n):
        env.reset(options={"state": 4})
        s, r, terminated, truncated, _ = env.step(2)
        counts[s] += 1
    assert np.allclose(counts / n, mdp.P[4, 2].numpy(), atol=0.03)
    # entering the goal pays +1 and terminates
    env.reset(options={"state": 5})
    for _ in range(50):
        s, r, terminated, _, _ = env.step(1)
        if s == 8:
            assert terminated and r == 1.0
            break
        env.reset(options={"state": 5})
    else:
        pytest.fail("never reached the goal")
    with pytest.raises(ValueError, match="not a non-terminal state"):
        env.reset(options={"state": 8})


def test_registered_env_truncates_by_time_limit():
    env = make_env("align/Maze-v0", max_episode_steps=5)
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(5)]  # LEFT from the start bumps the wall forever
    assert flags[-1] == (False, True) and all(f == (False, False) for f in flags[:-1])
    assert isinstance(env.unwrapped, TabularEnv)
    assert gym.spec("align/Maze-v0").max_episode_steps == 500


def test_random_walk_layout_and_values():
    mdp = random_walk(5)
    assert mdp.layout == ("H..S..G",) and mdp.initial[3] == 1.0
    assert torch.nonzero(mdp.terminal).flatten().tolist() == [0, 6]


# -------------------------------------------------------------------------------------------- render


def test_policy_map_frozenlake_arrows_markers_values():
    mdp = from_toy_text(make_env("FrozenLake-v1"), gamma=0.99)
    v, _, pi, _ = value_iteration(mdp)
    text = policy_map(mdp, pi, values=v)
    lines = text.splitlines()
    assert lines[0].startswith("policy") and "values" in lines[0]
    assert len(lines) == 5
    # the optimal policy at the start is LEFT (index 0 in FrozenLake's order) -> "←"; holes and goal marked
    assert lines[1].split()[0] == "←"
    assert lines[2].split()[:4] == ["←", "H", "←", "H"]
    assert lines[4].split()[3] == "G"
    assert "0.54" in lines[1]


def test_policy_map_respects_each_envs_action_order():
    cliff = from_toy_text(make_env("CliffWalking-v0"), gamma=1.0)
    ups = torch.zeros(48, dtype=torch.long)  # action 0 is UP in CliffWalking
    first_row = policy_map(cliff, ups).splitlines()[0]
    assert set(first_row.split()) == {"↑"}
    assert policy_map(cliff, ups).splitlines()[3].split()[1:11] == ["C"] * 10
    # a bare shape uses FrozenLake's LEFT, DOWN, RIGHT, UP; ties show every best action
    text = policy_map((1, 2), torch.tensor([[0.5, 0, 0.5, 0], [0, 1.0, 0, 0]]), goals=[])
    assert text.split() == ["←→", "↓"]


def test_policy_map_uniform_and_no_grid():
    mdp = slippery_grid(2, 2)
    text = policy_map(mdp, uniform_policy(4, 4))
    assert text.splitlines()[0].split() == ["←↓→↑", "←↓→↑"] and text.splitlines()[1].split()[-1] == "G"
    taxi = from_toy_text(make_env("Taxi-v3"), gamma=0.9)
    lines = policy_map(taxi, torch.full((500,), 4), values=torch.zeros(500)).splitlines()
    assert len(lines) == 500 and lines[1].split() == ["1", "PICKUP", "0.00"]
    assert lines[0].split()[1] == "*"  # state 0 is terminal
