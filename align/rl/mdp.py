"""Finite MDPs as tensors, and a gymnasium environment that samples from one.

A finite MDP (Sutton & Barto 2nd ed., section 3.1) is held as dense float64 tensors:

    P[s, a, s']   transition probabilities, each row P[s, a, :] sums to 1          (S, A, S)
    R[s, a]       expected immediate reward r(s, a) = sum_s' p(s'|s,a) r(s,a,s')      (S, A)
    R3[s, a, s']  optional reward of each transition, when it depends on s'         (S, A, S)
    terminal[s]   True for terminal states                                         (S,)
    initial[s]    start-state distribution                                         (S,)

Terminal convention (the one every function in `align.rl.tabular` follows): the value of a terminal
state is 0 and whatever P and R say about leaving it is ignored. Equivalently, the Bellman backup masks
the next-state value, q(s, a) = R[s, a] + gamma * sum_s' P[s, a, s'] * (1 - terminal[s']) * v(s'), so a
transition into a terminal state earns its reward and nothing after (S&B section 3.4, "absorbing state").
Constructors here also make terminal states absorbing self-loops with zero reward, so the convention
holds even for code that forgets the mask.

Constructors: `from_toy_text` (FrozenLake, CliffWalking, Taxi from gymnasium's `env.unwrapped.P`),
`maze` (deterministic, -1 per step), `slippery_grid` (stochastic moves, +1 goal, optional holes) and
`random_walk` (S&B Example 6.2). `TabularEnv(mdp)` samples from any of them with the gymnasium API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

DTYPE = torch.float64

# FrozenLake's action order; the project's own grid MDPs use it too so that one arrow table serves both.
GRID_ACTIONS = ("LEFT", "DOWN", "RIGHT", "UP")
GRID_MOVES = {"LEFT": (0, -1), "DOWN": (1, 0), "RIGHT": (0, 1), "UP": (-1, 0)}

# Action names of gymnasium's toy-text environments, in their action-index order.
TOY_TEXT_ACTIONS = {
    "FrozenLakeEnv": ("LEFT", "DOWN", "RIGHT", "UP"),
    "CliffWalkingEnv": ("UP", "RIGHT", "DOWN", "LEFT"),
    "TaxiEnv": ("SOUTH", "NORTH", "EAST", "WEST", "PICKUP", "DROPOFF"),
}


def check_gamma(gamma: float) -> float:
    """Return `gamma` as a float, or raise a ValueError naming it when it is outside [0, 1]."""
    gamma = float(gamma)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    return gamma


@dataclass
class TabularMDP:
    """A finite MDP as dense tensors; see the module docstring for the terminal-state convention.

    Tensors are converted to float64 (bool for `terminal`) on construction and validated; a bad shape,
    a transition row that does not sum to 1, or a start distribution on terminal states is a ValueError
    that names the field.
    """

    P: Tensor
    """(S, A, S) transition probabilities p(s' | s, a); every row P[s, a, :] sums to 1."""
    R: Tensor | None
    """(S, A) expected immediate reward r(s, a). None: computed from R3 as sum_s' P R3."""
    gamma: float
    """Discount factor in [0, 1]. gamma = 1 needs every evaluated policy to terminate with probability 1."""
    terminal: Tensor | None = None
    """(S,) bool, True for terminal states (value 0). None: no terminal states."""
    initial: Tensor | None = None
    """(S,) start-state distribution. None: uniform over non-terminal states."""
    R3: Tensor | None = None
    """(S, A, S) reward of each transition, for sampling when the reward depends on s'. Optional."""
    shape: tuple[int, int] | None = None
    """(rows, cols) when states are the cells of a grid in row-major order (s = row * cols + col)."""
    layout: tuple[str, ...] | None = None
    """Grid of one character per cell for rendering: 'S' start, 'G' goal, 'H' hole, '#' wall, 'C' cliff,
    '.' or 'F' free. Requires `shape`."""
    action_names: tuple[str, ...] | None = None
    """Name of each action in index order, e.g. ("LEFT", "DOWN", "RIGHT", "UP"); used for arrows."""
    name: str = ""
    """Short description, e.g. "FrozenLake-v1 4x4 slippery"."""
    tol: float = 1e-8
    """Tolerance for probability rows summing to 1."""

    def __post_init__(self) -> None:
        self.gamma = check_gamma(self.gamma)
        self._init_transitions()
        S, A, _ = self.P.shape
        self._init_rewards(S, A)
        self._init_states(S)
        self._init_display(S, A)

    def _init_transitions(self) -> None:
        """P as a float64 copy, checked: shape (S, A, S), at least one state and action, rows that sum to 1."""
        self.P = torch.as_tensor(self.P, dtype=DTYPE).clone()
        if self.P.dim() != 3 or self.P.shape[0] != self.P.shape[2]:
            raise ValueError(f"P must have shape (S, A, S), got {tuple(self.P.shape)}")
        if self.P.shape[0] == 0 or self.P.shape[1] == 0:
            raise ValueError(f"P must have at least one state and one action, got {tuple(self.P.shape)}")
        if float(self.P.min()) < -self.tol:
            raise ValueError("P has negative probabilities")
        row_err = (self.P.sum(-1) - 1.0).abs()
        if (row_err > self.tol).any():
            s, a = (int(i) for i in torch.nonzero(row_err > self.tol)[0])
            raise ValueError(
                f"P[{s}, {a}, :] sums to {float(self.P[s, a].sum()):.10g}, not 1 (tol {self.tol:g})"
            )

    def _init_rewards(self, S: int, A: int) -> None:
        """R (from R3 when only R3 is given) and R3 as float64 copies, checked against each other and P."""
        if self.R3 is not None:
            self.R3 = torch.as_tensor(self.R3, dtype=DTYPE).clone()
            if tuple(self.R3.shape) != (S, A, S):
                raise ValueError(f"R3 must have shape {(S, A, S)} like P, got {tuple(self.R3.shape)}")
        if self.R is None:
            if self.R3 is None:
                raise ValueError("give R (S, A) or R3 (S, A, S)")
            self.R = (self.P * self.R3).sum(-1)
        self.R = torch.as_tensor(self.R, dtype=DTYPE).clone()
        if tuple(self.R.shape) != (S, A):
            raise ValueError(f"R must have shape {(S, A)}, got {tuple(self.R.shape)}")
        if self.R3 is not None and not torch.allclose(self.R, (self.P * self.R3).sum(-1), atol=1e-9):
            raise ValueError(
                "R must equal the expectation of R3 under P: R[s, a] = sum_s' P[s, a, s'] R3[s, a, s']"
            )

    def _init_states(self, S: int) -> None:
        """terminal (default: none) and initial (default: uniform over non-terminal states), checked."""
        if self.terminal is None:
            self.terminal = torch.zeros(S, dtype=torch.bool)
        self.terminal = torch.as_tensor(self.terminal).to(torch.bool).clone()
        if tuple(self.terminal.shape) != (S,):
            raise ValueError(f"terminal must have shape {(S,)}, got {tuple(self.terminal.shape)}")
        if self.initial is None:
            if self.terminal.all():
                raise ValueError("every state is terminal: there is nowhere to start")
            self.initial = (~self.terminal).to(DTYPE) / float((~self.terminal).sum())
        self.initial = torch.as_tensor(self.initial, dtype=DTYPE).clone()
        if tuple(self.initial.shape) != (S,):
            raise ValueError(f"initial must have shape {(S,)}, got {tuple(self.initial.shape)}")
        if (self.initial < -self.tol).any() or abs(float(self.initial.sum()) - 1.0) > self.tol:
            raise ValueError(
                f"initial must be a distribution (non-negative, sums to 1), sums to {float(self.initial.sum())}"
            )
        if (self.initial[self.terminal] > 0).any():
            raise ValueError("initial puts probability on terminal states")

    def _init_display(self, S: int, A: int) -> None:
        """shape, layout and action_names (all optional, for printing), checked against S and A."""
        if self.shape is not None:
            self.shape = (int(self.shape[0]), int(self.shape[1]))
            if self.shape[0] * self.shape[1] != S:
                raise ValueError(
                    f"shape {self.shape} has {self.shape[0] * self.shape[1]} cells but there are {S} states"
                )
        if self.layout is not None:
            self.layout = tuple(self.layout)
            if (
                self.shape is None
                or len(self.layout) != self.shape[0]
                or any(len(r) != self.shape[1] for r in self.layout)
            ):
                raise ValueError(
                    f"layout must be {self.shape} characters (rows of equal length), given with shape"
                )
        if self.action_names is not None:
            self.action_names = tuple(self.action_names)
            if len(self.action_names) != A:
                raise ValueError(f"action_names has {len(self.action_names)} names for {A} actions")

    @property
    def num_states(self) -> int:
        return self.P.shape[0]

    @property
    def num_actions(self) -> int:
        return self.P.shape[1]

    def with_gamma(self, gamma: float) -> TabularMDP:
        """The same MDP with another discount factor."""
        return dataclasses.replace(self, gamma=gamma)

    def cells(self, char: str) -> list[int]:
        """States whose layout character is `char` (e.g. 'G' goals, 'H' holes); [] without a layout."""
        if self.layout is None:
            return []
        cols = self.shape[1]
        return [r * cols + c for r, row in enumerate(self.layout) for c, ch in enumerate(row) if ch == char]


def _absorb(P: Tensor, R3: Tensor, terminal: Tensor) -> Tensor:
    """R = sum_s' P R3, with terminal states zero-reward self-loops in P, R and R3 (belt and braces)."""
    R = (P * R3).sum(-1)
    idx = torch.nonzero(terminal).flatten()
    P[idx] = 0.0
    P[idx, :, idx] = 1.0
    R[idx] = 0.0
    R3[idx] = 0.0
    return R


def from_toy_text(env: gym.Env, gamma: float = 0.99) -> TabularMDP:
    """Extract (P, R) from a gymnasium toy-text environment's `env.unwrapped.P` model.

    Works for FrozenLake, CliffWalking and Taxi (and a `TabularEnv`, which returns its own MDP). A state is
    terminal when a transition flagged `terminated` leads into it; a state entered both with and without
    the flag is an error (`_check_termination_flags`), as that model would need values per transition.
    R3 is kept only when the reward depends on s' (FrozenLake's +1 for reaching the goal).
    """
    base = env.unwrapped
    if isinstance(base, TabularEnv):
        return base.mdp.with_gamma(gamma)
    model = getattr(base, "P", None)
    if not isinstance(model, dict):
        raise ValueError(
            f"{type(base).__name__} has no toy-text model `unwrapped.P`; supported: FrozenLake, CliffWalking, Taxi"
        )
    if getattr(base, "fickle_passenger", False):
        raise ValueError(
            "Taxi with fickle_passenger=True changes destinations outside `P`: its model cannot be extracted"
        )
    P, R3, done = _toy_text_model(model, int(base.observation_space.n), int(base.action_space.n))
    terminal = done.any(dim=(0, 1))
    initial = torch.as_tensor(np.asarray(base.initial_state_distrib), dtype=DTYPE)
    _check_termination_flags(P, done, terminal, initial)
    R = _absorb(P, R3, terminal)
    reward_depends_on_next = ((R3 - R.unsqueeze(-1)).abs() * (P > 0)).amax() > 1e-12
    kind = type(base).__name__
    shape, layout = _toy_text_grid(base)
    return TabularMDP(
        P=P,
        R=R,
        gamma=gamma,
        terminal=terminal,
        initial=initial,
        R3=R3 if reward_depends_on_next else None,
        shape=shape,
        layout=layout,
        action_names=TOY_TEXT_ACTIONS.get(kind),
        name=env.spec.id if env.spec is not None else kind,
    )


def _toy_text_model(model: dict, S: int, A: int) -> tuple[Tensor, Tensor, Tensor]:
    """``P``, ``R3`` and the terminated flags ``(S, A, S)`` of a toy-text ``P[s][a]`` list of
    ``(prob, s_next, reward, terminated)``; repeated outcomes are summed and must agree on the rest."""
    P = np.zeros((S, A, S))  # filled in numpy (fast element access), converted to torch below
    R3 = np.zeros((S, A, S))
    done = np.zeros((S, A, S), dtype=bool)
    for s in range(S):
        for a in range(A):
            for prob, s_next, reward, terminated in model[s][a]:
                s_next = int(s_next)
                if prob == 0:
                    continue
                if P[s, a, s_next] > 0 and (R3[s, a, s_next] != reward or done[s, a, s_next] != terminated):
                    raise ValueError(
                        f"state {s} action {a}: two outcomes into {s_next} that differ in reward or termination"
                    )
                P[s, a, s_next] += prob
                R3[s, a, s_next] = float(reward)
                done[s, a, s_next] = bool(terminated)
    return torch.from_numpy(P), torch.from_numpy(R3), torch.from_numpy(done)


def _check_termination_flags(P: Tensor, done: Tensor, terminal: Tensor, initial: Tensor) -> None:
    """A terminal state must be entered with the terminated flag by every transition that can happen.

    Only transitions that can happen must agree: out of non-terminal states reachable from the start.
    (Taxi lists moves out of its terminal states, and out of unreachable states such as "passenger already
    at the destination, taxi elsewhere", which enter a terminal state without the flag.)
    """
    reach = initial > 0
    while True:
        new = reach | (P[reach & ~terminal] > 0).any(dim=(0, 1))
        if torch.equal(new, reach):
            break
        reach = new
    entered_not_done = ((P > 0) & ~done)[reach & ~terminal].any(dim=(0, 1))
    both = terminal & entered_not_done
    if both.any():
        raise ValueError(
            f"states {torch.nonzero(both).flatten().tolist()} are entered both with and without termination"
        )


def _toy_text_grid(base: gym.Env) -> tuple[tuple[int, int] | None, tuple[str, ...] | None]:
    """The grid shape and layout of FrozenLake (its map) and CliffWalking (S start, C cliff, G goal);
    (None, None) for others."""
    kind = type(base).__name__
    if kind == "FrozenLakeEnv":
        layout = tuple(b"".join(row).decode() for row in base.desc)
        return (len(layout), len(layout[0])), layout
    if kind == "CliffWalkingEnv":
        rows, cols = base.shape
        grid = [["."] * cols for _ in range(rows)]
        grid[rows - 1] = ["C"] * cols
        grid[rows - 1][0], grid[rows - 1][cols - 1] = "S", "G"
        return (rows, cols), tuple("".join(r) for r in grid)
    return None, None


# The project's own MDPs


DYNA_MAZE = (
    ".......#G",
    "..#....#.",
    "S.#....#.",
    "..#......",
    ".....#...",
    ".........",
)
"""The maze of S&B Figure 8.2 (Dyna maze): 6x9, start left, goal top right, shortest path 14 steps."""


def _grid_step(layout: Sequence[str], r: int, c: int, move: str) -> tuple[int, int]:
    """Cell reached by `move` from (r, c); leaving the grid or entering a wall '#' stays put."""
    dr, dc = GRID_MOVES[move]
    nr, nc = r + dr, c + dc
    if 0 <= nr < len(layout) and 0 <= nc < len(layout[0]) and layout[nr][nc] != "#":
        return nr, nc
    return r, c


def _check_layout(layout: Sequence[str], need: str) -> tuple[str, ...]:
    layout = tuple(layout)
    if not layout or any(len(row) != len(layout[0]) for row in layout) or not layout[0]:
        raise ValueError("layout must be a non-empty list of equal-length strings")
    bad = {ch for row in layout for ch in row} - set(".FSGH#")
    if bad:
        raise ValueError(f"layout has unknown characters {sorted(bad)}; use '.', 'S', 'G', 'H', '#'")
    for ch in need:
        if not any(ch in row for row in layout):
            raise ValueError(f"layout needs at least one {ch!r} cell")
    return layout


def _grid_mdp(layout, outcomes, rewards, gamma, name) -> TabularMDP:
    """Build a grid MDP. outcomes(r, c, move) -> [(prob, move_taken)]; rewards(cell_char_next) -> reward."""
    rows, cols = len(layout), len(layout[0])
    S, A = rows * cols, len(GRID_ACTIONS)
    P = torch.zeros(S, A, S, dtype=DTYPE)
    R3 = torch.zeros(S, A, S, dtype=DTYPE)
    terminal = torch.zeros(S, dtype=torch.bool)
    initial = torch.zeros(S, dtype=DTYPE)
    for r in range(rows):
        for c in range(cols):
            s = r * cols + c
            ch = layout[r][c]
            # Goals and holes end the episode; walls cannot be entered, so they are modelled as terminal
            # states too: value 0, never reached, and never part of a linear solve.
            terminal[s] = ch in "GH#"
            initial[s] = 1.0 if ch == "S" else 0.0
            for a, move in enumerate(GRID_ACTIONS):
                for prob, taken in outcomes(r, c, move):
                    nr, nc = _grid_step(layout, r, c, taken)
                    P[s, a, nr * cols + nc] += prob
                    R3[s, a, nr * cols + nc] = rewards(layout[nr][nc])
    R = _absorb(P, R3, terminal)
    initial /= initial.sum()
    return TabularMDP(
        P=P,
        R=R,
        gamma=gamma,
        terminal=terminal,
        initial=initial,
        R3=R3,
        shape=(rows, cols),
        layout=layout,
        action_names=GRID_ACTIONS,
        name=name,
    )


def maze(layout: Sequence[str] | None = None, *, gamma: float = 1.0, step_reward: float = -1.0) -> TabularMDP:
    """A deterministic maze: '#' walls, 'S' start (several 'S' = uniform over them), 'G' goal (terminal).

    Every move costs `step_reward` (-1), the move into the goal included, so with gamma = 1 the optimal
    value of a cell is minus its shortest-path distance to the goal. Moving into a wall or off the grid
    leaves the agent in place (and still costs -1). Actions: LEFT, DOWN, RIGHT, UP (FrozenLake's order).
    Default layout: the Dyna maze of S&B Figure 8.2 (`DYNA_MAZE`).
    """
    layout = _check_layout(DYNA_MAZE if layout is None else layout, "SG")
    return _grid_mdp(
        layout,
        outcomes=lambda r, c, move: [(1.0, move)],
        rewards=lambda ch: step_reward,
        gamma=gamma,
        name=f"maze {len(layout)}x{len(layout[0])}",
    )


def slippery_grid(
    rows: int = 4,
    cols: int = 4,
    p_intended: float = 0.5,
    *,
    holes: Sequence[tuple[int, int]] = (),
    walls: Sequence[tuple[int, int]] = (),
    start: tuple[int, int] = (0, 0),
    goal: tuple[int, int] | None = None,
    goal_reward: float = 1.0,
    hole_reward: float = 0.0,
    step_reward: float = 0.0,
    gamma: float = 0.95,
) -> TabularMDP:
    """A grid where moves slip: the intended move happens with probability `p_intended` (0.5), otherwise
    the agent moves in one of the OTHER three directions, each with probability (1 - p_intended) / 3.
    A move into a wall or off the grid leaves the agent in place. Entering the goal (default: bottom
    right) pays `goal_reward` (+1) and terminates; entering a hole pays `hole_reward` (0) and terminates;
    any other move pays `step_reward` (0). Actions: LEFT, DOWN, RIGHT, UP.
    """
    if not 0.0 <= p_intended <= 1.0:
        raise ValueError(f"p_intended must be in [0, 1], got {p_intended}")
    goal = (rows - 1, cols - 1) if goal is None else goal
    grid = [["."] * cols for _ in range(rows)]
    for ch, cells in (("H", holes), ("#", walls), ("S", [start]), ("G", [goal])):
        for r, c in cells:
            if not (0 <= r < rows and 0 <= c < cols):
                raise ValueError(f"cell {(r, c)} is outside the {rows}x{cols} grid")
            if grid[r][c] != ".":
                raise ValueError(f"cell {(r, c)} is given twice (as {grid[r][c]!r} and {ch!r})")
            grid[r][c] = ch
    layout = _check_layout(["".join(row) for row in grid], "SG")
    slip = (1.0 - p_intended) / 3.0

    def outcomes(r, c, move):
        return [(p_intended if m == move else slip, m) for m in GRID_ACTIONS]

    rewards = {"G": goal_reward, "H": hole_reward}
    return _grid_mdp(
        layout,
        outcomes=outcomes,
        rewards=lambda ch: rewards.get(ch, step_reward),
        gamma=gamma,
        name=f"slippery grid {rows}x{cols} p={p_intended}",
    )


def random_walk(n_states: int = 5, *, gamma: float = 1.0) -> TabularMDP:
    """The random walk of S&B Example 6.2: states 1..n in a row between two terminal ends (0 and n+1).

    Actions LEFT and RIGHT move one step; the episode starts in the middle; entering the right end pays
    +1, everything else 0. Under the uniform policy, with gamma = 1, v(i) = i / (n + 1): 1/6 .. 5/6.
    """
    if n_states < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states}")
    S = n_states + 2
    P = torch.zeros(S, 2, S, dtype=DTYPE)
    R3 = torch.zeros(S, 2, S, dtype=DTYPE)
    for s in range(1, S - 1):
        P[s, 0, s - 1] = 1.0
        P[s, 1, s + 1] = 1.0
    R3[S - 2, 1, S - 1] = 1.0
    terminal = torch.zeros(S, dtype=torch.bool)
    terminal[0] = terminal[S - 1] = True
    R = _absorb(P, R3, terminal)
    initial = torch.zeros(S, dtype=DTYPE)
    initial[(S - 1) // 2] = 1.0
    # Left end: 'H' (terminal, reward 0); right end: 'G' (+1).
    mid = (S - 1) // 2
    layout = ("".join("H" if i == 0 else "G" if i == S - 1 else "S" if i == mid else "." for i in range(S)),)
    return TabularMDP(
        P=P,
        R=R,
        gamma=gamma,
        terminal=terminal,
        initial=initial,
        R3=R3,
        shape=(1, S),
        layout=layout,
        action_names=("LEFT", "RIGHT"),
        name=f"random walk {n_states}",
    )


# Sampling from a model


class TabularEnv(gym.Env):
    """A gymnasium environment that samples from a `TabularMDP`.

    Observations and actions are `Discrete`. `reset` draws s0 from `mdp.initial` (or takes
    `options={"state": s}`, for exploring starts); `step` draws s' from P[s, a], pays R3[s, a, s'] (or
    R[s, a] when the MDP has no R3) and reports `terminated` when s' is terminal. Truncation comes from a
    `TimeLimit` wrapper (registration's `max_episode_steps`). `render_mode="ansi"` draws the grid.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, mdp: TabularMDP, render_mode: str | None = None):
        super().__init__()
        self.mdp = mdp
        S, A = mdp.num_states, mdp.num_actions
        self.observation_space = gym.spaces.Discrete(S)
        self.action_space = gym.spaces.Discrete(A)
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        # Cumulative rows in numpy: sampling is one uniform draw and a search, fast in a Python loop.
        self._cdf = np.cumsum(mdp.P.numpy(), axis=-1)
        self._cdf[..., -1] = 1.0
        self._init_cdf = np.cumsum(mdp.initial.numpy())
        self._init_cdf[-1] = 1.0
        self._R = mdp.R.numpy()
        self._R3 = None if mdp.R3 is None else mdp.R3.numpy()
        self._terminal = mdp.terminal.numpy()
        self.s: int | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "state" in options:
            s = int(options["state"])
            if not 0 <= s < self.mdp.num_states or self._terminal[s]:
                raise ValueError(f"reset state {s} is not a non-terminal state of this MDP")
            self.s = s
        else:
            self.s = int(np.searchsorted(self._init_cdf, self.np_random.random(), side="right"))
        return self.s, {}

    def step(self, action):
        if self.s is None:
            raise RuntimeError("call reset() before step()")
        s, a = self.s, int(action)
        s_next = int(np.searchsorted(self._cdf[s, a], self.np_random.random(), side="right"))
        reward = float(self._R[s, a] if self._R3 is None else self._R3[s, a, s_next])
        self.s = s_next
        return s_next, reward, bool(self._terminal[s_next]), False, {}

    def render(self):
        if self.render_mode != "ansi":
            return None
        if self.mdp.layout is None:
            return f"state {self.s}\n"
        cols = self.mdp.shape[1]
        rows = [list(row) for row in self.mdp.layout]
        if self.s is not None:
            rows[self.s // cols][self.s % cols] = "@"
        return "\n".join("".join(r) for r in rows) + "\n"
