"""Text pictures of tabular policies and values, like the grid figures of Sutton & Barto (e.g. Figure 4.1).

    >>> print(policy_map(mdp, policy, values=v))
    policy        values
    ← ↑ ↑ ↑       0.54 0.50 0.47 0.46
    ← H ← H       0.56 0.00 0.36 0.00
    ...

Arrows come from the action names (`TabularMDP.action_names`), so each environment's own action order is
respected: FrozenLake and the project's grids are LEFT, DOWN, RIGHT, UP; CliffWalking is UP, RIGHT, DOWN,
LEFT; Taxi's PICKUP / DROPOFF show as letters. Cells marked in the layout show their letter instead of an
arrow: 'G' goal, 'H' hole, '#' wall, 'C' cliff; any other terminal state shows '*'. Plain text (no
markup), so it prints the same through `print`, `rich` or a log file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from align.rl.mdp import GRID_ACTIONS, TabularMDP

ARROWS = {
    "LEFT": "←",
    "DOWN": "↓",
    "RIGHT": "→",
    "UP": "↑",
    "NORTH": "↑",
    "SOUTH": "↓",
    "EAST": "→",
    "WEST": "←",
}
"""Arrow of each direction-named action; other actions show their first letter."""

MARKED = "GH#C"
"""Layout characters drawn as themselves instead of the policy's arrow."""


def _symbols(action_names: Sequence[str]) -> list[str]:
    return [ARROWS.get(name.upper(), name[:1].upper() or "?") for name in action_names]


def _best_actions(policy: Tensor, num_actions: int) -> list[list[int]]:
    """Per state, the actions of highest probability (ties all shown, as in the textbook's figures)."""
    policy = torch.as_tensor(policy)
    if policy.dim() == 1:
        return [[int(a)] for a in policy.tolist()]
    if policy.dim() != 2 or policy.shape[1] != num_actions:
        raise ValueError(f"policy must have shape (S, {num_actions}) or (S,), got {tuple(policy.shape)}")
    best = policy.amax(dim=-1, keepdim=True)
    mask = (policy >= best - 1e-12).tolist()
    return [[a for a, m in enumerate(row) if m] for row in mask]


def policy_map(
    mdp_or_shape: TabularMDP | tuple[int, int] | None,
    policy: Tensor,
    *,
    values: Tensor | None = None,
    walls: Iterable[int] = (),
    holes: Iterable[int] = (),
    goals: Iterable[int] = (),
    terminal: Iterable[int] = (),
    action_names: Sequence[str] | None = None,
    decimals: int = 2,
) -> str:
    """The policy as a grid of arrows and, with `values` (S,), the values as a grid of numbers beside it.

    `mdp_or_shape`: a `TabularMDP` (its shape, layout, terminal states and action names are used) or a
    (rows, cols) shape with states in row-major order (then `action_names` defaults to FrozenLake's
    LEFT, DOWN, RIGHT, UP). `policy`: (S,) action indices or (S, A) probabilities (every most-probable
    action is drawn). `walls`, `holes`, `goals`, `terminal`: extra state indices to mark. Without a grid
    shape (e.g. Taxi) the result is one line per state: index, action(s), value.
    """
    mdp = mdp_or_shape if isinstance(mdp_or_shape, TabularMDP) else None
    shape = mdp.shape if mdp is not None else (None if mdp_or_shape is None else tuple(mdp_or_shape))
    policy_t = torch.as_tensor(policy)
    action_names = _action_names(mdp, action_names, policy_t)
    best = _best_actions(policy_t, len(action_names))
    S = len(best)
    if mdp is not None and mdp.num_states != S:
        raise ValueError(f"policy has {S} states, the MDP {mdp.num_states}")
    if values is not None and torch.as_tensor(values).numel() != S:
        raise ValueError(f"values has {torch.as_tensor(values).numel()} entries for {S} states")
    if shape is not None and shape[0] * shape[1] != S:
        raise ValueError(f"shape {shape} has {shape[0] * shape[1]} cells for {S} states")

    marks = _marks(mdp, {"*": terminal, "H": holes, "G": goals, "#": walls})
    symbols = _symbols(action_names)
    cells = [marks.get(s, "".join(symbols[a] for a in best[s])) for s in range(S)]
    vals = None
    if values is not None:
        v = torch.as_tensor(values, dtype=torch.float64).flatten().tolist()
        vals = ["#" if marks.get(s) == "#" else f"{v[s]:.{decimals}f}" for s in range(S)]
    if shape is None:  # no grid: one line per state
        lines = []
        for s in range(S):
            acts = cells[s] if s in marks else "/".join(action_names[a] for a in best[s])
            lines.append(f"{s:>4}  {acts}" + (f"  {vals[s]}" if vals is not None else ""))
        return "\n".join(lines)
    return _grids(cells, vals, shape)


def _action_names(
    mdp: TabularMDP | None, action_names: Sequence[str] | None, policy: Tensor
) -> Sequence[str]:
    """The names to draw: those given, else the MDP's, else FrozenLake's (only for four actions)."""
    if action_names is None and mdp is not None:
        action_names = mdp.action_names
    if action_names is None:
        num_actions = mdp.num_actions if mdp is not None else 4
        if num_actions != len(GRID_ACTIONS):
            raise ValueError(f"give action_names for {num_actions} actions")
        action_names = GRID_ACTIONS
    if policy.dim() == 2 and policy.shape[1] != len(action_names):
        raise ValueError(
            f"policy has {policy.shape[1]} actions but there are {len(action_names)} action names"
        )
    return action_names


def _marks(mdp: TabularMDP | None, extra: dict[str, Iterable[int]]) -> dict[int, str]:
    """The character drawn instead of an arrow, per marked state: the MDP's terminal states ('*') and marked
    layout cells, then the ``extra`` states of each character (later ones win)."""
    marks: dict[int, str] = {}
    if mdp is not None:
        marks.update({int(s): "*" for s in torch.nonzero(mdp.terminal).flatten().tolist()})
        for ch in MARKED:
            marks.update(dict.fromkeys(mdp.cells(ch), ch))
    for ch, states in extra.items():
        marks.update({int(s): ch for s in states})
    return marks


def _grids(cells: list[str], vals: list[str] | None, shape: tuple[int, int]) -> str:
    """The policy cells as a grid of ``shape``, with the value grid beside it when there are values."""
    rows, cols = shape
    pw = max(len(c) for c in cells)
    policy_rows = [" ".join(cells[r * cols + c].center(pw) for c in range(cols)) for r in range(rows)]
    if vals is None:
        return "\n".join(row.rstrip() for row in policy_rows)
    vw = max(len(x) for x in vals)
    value_rows = [" ".join(vals[r * cols + c].rjust(vw) for c in range(cols)) for r in range(rows)]
    left = max(len(row) for row in policy_rows + ["policy"])
    out = ["policy".ljust(left) + "    values"]
    out += [p.ljust(left) + "    " + v for p, v in zip(policy_rows, value_rows)]
    return "\n".join(line.rstrip() for line in out)
