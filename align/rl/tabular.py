"""Tabular reinforcement learning: dynamic programming with a model, and TD / Monte Carlo without one.

Everything is a torch float64 tensor so that the exact methods are exact to rounding:

    v        state values                        (S,)
    q        action values                       (S, A)
    policy   a stochastic matrix pi(a | s)        (S, A)   rows sum to 1; an (S,) vector of action
                                                            indices is accepted wherever a policy is
Terminal states have value 0 and the next-state value after a terminating transition is masked out
(see `align.rl.mdp`). Section and equation numbers refer to Sutton & Barto, Reinforcement Learning: An
Introduction, 2nd edition (2018).

Model-based (chapter 4): `policy_evaluation_exact`, `policy_evaluation_iterative`, `value_iteration`,
`policy_iteration`, `q_from_v`, `greedy`.

Model-free (chapters 5 and 6): the tables are `QTable` / `VTable` modules (buffers, so `state_dict()`
checkpoints them like any model); the update rules are plain functions of (table, transition,
hyperparameters) that change the table in place and return the error they corrected:
`q_learning_update` (6.8), `sarsa_update` (6.7), `expected_sarsa_update` (6.9), `td0_update` (6.2),
`monte_carlo_update` (5.1, 5.4, 6.1). `TabularAgent` runs one episode of interaction and updates per
call, the unit of work a trainer step drives.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from align.rl.mdp import DTYPE, TabularMDP, check_gamma

# Policies as matrices


def as_policy_matrix(policy: Tensor | Sequence[int], num_actions: int) -> Tensor:
    """(S, A) float64 stochastic matrix from an (S, A) matrix or an (S,) vector of action indices."""
    policy = torch.as_tensor(policy)
    if policy.dim() == 1:
        if policy.dtype.is_floating_point and not torch.equal(policy, policy.round()):
            raise ValueError("a 1-D policy must hold action indices")
        idx = policy.long()
        if (idx < 0).any() or (idx >= num_actions).any():
            raise ValueError(f"policy actions must be in [0, {num_actions}), got {idx.min()}..{idx.max()}")
        return nn.functional.one_hot(idx, num_actions).to(DTYPE)
    policy = policy.to(DTYPE)
    if policy.dim() != 2 or policy.shape[1] != num_actions:
        raise ValueError(f"policy must have shape (S, {num_actions}) or (S,), got {tuple(policy.shape)}")
    if (policy < -1e-12).any() or ((policy.sum(1) - 1.0).abs() > 1e-8).any():
        raise ValueError("policy rows must be probability distributions (non-negative, sum to 1)")
    return policy


def greedy(q: Tensor, *, atol: float = 0.0) -> Tensor:
    """Greedy policy (S, A) one-hot: argmax_a q(s, a), ties (within `atol`) to the lowest action index.

    The deterministic tie-break makes policy iteration terminate (section 4.3) and results reproducible.
    """
    best = q.amax(dim=-1, keepdim=True)  # amax: max(dim=) is slow on tiny tensors under CPU load
    idx = (q >= best - atol).to(torch.int8).argmax(dim=-1)  # argmax returns the first maximum
    return nn.functional.one_hot(idx, q.shape[-1]).to(DTYPE)


def uniform_policy(num_states: int, num_actions: int) -> Tensor:
    """The equiprobable random policy (S, A), the usual starting point (Figure 4.1)."""
    return torch.full((num_states, num_actions), 1.0 / num_actions, dtype=DTYPE)


# Dynamic programming (chapter 4)


def q_from_v(mdp: TabularMDP, v: Tensor) -> Tensor:
    """q(s, a) = r(s, a) + gamma * sum_s' p(s'|s,a) v(s') with v masked to 0 on terminal states (eq. 4.6).

    Rows of terminal states are 0. Returns (S, A).
    """
    v_next = torch.where(mdp.terminal, 0.0, v.to(DTYPE))
    q = mdp.R + mdp.gamma * (mdp.P @ v_next)
    return torch.where(mdp.terminal.unsqueeze(-1), 0.0, q)


def _policy_model(mdp: TabularMDP, policy: Tensor) -> tuple[Tensor, Tensor]:
    """(P_pi (S, S), r_pi (S,)) of a policy: the Markov reward process it induces."""
    P_pi = torch.einsum("sa,sat->st", policy, mdp.P)
    r_pi = (policy * mdp.R).sum(-1)
    return P_pi, r_pi


def _check_proper(mdp: TabularMDP, P_pi: Tensor) -> None:
    """With gamma = 1 a value is finite only if a terminal state is reached with probability 1.

    In a finite chain that holds iff every state has a positive-probability path to a terminal state.
    """
    reach = mdp.terminal.clone()
    while True:
        new = reach | (P_pi[:, reach].sum(-1) > 0)
        if torch.equal(new, reach):
            break
        reach = new
    if not reach.all():
        bad = torch.nonzero(~reach).flatten().tolist()
        raise ValueError(
            f"with gamma = 1 the policy must reach a terminal state with probability 1, but from states "
            f"{bad[:10]}{'...' if len(bad) > 10 else ''} it never does (their value is undefined); use gamma < 1 "
            "or a policy that terminates"
        )


def policy_evaluation_exact(mdp: TabularMDP, policy: Tensor) -> Tensor:
    """v_pi by solving the Bellman equation (eq. 4.4) as a linear system: v = (I - gamma P_pi)^-1 r_pi.

    Only non-terminal states N enter the system, (I - gamma P_pi[N, N]) v_N = r_pi[N]; terminal states
    have v = 0, which is the next-state mask. With gamma = 1 the policy must terminate with probability 1
    from every state (otherwise the matrix is singular): a ValueError says so. Returns v (S,).
    """
    pi = as_policy_matrix(policy, mdp.num_actions)
    P_pi, r_pi = _policy_model(mdp, pi)
    if mdp.gamma == 1.0:
        _check_proper(mdp, P_pi)
    live = ~mdp.terminal
    n = int(live.sum())
    A = torch.eye(n, dtype=DTYPE) - mdp.gamma * P_pi[live][:, live]
    v = torch.zeros(mdp.num_states, dtype=DTYPE)
    v[live] = torch.linalg.solve(A, r_pi[live])
    return v


def policy_evaluation_iterative(
    mdp: TabularMDP, policy: Tensor, *, tol: float = 1e-10, max_iters: int = 100_000
) -> tuple[Tensor, int]:
    """v_pi by iterating the Bellman expectation backup v <- r_pi + gamma P_pi v (eq. 4.5), synchronously.

    Stops when max_s |v_{k+1}(s) - v_k(s)| < tol; then ||v_{k+1} - v_pi||_inf <= tol * gamma / (1 - gamma).
    Warns if `max_iters` is reached first. Returns (v (S,), iterations).
    """
    pi = as_policy_matrix(policy, mdp.num_actions)
    P_pi, r_pi = _policy_model(mdp, pi)
    live = (~mdp.terminal).to(DTYPE)
    v = torch.zeros(mdp.num_states, dtype=DTYPE)
    delta = math.inf
    for it in range(1, max_iters + 1):
        v_new = live * (r_pi + mdp.gamma * (P_pi @ (live * v)))
        delta = float((v_new - v).abs().max())
        v = v_new
        if delta < tol:
            return v, it
    warnings.warn(
        f"policy evaluation did not converge in {max_iters} iterations (last change {delta:.3g} >= tol {tol:g})",
        stacklevel=2,
    )
    return v, max_iters


def value_iteration(
    mdp: TabularMDP, *, tol: float = 1e-10, max_iters: int = 100_000
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """Optimal values by value iteration (eq. 4.10): v_{k+1}(s) = max_a [r(s,a) + gamma sum_s' p v_k(s')].

    Stops when the Bellman residual ||T v_k - v_k||_inf < tol and returns v = T v_k. Bounds (for
    gamma < 1, T a gamma-contraction): ||v - v*||_inf <= tol * gamma / (1 - gamma), and the greedy policy
    is near-optimal, ||v_greedy - v*||_inf <= tol * 2 gamma / (1 - gamma) (Williams & Baird 1993). With
    gamma = 1 there is no such bound; it converges on episodic tasks where every policy worth following
    terminates (stochastic shortest path). Warns if `max_iters` is reached first.

    Returns (v (S,), q (S, A), greedy policy (S, A) one-hot with ties to the lowest action, info) where
    info = {"iterations", "residual", "converged", "value_error_bound", "policy_loss_bound"}.
    """
    v = torch.zeros(mdp.num_states, dtype=DTYPE)
    residual = math.inf
    it = 0
    while it < max_iters and residual >= tol:
        v_new = q_from_v(mdp, v).amax(dim=-1)
        residual = float((v_new - v).abs().max())
        v = v_new
        it += 1
    converged = residual < tol
    if not converged:
        warnings.warn(
            f"value iteration did not converge in {max_iters} iterations (residual {residual:.3g} >= tol {tol:g})",
            stacklevel=2,
        )
    q = q_from_v(mdp, v)
    g = mdp.gamma
    factor = g / (1.0 - g) if g < 1.0 else math.inf
    info = {
        "iterations": it,
        "residual": residual,
        "converged": converged,
        "value_error_bound": residual * factor,
        "policy_loss_bound": 2.0 * residual * factor,
    }
    return v, q, greedy(q, atol=1e-12), info


def policy_iteration(
    mdp: TabularMDP, *, policy: Tensor | None = None, max_iters: int = 1_000
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Optimal policy by policy iteration (section 4.3): exact evaluation, then greedy improvement.

    Starts from `policy` (default: the equiprobable random policy, which terminates with probability 1
    on any episodic task, so gamma = 1 works too). Improvement picks argmax_a q_pi(s, a) with ties
    (within 1e-12) to the lowest action index. Stops when the policy is stable, or when an improvement
    leaves v unchanged (then v already satisfies the Bellman optimality equation, and the policies differ
    only between equally good actions). Returns (v* (S,), policy (S, A) one-hot, info) with
    info = {"iterations", "policy_changes": [number of states whose action changed, per iteration]}.
    """
    pi = (
        uniform_policy(mdp.num_states, mdp.num_actions)
        if policy is None
        else as_policy_matrix(policy, mdp.num_actions)
    )
    v = policy_evaluation_exact(mdp, pi)
    changes: list[int] = []
    for it in range(1, max_iters + 1):
        new_pi = greedy(q_from_v(mdp, v), atol=1e-12)
        changed = int((new_pi != pi).any(dim=-1).sum())
        changes.append(changed)
        if changed == 0:
            return v, new_pi, {"iterations": it, "policy_changes": changes}
        new_v = policy_evaluation_exact(mdp, new_pi)
        stalled = float((new_v - v).abs().max()) <= 1e-12 * max(1.0, float(v.abs().max()))
        pi, v = new_pi, new_v
        if stalled:
            return v, pi, {"iterations": it, "policy_changes": changes}
    warnings.warn(f"policy iteration did not stabilise in {max_iters} iterations", stacklevel=2)
    return v, pi, {"iterations": max_iters, "policy_changes": changes}


# Tables


class QTable(nn.Module):
    """Action-value table Q(s, a), a (S, A) float64 buffer `q`, plus visit counts `counts` (S, A).

    The counts drive sample-average step sizes (alpha = 1 / N(s, a), section 2.4) when a learner is
    given alpha=None. Buffers, not parameters: no gradient touches a table, yet `state_dict()` holds it.
    """

    def __init__(self, num_states: int, num_actions: int, init: float = 0.0):
        super().__init__()
        self.register_buffer("q", torch.full((num_states, num_actions), float(init), dtype=DTYPE))
        self.register_buffer("counts", torch.zeros(num_states, num_actions, dtype=DTYPE))

    @property
    def table(self) -> Tensor:
        return self.q

    def forward(self, s: Tensor | int) -> Tensor:
        """Q(s, .) for a state or a batch of states: (A,) or (B, A)."""
        return self.q[s]

    def greedy_policy(self) -> Tensor:
        return greedy(self.q)

    def values(self) -> Tensor:
        """max_a Q(s, a), the greedy state values (S,)."""
        return self.q.amax(dim=-1)


class VTable(nn.Module):
    """State-value table V(s), an (S,) float64 buffer `v`, plus visit counts `counts` (S,)."""

    def __init__(self, num_states: int, init: float = 0.0):
        super().__init__()
        self.register_buffer("v", torch.full((num_states,), float(init), dtype=DTYPE))
        self.register_buffer("counts", torch.zeros(num_states, dtype=DTYPE))

    @property
    def table(self) -> Tensor:
        return self.v

    def forward(self, s: Tensor | int) -> Tensor:
        return self.v[s]


# Update rules: change the table in place, return the error they corrected (target - old estimate)


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return alpha


def _correct(table: Tensor, key: Any, target: float, alpha: float) -> float:
    """table[key] += alpha * delta with delta = target - table[key]; returns delta."""
    delta = target - float(table[key])
    table[key] += alpha * delta
    return delta


def q_learning_update(
    q: Tensor, s: int, a: int, r: float, s_next: int, terminated: bool, *, alpha: float, gamma: float
) -> float:
    """Q-learning (eq. 6.8): Q(S,A) <- Q(S,A) + alpha [R + gamma max_a Q(S', a) - Q(S,A)].

    Off-policy: the target follows the greedy policy whatever the behaviour. After a terminating
    transition the target is R alone; after a truncated one it still bootstraps (pass terminated=False).
    Returns the TD error delta.
    """
    alpha, gamma = _check_alpha(alpha), check_gamma(gamma)
    return _correct(q, (s, a), r if terminated else r + gamma * float(q[s_next].max()), alpha)


def sarsa_update(
    q: Tensor,
    s: int,
    a: int,
    r: float,
    s_next: int,
    a_next: int,
    terminated: bool,
    *,
    alpha: float,
    gamma: float,
) -> float:
    """SARSA (eq. 6.7): Q(S,A) <- Q(S,A) + alpha [R + gamma Q(S', A') - Q(S,A)], A' the action taken next.

    On-policy: it learns q of the behaviour policy; with epsilon-greedy behaviour and epsilon -> 0
    (GLIE) it converges to q* (section 6.4). Returns the TD error delta.
    """
    alpha, gamma = _check_alpha(alpha), check_gamma(gamma)
    return _correct(q, (s, a), r if terminated else r + gamma * float(q[s_next, a_next]), alpha)


def expected_sarsa_update(
    q: Tensor,
    s: int,
    a: int,
    r: float,
    s_next: int,
    terminated: bool,
    *,
    alpha: float,
    gamma: float,
    probs_next: Tensor,
) -> float:
    """Expected SARSA (eq. 6.9): Q(S,A) <- Q(S,A) + alpha [R + gamma sum_a pi(a|S') Q(S', a) - Q(S,A)].

    `probs_next` is pi(. | S') (A,), e.g. `epsilon_greedy_probs(q[s_next], epsilon)`; with the greedy
    policy it is Q-learning. Returns the TD error delta.
    """
    alpha, gamma = _check_alpha(alpha), check_gamma(gamma)
    target = r if terminated else r + gamma * float(probs_next.to(DTYPE) @ q[s_next])
    return _correct(q, (s, a), target, alpha)


def td0_update(
    v: Tensor, s: int, r: float, s_next: int, terminated: bool, *, alpha: float, gamma: float
) -> float:
    """TD(0) prediction (eq. 6.2): V(S) <- V(S) + alpha [R + gamma V(S') - V(S)]. Returns delta (eq. 6.5)."""
    alpha, gamma = _check_alpha(alpha), check_gamma(gamma)
    return _correct(v, s, r if terminated else r + gamma * float(v[s_next]), alpha)


def monte_carlo_update(
    table: Tensor,
    episode: Sequence[Sequence[Any]],
    *,
    gamma: float,
    first_visit: bool = True,
    alpha: float | None = None,
    counts: Tensor | None = None,
) -> list[float]:
    """Monte Carlo update from one complete episode [(S_0, A_0, R_1), (S_1, A_1, R_2), ...].

    Longer tuples (`run_episode`'s transitions) are fine: only the first three fields are read. The
    return G_t = R_{t+1} + gamma G_{t+1} (eq. 3.9) is computed backwards. `table` is V (S,) for
    prediction (section 5.1) or Q (S, A) for control (section 5.3-5.4); `first_visit` uses only the first
    occurrence of each state (or pair) in the episode, otherwise every visit. Step size:
    alpha=None is the sample average, V(s) <- V(s) + (G - V(s)) / N(s) with N in `counts` (required,
    same shape as the table; section 5.1 and eq. 2.3); a float is constant-alpha MC (eq. 6.1).
    Returns the errors G - V(S_t) corrected, in update order (backwards in time, as in S&B's pseudocode).
    """
    gamma = check_gamma(gamma)
    if alpha is None:
        if counts is None or counts.shape != table.shape:
            raise ValueError(
                "monte_carlo_update with alpha=None (sample average) needs `counts` shaped like the table"
            )
    else:
        alpha = _check_alpha(alpha)
    by_pair = table.dim() == 2
    keys = [(int(t[0]), int(t[1])) if by_pair else int(t[0]) for t in episode]
    first: dict[Any, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    errors: list[float] = []
    G = 0.0
    for t in range(len(episode) - 1, -1, -1):
        G = float(episode[t][2]) + gamma * G
        k = keys[t]
        if first_visit and first[k] != t:
            continue
        err = G - float(table[k])
        if alpha is None:
            counts[k] += 1.0
            step = 1.0 / float(counts[k])
        else:
            step = alpha
        table[k] += step * err
        errors.append(err)
    return errors


# Behaviour policies and schedules


def epsilon_greedy_probs(q_row: Tensor, epsilon: float) -> Tensor:
    """pi(. | s) of epsilon-greedy (section 2.2, 5.4): epsilon / A on every action, plus 1 - epsilon shared
    equally by the maximising actions. (A,) float64."""
    A = q_row.shape[-1]
    best = q_row == q_row.max()
    return torch.full((A,), epsilon / A, dtype=DTYPE) + (1.0 - epsilon) * best.to(DTYPE) / best.sum()


def epsilon_greedy(q_row: Tensor, epsilon: float, generator: torch.Generator | None = None) -> int:
    """Sample from epsilon-greedy: with probability epsilon a uniform action, else a maximising action
    (ties broken uniformly at random, so untried equal actions all get their turn)."""
    A = q_row.shape[-1]
    if epsilon > 0 and float(torch.rand((), generator=generator, dtype=DTYPE)) < epsilon:
        return int(torch.randint(A, (), generator=generator))
    best = torch.nonzero(q_row == q_row.max()).flatten()
    if best.numel() == 1:
        return int(best[0])
    return int(best[int(torch.randint(best.numel(), (), generator=generator))])


def sample_action(probs: Tensor, generator: torch.Generator | None = None) -> int:
    """Draw an action from pi(. | s) (A,)."""
    u = float(torch.rand((), generator=generator, dtype=DTYPE))
    return min(
        int(torch.searchsorted(probs.cumsum(0), torch.tensor(u, dtype=probs.dtype), right=True)),
        probs.shape[0] - 1,
    )


@dataclass(frozen=True)
class LinearSchedule:
    """start -> end linearly over `duration` steps, then constant at end."""

    start: float
    end: float
    duration: int

    def __call__(self, t: int) -> float:
        frac = min(max(t, 0) / self.duration, 1.0) if self.duration > 0 else 1.0
        return self.start + frac * (self.end - self.start)


@dataclass(frozen=True)
class ExponentialSchedule:
    """end + (start - end) * decay^t: geometric decay from start towards end."""

    start: float
    end: float
    decay: float

    def __call__(self, t: int) -> float:
        return self.end + (self.start - self.end) * self.decay ** max(t, 0)


@dataclass(frozen=True)
class HarmonicSchedule:
    """start / (1 + t / scale): the harmonic step size 1 / (1 + n), which satisfies the Robbins-Monro
    conditions sum alpha = inf, sum alpha^2 < inf (eq. 2.7)."""

    start: float = 1.0
    scale: float = 1.0

    def __call__(self, t: int) -> float:
        return self.start / (1.0 + max(t, 0) / self.scale)


def linear_schedule(start: float, end: float, duration: int) -> LinearSchedule:
    """t -> start + min(t / duration, 1) (end - start)."""
    return LinearSchedule(float(start), float(end), int(duration))


def exponential_schedule(start: float, end: float, decay: float) -> ExponentialSchedule:
    """t -> end + (start - end) decay^t."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    return ExponentialSchedule(float(start), float(end), float(decay))


def harmonic_schedule(start: float = 1.0, scale: float = 1.0) -> HarmonicSchedule:
    """t -> start / (1 + t / scale); start=1, scale=1 is 1 / (1 + t)."""
    return HarmonicSchedule(float(start), float(scale))


Schedule = Callable[[int], float]

# Interaction


class Transition(NamedTuple):
    s: int
    a: int
    r: float
    s_next: int
    terminated: bool
    truncated: bool


def run_episode(
    env: gym.Env, policy_fn: Callable[[int], int], *, seed: int | None = None, max_steps: int = 10_000
) -> list[Transition]:
    """Play one episode with `policy_fn(state) -> action`; returns its transitions.

    `seed` reseeds the environment's reset (None continues its stream). The episode ends when the env
    terminates or truncates (its TimeLimit), or after `max_steps` (marked truncated).
    """
    s, _ = env.reset(seed=seed)
    s = int(s)
    out: list[Transition] = []
    for t in range(max_steps):
        a = int(policy_fn(s))
        s_next, r, terminated, truncated, _ = env.step(a)
        s_next = int(s_next)
        truncated = bool(truncated) or (t == max_steps - 1 and not terminated)
        out.append(Transition(s, a, float(r), s_next, bool(terminated), truncated))
        if terminated or truncated:
            break
        s = s_next
    return out


def goal_states(env: gym.Env) -> set[int] | None:
    """States that count as success when an episode terminates in them; None: any termination succeeds.

    From the MDP layout's 'G' cells (`TabularEnv`) or FrozenLake's map. CliffWalking and Taxi terminate
    only on success.
    """
    base = env.unwrapped
    mdp = getattr(base, "mdp", None)
    if isinstance(mdp, TabularMDP) and mdp.layout is not None:
        return set(mdp.cells("G"))
    desc = getattr(base, "desc", None)
    if type(base).__name__ == "FrozenLakeEnv" and desc is not None:
        cols = desc.shape[1]
        return {int(r * cols + c) for r, c in zip(*np.nonzero(desc == b"G"))}
    return None


def evaluate_policy(
    env: gym.Env,
    policy: Tensor,
    episodes: int = 100,
    seed: int = 0,
    *,
    max_steps: int = 10_000,
) -> tuple[float, float, float]:
    """Average undiscounted return of a fixed policy over `episodes` episodes.

    `policy` is (S,) action indices or (S, A) probabilities (sampled with a torch generator seeded with
    `seed`; the environment is reseeded with `seed` once, then continues its stream). Success means the
    episode terminated in a goal state (`goal_states`). Returns (mean_return, std_return, success_rate).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    num_actions = int(env.action_space.n)
    pi = as_policy_matrix(policy, num_actions)
    deterministic = bool(((pi == 0) | (pi == 1)).all())
    actions = pi.argmax(-1).tolist()
    gen = torch.Generator().manual_seed(seed)
    goals = goal_states(env)

    def act(s: int) -> int:
        return actions[s] if deterministic else sample_action(pi[s], gen)

    returns, successes = [], 0
    for i in range(episodes):
        traj = run_episode(env, act, seed=seed if i == 0 else None, max_steps=max_steps)
        returns.append(sum(t.r for t in traj))
        last = traj[-1]
        successes += int(last.terminated and (goals is None or last.s_next in goals))
    ret = torch.tensor(returns, dtype=DTYPE)
    std = float(ret.std(unbiased=False)) if episodes > 1 else 0.0
    return float(ret.mean()), std, successes / episodes


# One trainer step = one episode


METHODS = ("q_learning", "sarsa", "expected_sarsa", "mc_first_visit", "mc_every_visit", "td0")


class TabularAgent:
    """Runs one episode of interaction plus updates per `step`: the unit a trainer drives.

    `table` is a `QTable` (control: q_learning, sarsa, expected_sarsa, mc_first_visit, mc_every_visit) or
    a `VTable` (prediction of v_pi: td0, mc_first_visit, mc_every_visit; needs `policy`). Behaviour is
    epsilon-greedy on Q, or the fixed `policy` (S, A) / (S,) when one is given (then SARSA, expected
    SARSA and MC estimate q_pi, and Q-learning still estimates q*, off-policy).

    `epsilon` and `alpha` are floats or schedules `f(step_index) -> float`; alpha=None means the sample
    average 1 / N(s, a) with the table's visit counts. TD methods update after every transition; MC at
    the end of the episode, also a truncated one (whose returns are then cut short).

    `exploring_starts` (section 5.3; needs a `TabularEnv`) starts each episode from a uniformly random
    non-terminal state, and for a QTable with a uniformly random first action, so that every pair keeps
    being tried as epsilon -> 0. Episode k resets the environment with a seed derived from (seed, k), and
    actions are drawn from a torch.Generator, so with the table's `state_dict()` plus this object's
    `state_dict()` a resumed run equals an uninterrupted one.
    """

    def __init__(
        self,
        table: QTable | VTable,
        env: gym.Env,
        *,
        method: str = "q_learning",
        gamma: float = 0.99,
        epsilon: float | Schedule = 0.1,
        alpha: float | Schedule | None = 0.1,
        policy: Tensor | None = None,
        seed: int = 0,
        max_steps: int = 10_000,
        exploring_starts: bool = False,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.gamma = check_gamma(gamma)
        for name, space in (("observation", env.observation_space), ("action", env.action_space)):
            if not isinstance(space, gym.spaces.Discrete):
                raise ValueError(f"tabular methods need a Discrete {name} space, got {space}")
        S, A = int(env.observation_space.n), int(env.action_space.n)
        if isinstance(table, QTable):
            if method == "td0":
                raise ValueError("td0 estimates state values: give it a VTable")
            if tuple(table.q.shape) != (S, A):
                raise ValueError(f"QTable has shape {tuple(table.q.shape)}, the environment needs {(S, A)}")
        elif isinstance(table, VTable):
            if method not in ("td0", "mc_first_visit", "mc_every_visit"):
                raise ValueError(f"{method} learns action values: give it a QTable")
            if policy is None:
                raise ValueError("prediction with a VTable needs the `policy` to evaluate")
            if tuple(table.v.shape) != (S,):
                raise ValueError(f"VTable has shape {tuple(table.v.shape)}, the environment needs {(S,)}")
        else:
            raise TypeError(f"table must be a QTable or VTable, got {type(table).__name__}")
        self.table, self.env, self.method = table, env, method
        self.policy = None if policy is None else as_policy_matrix(policy, A)
        self.epsilon, self.alpha = epsilon, alpha
        if alpha is not None and not callable(alpha):
            _check_alpha(alpha)
        self.seed, self.max_steps = int(seed), int(max_steps)
        self.exploring_starts = bool(exploring_starts)
        if self.exploring_starts:
            mdp = getattr(env.unwrapped, "mdp", None)
            if not isinstance(mdp, TabularMDP):
                raise ValueError("exploring_starts needs a TabularEnv (its reset takes options={'state': s})")
            self._starts = torch.nonzero(~mdp.terminal).flatten()
        self.generator = torch.Generator().manual_seed(self.seed)
        self.episodes = 0
        self.env_steps = 0

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """RNG state and counters (the table itself is in `table.state_dict()`)."""
        return {
            "generator": self.generator.get_state(),
            "episodes": self.episodes,
            "env_steps": self.env_steps,
            "seed": self.seed,
            "method": self.method,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["method"] != self.method:
            raise ValueError(f"checkpoint is for method {state['method']!r}, this agent runs {self.method!r}")
        self.generator.set_state(state["generator"])
        self.episodes, self.env_steps = int(state["episodes"]), int(state["env_steps"])
        self.seed = int(state["seed"])

    # -- one episode --------------------------------------------------------------------------------
    def _value(self, sched: float | Schedule | None, step_index: int) -> float | None:
        return sched(step_index) if callable(sched) else sched

    def _act(self, s: int, epsilon: float) -> int:
        if self.policy is not None:
            return sample_action(self.policy[s], self.generator)
        return epsilon_greedy(self.table.q[s], epsilon, self.generator)

    def _probs(self, s: int, epsilon: float) -> Tensor:
        return self.policy[s] if self.policy is not None else epsilon_greedy_probs(self.table.q[s], epsilon)

    def _step_size(self, key, alpha: float | None) -> float:
        if alpha is not None:
            return alpha
        counts = self.table.counts
        counts[key] += 1.0
        return 1.0 / float(counts[key])

    def step(self, step_index: int) -> dict[str, float]:
        """Play and learn from one episode; schedules are evaluated at `step_index`.

        Returns {"episode/return", "episode/length", "episode/truncated", "td/error_abs_mean", "epsilon",
        "alpha"}: for MC the "TD error" is G - estimate; alpha is the mean step size used; epsilon is 0
        when a fixed policy behaves.
        """
        epsilon = float(self._value(self.epsilon, step_index))
        alpha = self._value(self.alpha, step_index)
        env_seed = int(np.random.SeedSequence([self.seed, self.episodes]).generate_state(1)[0])
        m = self.method
        errors: list[float] = []
        steps: list[float] = []
        episode: list[Transition] = []
        s, a = self._reset(env_seed, epsilon)
        for t in range(self.max_steps):
            s_next, r, terminated, truncated, _ = self.env.step(a)
            s_next, r, terminated = int(s_next), float(r), bool(terminated)
            truncated = bool(truncated) or (t == self.max_steps - 1 and not terminated)
            episode.append(Transition(s, a, r, s_next, terminated, truncated))
            # SARSA's target needs A', so it picks A' before updating Q(S, A), as in S&B's pseudocode
            # (section 6.4); the other methods pick the next action after the update.
            a_next = self._act(s_next, epsilon) if m == "sarsa" and not terminated else 0
            if m in ("q_learning", "sarsa", "expected_sarsa", "td0"):
                step = self._step_size(s if m == "td0" else (s, a), alpha)
                steps.append(step)
                errors.append(self._td_update(episode[-1], a_next, step, epsilon))
            if terminated or truncated:
                break
            if m != "sarsa":
                a_next = self._act(s_next, epsilon)
            s, a = s_next, a_next
        if m in ("mc_first_visit", "mc_every_visit"):
            errors, steps = self._mc_update(episode, alpha)

        self.episodes += 1
        self.env_steps += len(episode)
        return {
            "episode/return": float(sum(tr.r for tr in episode)),
            "episode/length": float(len(episode)),
            "episode/truncated": float(episode[-1].truncated and not episode[-1].terminated),
            "td/error_abs_mean": float(np.mean(np.abs(errors))) if errors else 0.0,
            "epsilon": epsilon if self.policy is None else 0.0,
            "alpha": float(np.mean(steps)) if steps else (alpha if alpha is not None else 0.0),
        }

    def _reset(self, env_seed: int, epsilon: float) -> tuple[int, int]:
        """Start an episode: the first state and action."""
        if self.exploring_starts:  # section 5.3: every (s, a) pair can start an episode
            start = int(self._starts[int(torch.randint(len(self._starts), (), generator=self.generator))])
            s, _ = self.env.reset(seed=env_seed, options={"state": start})
            if isinstance(self.table, QTable):
                a = int(torch.randint(int(self.env.action_space.n), (), generator=self.generator))
            else:  # predicting v_pi: the first action must follow pi too
                a = self._act(start, epsilon)
        else:
            s, _ = self.env.reset(seed=env_seed)
            a = self._act(int(s), epsilon)
        return int(s), a

    def _td_update(self, tr: Transition, a_next: int, step: float, epsilon: float) -> float:
        """One TD update of the table from transition ``tr`` with step size ``step``; returns the TD error."""
        tab, g, m = self.table.table, self.gamma, self.method
        s, a, r, s_next, terminated = tr.s, tr.a, tr.r, tr.s_next, tr.terminated
        if m == "q_learning":
            return q_learning_update(tab, s, a, r, s_next, terminated, alpha=step, gamma=g)
        if m == "sarsa":
            return sarsa_update(tab, s, a, r, s_next, a_next, terminated, alpha=step, gamma=g)
        if m == "expected_sarsa":
            probs = self._probs(s_next, epsilon)
            return expected_sarsa_update(
                tab, s, a, r, s_next, terminated, alpha=step, gamma=g, probs_next=probs
            )
        return td0_update(tab, s, r, s_next, terminated, alpha=step, gamma=g)

    def _mc_update(self, episode: list[Transition], alpha: float | None) -> tuple[list[float], list[float]]:
        """The Monte Carlo update at the end of ``episode``: the errors G - estimate and the step sizes used."""
        counts = self.table.counts
        errors = monte_carlo_update(
            self.table.table,
            episode,
            gamma=self.gamma,
            first_visit=(self.method == "mc_first_visit"),
            alpha=alpha,
            counts=counts,
        )
        if alpha is None:  # report the sample-average step 1 / N of the entries this episode updated
            keys = {tr.s if isinstance(self.table, VTable) else (tr.s, tr.a) for tr in episode}
            return errors, [1.0 / float(counts[k]) for k in keys]
        return errors, [alpha] * len(errors)
