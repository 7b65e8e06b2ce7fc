"""Tabular RL (align.rl.tabular): dynamic programming against exact solves, and model-free learners against
the values the model gives."""

import copy

import pytest
import torch

from align.rl.envs import make_env
from align.rl.mdp import TabularEnv, from_toy_text, maze, random_walk, slippery_grid
from align.rl.tabular import (
    QTable,
    TabularAgent,
    VTable,
    as_policy_matrix,
    epsilon_greedy,
    epsilon_greedy_probs,
    evaluate_policy,
    expected_sarsa_update,
    exponential_schedule,
    greedy,
    harmonic_schedule,
    linear_schedule,
    monte_carlo_update,
    policy_evaluation_exact,
    policy_evaluation_iterative,
    policy_iteration,
    q_from_v,
    q_learning_update,
    run_episode,
    sarsa_update,
    td0_update,
    uniform_policy,
    value_iteration,
)

METRIC_KEYS = {"episode/return", "episode/length", "td/error_abs_mean", "epsilon", "alpha"}
SMALL_MAZE = ["S..#", ".#..", "...G"]  # 3x4, shortest path 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frozenlake4():
    return from_toy_text(make_env("FrozenLake-v1", is_slippery=True), gamma=0.99)


# ------------------------------------------------------------------------------ dynamic programming


def test_value_and_policy_iteration_agree_on_frozenlake_8x8_slippery():
    mdp = from_toy_text(make_env("FrozenLake-v1", map_name="8x8", is_slippery=True), gamma=0.99)
    v_vi, q_vi, pi_vi, info = value_iteration(mdp, tol=1e-10)
    v_pi, pi_pi, info_pi = policy_iteration(mdp)
    assert info["converged"] and info["policy_loss_bound"] < 1e-7
    assert torch.allclose(v_vi, v_pi, atol=1e-6, rtol=0)
    # each method's policy, evaluated exactly, has the optimal values
    assert torch.allclose(policy_evaluation_exact(mdp, pi_vi), v_pi, atol=1e-6, rtol=0)
    assert torch.allclose(policy_evaluation_exact(mdp, pi_pi), v_pi, atol=1e-12, rtol=0)
    # v* is a fixed point of the Bellman optimality operator, and terminal states are worth 0
    assert torch.allclose(q_from_v(mdp, v_pi).amax(-1), v_pi, atol=1e-10, rtol=0)
    assert (v_pi[mdp.terminal] == 0).all()
    assert float(v_pi[0]) == pytest.approx(0.41464, abs=1e-5)
    v_it, iters = policy_evaluation_iterative(mdp, pi_pi, tol=1e-12)
    assert torch.allclose(v_it, v_pi, atol=1e-8, rtol=0) and iters > 10


def test_frozenlake_4x4_optimal_start_value(frozenlake4):
    v_vi, _, _, _ = value_iteration(frozenlake4)
    v_pi, _, info = policy_iteration(frozenlake4)
    assert float(v_vi[0]) == pytest.approx(0.54203, abs=1e-5)  # the known ~0.54 at gamma 0.99
    assert float(v_pi[0]) == pytest.approx(0.54203, abs=1e-5)
    assert info["policy_changes"][-1] == 0


def test_exact_evaluation_random_walk_and_improper_policy():
    mdp = random_walk(5, gamma=1.0)
    v = policy_evaluation_exact(mdp, uniform_policy(7, 2))
    assert torch.allclose(v, torch.tensor([0, 1, 2, 3, 4, 5, 0], dtype=torch.float64) / 6)  # S&B Example 6.2
    # with gamma = 1 a policy that never terminates has no value: a clear error, not a singular solve
    stuck = maze(SMALL_MAZE, gamma=1.0)
    with pytest.raises(ValueError, match="reach a terminal state"):
        policy_evaluation_exact(stuck, torch.zeros(12, dtype=torch.long))  # always LEFT
    # ... which policy iteration avoids by starting from the random policy
    v_star, pi, _ = policy_iteration(stuck)
    assert float(v_star[0]) == -5.0 and float(policy_evaluation_exact(stuck, pi)[0]) == -5.0


def test_greedy_ties_to_lowest_action_and_policy_matrix():
    q = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert greedy(q).argmax(-1).tolist() == [1, 0]
    assert torch.equal(
        as_policy_matrix(torch.tensor([2, 0]), 3), torch.tensor([[0.0, 0, 1], [1, 0, 0]], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="probability distributions"):
        as_policy_matrix(torch.tensor([[0.5, 0.6, 0.0]]), 3)


# --------------------------------------------------------------------------------- update rules, by hand


def test_update_rules_hand_computed():
    q = torch.tensor([[0.0, 1.0], [2.0, 4.0]], dtype=torch.float64)
    # Q-learning: target 1 + 0.5 * max(2, 4) = 3; delta = 3 - 0 = 3; Q <- 0 + 0.1 * 3
    assert q_learning_update(q, 0, 0, 1.0, 1, False, alpha=0.1, gamma=0.5) == pytest.approx(3.0)
    assert q[0, 0] == pytest.approx(0.3)
    # terminated: no bootstrap
    assert q_learning_update(q, 0, 1, 1.0, 1, True, alpha=1.0, gamma=0.5) == pytest.approx(0.0)
    # SARSA uses the action taken: target 1 + 0.5 * Q(1, 0) = 2; delta = 2 - 0.3
    assert sarsa_update(q, 0, 0, 1.0, 1, 0, False, alpha=0.5, gamma=0.5) == pytest.approx(1.7)
    assert q[0, 0] == pytest.approx(0.3 + 0.85)
    # expected SARSA with epsilon-greedy(0.5) at state 1: probs (0.25, 0.75) -> 0.25 * 2 + 0.75 * 4 = 3.5
    probs = epsilon_greedy_probs(q[1], 0.5)
    assert probs.tolist() == [0.25, 0.75]
    q2 = torch.zeros(2, 2, dtype=torch.float64)
    q2[1] = q[1]
    assert expected_sarsa_update(q2, 0, 1, 0.0, 1, False, alpha=1.0, gamma=1.0, probs_next=probs) == 3.5
    # TD(0)
    v = torch.tensor([0.0, 10.0], dtype=torch.float64)
    assert td0_update(v, 0, -1.0, 1, False, alpha=0.5, gamma=0.9) == pytest.approx(8.0)
    assert v[0] == pytest.approx(4.0)


def test_monte_carlo_first_vs_every_visit_by_hand():
    # S&B Exercise 5.5 style: s0 visited twice. Rewards 1, 2, 3 with gamma 1: G_0 = 6, G_1 = 5, G_2 = 3.
    episode = [(0, 0, 1.0), (0, 0, 2.0), (1, 0, 3.0)]
    v, n = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    errors = monte_carlo_update(v, episode, gamma=1.0, first_visit=True, counts=n)
    assert v.tolist() == [6.0, 3.0] and n.tolist() == [1.0, 1.0] and errors == [3.0, 6.0]
    v, n = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    monte_carlo_update(v, episode, gamma=1.0, first_visit=False, counts=n)
    assert v.tolist() == [5.5, 3.0] and n.tolist() == [2.0, 1.0]  # mean of G_0 = 6 and G_1 = 5
    q = torch.zeros(2, 1, dtype=torch.float64)
    monte_carlo_update(q, episode, gamma=0.5, alpha=0.5)  # constant alpha (eq. 6.1), first visit
    assert q[:, 0].tolist() == [0.5 * (1 + 0.5 * 2 + 0.25 * 3), 1.5]
    with pytest.raises(ValueError, match="counts"):
        monte_carlo_update(v, episode, gamma=1.0)


def test_epsilon_greedy_and_schedules():
    gen = torch.Generator().manual_seed(0)
    q_row = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    draws = torch.tensor([epsilon_greedy(q_row, 0.3, gen) for _ in range(3000)])
    freq = torch.bincount(draws, minlength=3).double() / 3000
    assert torch.allclose(freq, epsilon_greedy_probs(q_row, 0.3), atol=0.03)  # (0.1, 0.8, 0.1)
    assert all(epsilon_greedy(q_row, 0.0, gen) == 1 for _ in range(20))
    tied = torch.tensor([epsilon_greedy(torch.zeros(2), 0.0, gen) for _ in range(400)])
    assert 100 < int(tied.sum()) < 300  # ties broken at random
    lin = linear_schedule(1.0, 0.1, 10)
    assert [lin(0), lin(5), lin(10), lin(99)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    exp = exponential_schedule(1.0, 0.0, 0.5)
    assert [exp(0), exp(2)] == pytest.approx([1.0, 0.25])
    har = harmonic_schedule()
    assert [har(0), har(1), har(3)] == pytest.approx([1.0, 0.5, 0.25])


# ---------------------------------------------------------------------------------- learning to q*


def _train(table, env, n, **kw):
    agent = TabularAgent(table, env, **kw)
    metrics = [agent.step(i) for i in range(n)]
    return agent, metrics


def test_q_learning_converges_to_q_star_on_small_maze():
    """Deterministic 3x4 maze, gamma 0.9. Q-learning is off-policy: a fixed epsilon = 0.5 behaviour
    suffices for its table to reach q*. Tolerance 1e-2 on every (s, a)."""
    mdp = maze(SMALL_MAZE, gamma=0.9)
    _, q_star, _, _ = value_iteration(mdp)
    table = QTable(12, 4)
    _, metrics = _train(
        table, TabularEnv(mdp), 300, method="q_learning", gamma=0.9, epsilon=0.5, alpha=0.5, seed=0
    )
    assert set(metrics[-1]) >= METRIC_KEYS
    assert float((table.q - q_star).abs().max()) < 1e-2
    assert metrics[-1]["alpha"] == 0.5 and metrics[-1]["epsilon"] == 0.5


@pytest.mark.parametrize("method", ["sarsa", "expected_sarsa"])
def test_sarsa_with_epsilon_to_zero_converges_to_q_star(method):
    """SARSA learns q of its own epsilon-greedy policy; as epsilon -> 0 that is q* (S&B section 6.4).
    Exploring starts keep every (s, a) pair tried after epsilon has reached 0, so the whole table, not
    just the greedy path, converges within the run. Tolerance 1e-2 on every (s, a)."""
    mdp = maze(SMALL_MAZE, gamma=0.9)
    _, q_star, _, _ = value_iteration(mdp)
    table = QTable(12, 4)
    _, metrics = _train(
        table,
        TabularEnv(mdp),
        1200,
        method=method,
        gamma=0.9,
        epsilon=linear_schedule(0.5, 0.0, 600),
        alpha=0.5,
        seed=1,
        exploring_starts=True,
    )
    assert metrics[-1]["epsilon"] == 0.0
    assert float((table.q - q_star).abs().max()) < 1e-2


@pytest.mark.parametrize(
    "method, gamma, alpha, tol",
    [
        ("mc_first_visit", 1.0, None, 0.05),
        ("mc_every_visit", 0.9, None, 0.05),
        ("td0", 1.0, linear_schedule(0.1, 0.005, 2000), 0.05),
        ("td0", 0.9, linear_schedule(0.1, 0.005, 2000), 0.05),
    ],
)
def test_prediction_matches_exact_v_pi_on_random_walk(method, gamma, alpha, tol):
    """v_pi of the uniform policy on the 5-state random walk (S&B Example 6.2), by sample averages (MC)
    or TD(0) with a decaying step size, within `tol` of the linear solve after 2000 episodes."""
    mdp = random_walk(5, gamma=gamma)
    policy = uniform_policy(7, 2)
    v_pi = policy_evaluation_exact(mdp, policy)
    table = VTable(7)
    _train(table, TabularEnv(mdp), 2000, method=method, gamma=gamma, alpha=alpha, policy=policy, seed=0)
    assert float((table.v - v_pi).abs().max()) < tol


def test_prediction_on_slippery_grid_with_stochastic_policy():
    """A stochastic policy (0.7 toward the goal, else uniform) on a 3x3 slippery grid, gamma 0.9:
    every-visit MC with sample averages within 0.05 of the exact v_pi."""
    mdp = slippery_grid(3, 3, gamma=0.9)
    policy = torch.full((9, 4), 0.1, dtype=torch.float64)
    policy[:, 1] = policy[:, 2] = 0.4  # DOWN and RIGHT
    v_pi = policy_evaluation_exact(mdp, policy)
    table = VTable(9)
    env = TabularEnv(mdp)
    _train(table, env, 1500, method="mc_every_visit", gamma=0.9, alpha=None, policy=policy, seed=0)
    assert float((table.v - v_pi).abs().max()) < 0.05


# ------------------------------------------------------------------------------------ agent plumbing


def test_agent_resume_equals_uninterrupted_run():
    mdp = slippery_grid(3, 3, gamma=0.9)
    kwargs = dict(method="sarsa", gamma=0.9, epsilon=linear_schedule(1.0, 0.1, 8), alpha=0.3, seed=5)
    full_table = QTable(9, 4)
    _, full_metrics = _train(full_table, TabularEnv(mdp), 8, **kwargs)

    first_table = QTable(9, 4)
    agent, first_metrics = _train(first_table, TabularEnv(mdp), 4, **kwargs)
    # state_dict() returns references to the live buffers (PyTorch's convention): a checkpoint copies
    # them, as saving to disk does, before the run goes on
    table_state, agent_state = copy.deepcopy(first_table.state_dict()), copy.deepcopy(agent.state_dict())
    agent.step(4)

    resumed_table = QTable(9, 4)
    resumed_table.load_state_dict(table_state)
    resumed = TabularAgent(resumed_table, TabularEnv(mdp), **kwargs)
    resumed.load_state_dict(agent_state)
    rest = [resumed.step(i) for i in range(4, 8)]
    assert first_metrics + rest == full_metrics
    assert torch.equal(resumed_table.q, full_table.q)
    assert resumed.episodes == 8 and resumed.env_steps == sum(m["episode/length"] for m in full_metrics)


def test_agent_input_errors():
    env = TabularEnv(maze(SMALL_MAZE))
    with pytest.raises(ValueError, match="method must be one of"):
        TabularAgent(QTable(12, 4), env, method="dyna")
    with pytest.raises(ValueError, match="VTable"):
        TabularAgent(QTable(12, 4), env, method="td0")
    with pytest.raises(ValueError, match="policy"):
        TabularAgent(VTable(12), env, method="td0")
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        TabularAgent(QTable(3, 4), env)
    with pytest.raises(ValueError, match="Discrete observation"):
        TabularAgent(QTable(12, 4), make_env("CartPole-v1"))
    with pytest.raises(ValueError, match="alpha must be in"):
        TabularAgent(QTable(12, 4), env, alpha=1.5)


@pytest.mark.parametrize(
    "call",
    [
        lambda g: TabularAgent(QTable(12, 4), TabularEnv(maze(SMALL_MAZE)), gamma=g),
        lambda g: q_learning_update(torch.zeros(2, 2), 0, 0, 0.0, 1, False, alpha=0.1, gamma=g),
        lambda g: sarsa_update(torch.zeros(2, 2), 0, 0, 0.0, 1, 0, False, alpha=0.1, gamma=g),
        lambda g: expected_sarsa_update(
            torch.zeros(2, 2), 0, 0, 0.0, 1, False, alpha=0.1, gamma=g, probs_next=torch.ones(2) / 2
        ),
        lambda g: td0_update(torch.zeros(2), 0, 0.0, 1, False, alpha=0.1, gamma=g),
        lambda g: monte_carlo_update(torch.zeros(2), [(0, 0, 1.0)], gamma=g, alpha=0.1),
        lambda g: maze(SMALL_MAZE, gamma=g),
        lambda g: slippery_grid(gamma=g),
        lambda g: from_toy_text(make_env("FrozenLake-v1"), gamma=g),
        lambda g: maze(SMALL_MAZE).with_gamma(g),
    ],
)
@pytest.mark.parametrize("gamma", [-0.5, 1.01])
def test_gamma_outside_unit_interval_is_an_error(call, gamma):
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        call(gamma)


def test_run_episode_and_evaluate_policy_on_maze():
    mdp = maze(SMALL_MAZE, gamma=1.0)
    env = TabularEnv(mdp)
    _, _, pi, _ = value_iteration(mdp)
    actions = pi.argmax(-1).tolist()
    traj = run_episode(env, lambda s: actions[s], seed=0)
    assert len(traj) == 5 and traj[-1].terminated and traj[-1].s_next == 11
    assert sum(t.r for t in traj) == -5.0
    assert evaluate_policy(env, pi, episodes=5, seed=0) == (-5.0, 0.0, 1.0)
    # a policy that bumps into the wall forever is cut by max_steps and does not succeed
    mean, _, success = evaluate_policy(env, torch.zeros(12, dtype=torch.long), episodes=2, max_steps=7)
    assert mean == -7.0 and success == 0.0


def _success_within(mdp, policy, horizon):
    """Exact probability of reaching a goal within `horizon` steps (the TimeLimit), from the model."""
    P_pi = torch.einsum("sa,sat->st", as_policy_matrix(policy, mdp.num_actions), mdp.P)
    d = mdp.initial.clone()
    for _ in range(horizon):
        d = d @ P_pi  # terminal states are absorbing self-loops, so mass that arrives stays
    return float(d[mdp.cells("G")].sum())


@pytest.mark.slow
def test_q_learning_frozenlake_4x4_reaches_optimal_success_rate(frozenlake4):
    """Q-learning on FrozenLake 4x4 slippery (gamma 0.99, 100-step TimeLimit) finds a greedy policy whose
    success probability equals the optimal policy's, 0.740 (exact, from the model); about 15-20 s."""
    env = make_env("FrozenLake-v1", is_slippery=True)
    _, _, pi_star, _ = value_iteration(frozenlake4)
    optimal = _success_within(frozenlake4, pi_star, 100)
    assert optimal == pytest.approx(0.7402, abs=1e-4)
    table = QTable(16, 4)
    n = 12_000
    _train(
        table,
        env,
        n,
        method="q_learning",
        gamma=0.99,
        epsilon=linear_schedule(1.0, 0.05, n // 2),
        alpha=linear_schedule(0.1, 0.01, n),
        seed=0,
    )
    learned = _success_within(frozenlake4, table.greedy_policy(), 100)
    assert learned == pytest.approx(optimal, abs=1e-3)
    _, _, rate = evaluate_policy(env, table.greedy_policy(), episodes=1000, seed=0)
    assert rate == pytest.approx(optimal, abs=0.04)
