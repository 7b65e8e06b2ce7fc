"""Discrete toy-text environments played through text, for language models.

`TextEnv` wraps a discrete gymnasium environment (FrozenLake, CliffWalking, Taxi, or one of the project's
tabular MDPs in `align.rl.envs`) so that a language model plays it turn by turn: the observation is the
next user message (the task, the map, the legal actions and the answer format), the action is the model's
reply, parsed back into the discrete action. The wrapped env is untouched and reachable (`.unwrapped`,
`discrete_env`), so one environment id serves value iteration, Q-learning, DQN and the language model:

    >>> env = gymnasium.make("align/FrozenLakeText-v0")
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step("I go down. <action>down</action>")

Answer format: one action name inside `<action></action>`. The parser reads the last tagged action, else
the last action name in the prose (case-insensitive; compass synonyms such as "south" for "down"), else a
reply that is a bare action index. An unparsable reply pays `invalid_action_penalty`, is flagged in
`info["invalid_action"]` and counted (`TextEnv.invalid_actions`), and either leaves the state unchanged
(`on_invalid="continue"`) or ends the episode as truncated (`on_invalid="end"`).

Registered ids (importing `align.envs` registers them): `TEXT_ENVS` below. `align.rl.envs.make_env` of a
text id gives the discrete env it wraps (same options, `max_turns` as its time limit) for classic agents.
"""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import torch
from gymnasium import spaces

from align.rl import envs as rl_envs
from align.rl.mdp import TOY_TEXT_ACTIONS, TabularEnv, TabularMDP, from_toy_text
from align.rl.tabular import as_policy_matrix, goal_states, uniform_policy, value_iteration

OBS_CHARSET = string.printable
"""Characters of rendered observations: printable ASCII with newlines, so '<', '>', '|', '#' all pass
`spaces.Text` checks (its default charset is alphanumeric only)."""
MAX_TEXT_LENGTH = 4096
"""Upper bound on an observation's and an action's length for the `spaces.Text` spaces."""
ON_INVALID = ("continue", "end")
TEXT_ONLY_OPTIONS = ("invalid_action_penalty", "on_invalid", "system_prompt")
"""`text_env` options that the discrete env does not take."""
ANSWER_FORMAT = "Answer with one action inside <action></action>, e.g. <action>{example}</action>."

# Synonyms a model may use: compass words for grid moves and the reverse for Taxi, spaced pickup/dropoff.
SYNONYMS = {
    "left": ("west",),
    "right": ("east",),
    "up": ("north",),
    "down": ("south",),
    "north": ("up",),
    "south": ("down",),
    "east": ("right",),
    "west": ("left",),
    "pickup": ("pick up", "pick-up"),
    "dropoff": ("drop off", "drop-off"),
}


@dataclass(frozen=True)
class TextTask:
    """What a registered text id wraps: the discrete env id and options, and its text-play defaults."""

    base_id: str
    """Id of the discrete env in `align.rl.envs.SUPPORTED_ENVS`."""
    base_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor options of the discrete env (e.g. FrozenLake's map_name, is_slippery)."""
    max_turns: int = 30
    """Turns before truncation: about twice the optimal path or more, small because tokens cost time."""
    invalid_action_penalty: float = -0.1
    """Reward of an unparsable reply. -0.1 next to a 0/1 goal reward; -1 (a wasted move) where every
    move costs 1, so that stalling with garbage never beats walking."""


TEXT_ENVS: dict[str, TextTask] = {
    "align/FrozenLakeText-v0": TextTask("FrozenLake-v1", {"map_name": "4x4", "is_slippery": False}, 20),
    "align/FrozenLake8x8Text-v0": TextTask("FrozenLake8x8-v1", {"is_slippery": False}, 40),
    "align/CliffWalkingText-v0": TextTask("CliffWalking-v1", {}, 40, -1.0),
    "align/TaxiText-v0": TextTask("Taxi-v4", {}, 40, -1.0),
    "align/MazeText-v0": TextTask("align/Maze-v0", {}, 40, -1.0),
    "align/SlipperyGridText-v0": TextTask("align/SlipperyGrid-v0", {}, 30),
    "align/RandomWalkText-v0": TextTask("align/RandomWalk-v0", {}, 20),
}
"""The registered text ids; one per toy-text env and per tabular MDP that `align.rl.envs` registers."""


# Parsing the model's reply


def _name_pattern(name: str) -> str:
    words = (name, *SYNONYMS.get(name, ()))
    return "|".join(re.escape(w).replace(r"\ ", r"\s*") for w in words)


def parse_action(text: str, action_names: tuple[str, ...] | list[str]) -> int | None:
    """The action index named in `text`, or None when it names none.

    Order: the last `<action>...</action>` holding an action name (or an index 0..A-1); else the last
    action name anywhere in the text (whole words, case-insensitive, synonyms included); else the whole
    reply being an index. Bare numbers inside prose are not read: "row 2" is not action 2.
    """
    names = [n.lower() for n in action_names]
    patterns = [re.compile(rf"\b(?:{_name_pattern(n)})\b", re.IGNORECASE) for n in names]

    def last_named(chunk: str) -> int | None:
        # The match ending last wins; of two ending together the longer, so "pick up" is not "up".
        best, best_key = None, (-1, -1)
        for a, pat in enumerate(patterns):
            for m in pat.finditer(chunk):
                if (m.end(), m.end() - m.start()) > best_key:
                    best, best_key = a, (m.end(), m.end() - m.start())
        return best

    def as_index(chunk: str) -> int | None:
        chunk = chunk.strip()
        return int(chunk) if chunk.isdigit() and int(chunk) < len(names) else None

    for inner in reversed(re.findall(r"<action>(.*?)</action>", text, re.IGNORECASE | re.DOTALL)):
        a = as_index(inner)
        a = last_named(inner) if a is None else a
        if a is not None:
            return a
    a = last_named(text)
    return as_index(text) if a is None else a


# Rendering states as text


def _grid_mdp(base: gym.Env) -> TabularMDP | None:
    """The MDP behind a grid env (FrozenLake, CliffWalking or a `TabularEnv` with a layout), else None."""
    if isinstance(base, TabularEnv):
        return base.mdp if base.mdp.layout is not None else None
    if type(base).__name__ in ("FrozenLakeEnv", "CliffWalkingEnv"):
        return from_toy_text(base)
    return None


def _task_line(base: gym.Env, mdp: TabularMDP | None) -> str:
    """One or two sentences of goal and rules, from the env's kind and, for grids, its layout."""
    kind = type(base).__name__
    if kind == "TaxiEnv":
        return (
            "Taxi: pick up the passenger and drop them off at the destination. Each move costs 1, delivery "
            "pays 20, a wrong pickup or dropoff costs 10. '|' is a wall."
        )
    if kind == "CliffWalkingEnv":
        return "Cliff walk: go from S to the goal G. Each step costs 1; the cliff C costs 100 and sends you to S."
    if mdp is None:  # a tabular MDP without a map: states are numbers
        return "Reach a goal state by choosing actions."
    cells = "".join(mdp.layout)
    rules = ["Grid world: go from S to the goal G."]
    if kind == "FrozenLakeEnv":
        rules = ["Frozen lake: walk from S to the goal G."]
    if "H" in cells:
        rules.append("A hole H ends the game.")
    if "#" in cells:
        rules.append("# is a wall.")
    live = ~mdp.terminal
    if bool((mdp.R[live] < 0).all()):
        rules.append(f"Each step costs {-float(mdp.R[live].max()):g}.")
    if bool((mdp.P[live].amax(-1) < 1).any()):
        rules.append("It is slippery: you may move another way.")
    return " ".join(rules)


def _grid_text(mdp: TabularMDP, s: int) -> str:
    rows, cols = mdp.shape
    grid = [list(row) for row in mdp.layout]
    grid[s // cols][s % cols] = "@"
    lines = "\n".join("".join(r) for r in grid)
    return f"Map (@ is you):\n{lines}\nYou are at row {s // cols + 1}, column {s % cols + 1}."


def _taxi_text(base: gym.Env, s: int) -> str:
    """Taxi's map with the taxi as '@', and where the passenger and destination are, in words."""
    row, col, passenger, dest = base.decode(s)
    grid = [[c.decode() for c in row] for row in base.desc]
    grid[row + 1][2 * col + 1] = "@"
    letters = "RGYB"
    where = "in the taxi" if passenger == 4 else f"at {letters[passenger]}"
    return (
        "Map (@ is the taxi):\n"
        + "\n".join("".join(r) for r in grid)
        + f"\nTaxi at row {row + 1}, column {col + 1}. Passenger {where}. Destination {letters[dest]}."
    )


# The wrapper


class TextEnv(gym.Wrapper):
    """A discrete toy-text env played through text: string observations (user messages), string actions.

    `env`: a gymnasium env with Discrete spaces whose unwrapped env is FrozenLake, CliffWalking, Taxi or a
    `TabularEnv` with named actions. `max_turns` (default: the env's time limit, else 100) truncates,
    counting unparsable replies too. `info` always has "role" ("user"), "state", "invalid_action",
    "action" (the parsed index or None) and "turn"; the last step adds "success" (the goal reached).
    `system_prompt` (None) and `tools` ([]) are there for the tool-using environments built on this one.
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        max_turns: int | None = None,
        invalid_action_penalty: float = -0.1,
        on_invalid: str = "continue",
        system_prompt: str | None = None,
    ):
        super().__init__(env)
        if on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        base = env.unwrapped
        names = TOY_TEXT_ACTIONS.get(type(base).__name__) or getattr(
            getattr(base, "mdp", None), "action_names", None
        )
        if not isinstance(env.action_space, spaces.Discrete) or names is None:
            raise ValueError(
                f"TextEnv needs a discrete toy-text env or a TabularEnv with action names, got {base}"
            )
        limit = env.spec.max_episode_steps if env.spec is not None else None
        self.max_turns = int(max_turns or limit or 100)
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.invalid_action_penalty = float(invalid_action_penalty)
        self.on_invalid = on_invalid
        self.system_prompt = system_prompt
        self.tools: list = []
        self.action_names = tuple(n.lower() for n in names)
        self.observation_space = spaces.Text(MAX_TEXT_LENGTH, charset=OBS_CHARSET)
        self.action_space = spaces.Text(MAX_TEXT_LENGTH, min_length=0, charset=OBS_CHARSET)
        self._mdp = _grid_mdp(base)
        self._task = _task_line(base, self._mdp)
        self._goals = goal_states(env)
        self.invalid_actions = 0
        """Unparsable replies since construction (a running count for logging)."""
        self.episode_invalid_actions = 0
        self.state: int | None = None
        self.turn = 0
        self._over = True  # no episode until reset

    def render_state(self, s: int) -> str:
        """The state as text: the grid with '@' for grid worlds, the map and a sentence for Taxi."""
        if self._mdp is not None:
            return _grid_text(self._mdp, s)
        if type(self.env.unwrapped).__name__ == "TaxiEnv":
            return _taxi_text(self.env.unwrapped, s)
        return f"You are in state {s}."

    def _prompt(self, s: int) -> str:
        return f"{self.render_state(s)}\nActions: {', '.join(self.action_names)}.\n" + ANSWER_FORMAT.format(
            example=self.action_names[0]
        )

    def _info(self, invalid: bool, action: int | None) -> dict[str, Any]:
        return {
            "role": "user",
            "state": self.state,
            "invalid_action": invalid,
            "action": action,
            "turn": self.turn,
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        s, _ = self.env.reset(seed=seed, options=options)
        self.state, self.turn, self.episode_invalid_actions, self._over = int(s), 0, 0, False
        return f"{self._task}\n{self._prompt(self.state)}", self._info(False, None)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        # The wrapped env would keep stepping after a terminal state; a finished episode must not.
        if self._over:
            raise RuntimeError("the episode is over (or never began): call reset() before step()")
        self.turn += 1
        a = parse_action(str(action), self.action_names)
        if a is None:
            return self._invalid_step()
        s_next, reward, terminated, truncated, _ = self.env.step(a)
        self.state = int(s_next)
        truncated = bool(truncated) or (self.turn >= self.max_turns and not terminated)
        info = self._info(False, a)
        if terminated or truncated:
            self._over = True
            info["success"] = bool(terminated) and (self._goals is None or self.state in self._goals)
            obs = self._final_message(info["success"], bool(terminated))
        else:
            obs = f"You chose {self.action_names[a]}; reward {float(reward):g}.\n{self._prompt(self.state)}"
        return obs, float(reward), bool(terminated), truncated, info

    def _invalid_step(self) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """An unparsable reply: penalised and counted; the state stays, or the episode ends truncated."""
        self.invalid_actions += 1
        self.episode_invalid_actions += 1
        info = self._info(True, None)
        end = self.on_invalid == "end" or self.turn >= self.max_turns
        if end:
            self._over = True
            info["success"] = False
            obs = "No valid action in your answer. The episode is over."
        else:
            obs = f"No valid action in your answer.\n{self._prompt(self.state)}"
        return obs, self.invalid_action_penalty, False, end, info

    def _final_message(self, success: bool, terminated: bool) -> str:
        if success:
            return "You reached the goal. The episode is over."
        if terminated:
            return "You failed: the episode ended before the goal."
        return "Out of turns. The episode is over."


# Registration and lookup


def text_env(
    base_id: str,
    *,
    max_turns: int,
    invalid_action_penalty: float = -0.1,
    on_invalid: str = "continue",
    system_prompt: str | None = None,
    render_mode: str | None = None,
    **base_kwargs: Any,
) -> TextEnv:
    """Entry point of the registered text ids: `TextEnv(make_env(base_id, **base_kwargs))`.

    The discrete env's time limit is set to `max_turns`: it steps at most once a turn, so it never
    truncates before the text env does, and classic agents on the same id get the same horizon.
    """
    base = rl_envs.make_env(base_id, max_episode_steps=max_turns, render_mode=render_mode, **base_kwargs)
    return TextEnv(
        base,
        max_turns=max_turns,
        invalid_action_penalty=invalid_action_penalty,
        on_invalid=on_invalid,
        system_prompt=system_prompt,
    )


def register_text_envs() -> None:
    """Register `TEXT_ENVS` with gymnasium (idempotent; done on import of `align.envs`). No
    `max_episode_steps`: the text env counts its own turns (`max_turns`)."""
    for env_id, task in TEXT_ENVS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="align.envs.text:text_env",
                kwargs={
                    "base_id": task.base_id,
                    "max_turns": task.max_turns,
                    "invalid_action_penalty": task.invalid_action_penalty,
                    **task.base_kwargs,
                },
            )


def _check_text_id(env_id: str) -> None:
    """A one-line ValueError naming the registered text ids (and the close match) for an unknown id."""
    if env_id not in TEXT_ENVS:
        close = difflib.get_close_matches(env_id, list(TEXT_ENVS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown text environment id {env_id!r}.{hint} Registered: {', '.join(TEXT_ENVS)}")


def make_text_env(env_id: str, **kwargs: Any) -> gym.Env:
    """`gymnasium.make` for a registered text id; options go to `text_env` (e.g. max_turns, on_invalid,
    is_slippery). An unknown id is a ValueError naming the registered ones."""
    _check_text_id(env_id)
    return gym.make(env_id, **kwargs)


def discrete_spec(env_id: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """(discrete env id, its `make_env` options) behind a text id, for classic agents; used by
    `align.rl.envs.make_env`. The registered options, overridden by `kwargs`, with `max_turns` as the
    time limit (`max_episode_steps`) and the options that only concern text play dropped, so one set of
    options serves both."""
    _check_text_id(env_id)
    task = TEXT_ENVS[env_id]
    options = {"max_turns": task.max_turns, **task.base_kwargs, **kwargs}
    for text_only in TEXT_ONLY_OPTIONS:
        options.pop(text_only, None)
    options["max_episode_steps"] = options.pop("max_turns")
    return task.base_id, options


def _find_text_env(env: gym.Env) -> TextEnv | None:
    while not isinstance(env, TextEnv) and isinstance(env, gym.Wrapper):
        env = env.env
    return env if isinstance(env, TextEnv) else None


def text_env_of(env: gym.Env) -> TextEnv:
    """The `TextEnv` inside `env` (gymnasium.make puts checker wrappers around it, and gymnasium 1.x
    wrappers do not forward attributes such as `tools` or `system_prompt`)."""
    found = _find_text_env(env)
    if found is None:
        raise ValueError(f"{env} is not a text environment")
    return found


def discrete_env(env: gym.Env) -> gym.Env:
    """The discrete env a text env plays (with its time limit): what classic agents and `align.rl` see.
    A discrete env is returned as it is."""
    found = _find_text_env(env)
    return env if found is None else found.env


# Reference scores: what an exact solver and a random policy achieve


def _horizon_outcome(
    mdp: TabularMDP, policy: torch.Tensor, horizon: int, goals: set[int] | None
) -> tuple[float, float]:
    """(success probability, expected undiscounted return) of `policy` within `horizon` steps, exactly:
    the state distribution is pushed through P_pi, and mass entering a goal (any terminal state when
    `goals` is None) counts as success; terminal states absorb (their mass is dropped)."""
    pi = as_policy_matrix(policy, mdp.num_actions)
    P_pi = torch.einsum("sa,sat->st", pi, mdp.P)
    R_pi = (pi * mdp.R).sum(-1)
    live = (~mdp.terminal).to(P_pi.dtype)
    goal = torch.zeros_like(live)
    goal[list(goals) if goals is not None else mdp.terminal] = 1.0
    d, success, ret = mdp.initial * live, 0.0, 0.0
    for _ in range(horizon):
        ret += float(d @ R_pi)
        d = d @ P_pi
        success += float(d @ goal)
        d = d * live
    return success, ret


def reference_scores(env: gym.Env, horizon: int | None = None) -> dict[str, float]:
    """Success rate and return of the optimal policy (value iteration on the exact MDP, `align.rl.tabular`)
    and of the uniform random policy, within `horizon` steps (default: the text env's `max_turns`, else
    the discrete env's time limit, else 100). `env`: a text env or the discrete env it plays.

    The optimal policy is value iteration's greedy policy for the MDP's discount (0.99 for toy text, the
    tabular MDP's own gamma), then evaluated exactly with the horizon; these are the numbers a language
    model playing the text env is measured against.
    """
    text = _find_text_env(env)
    horizon = horizon or (text.max_turns if text is not None else None)
    base = discrete_env(env)
    horizon = int(horizon or (base.spec.max_episode_steps if base.spec else None) or 100)
    mdp = from_toy_text(base)
    goals = goal_states(base)
    _, _, greedy_policy, _ = value_iteration(mdp)
    opt_success, opt_return = _horizon_outcome(mdp, greedy_policy, horizon, goals)
    rnd_success, rnd_return = _horizon_outcome(
        mdp, uniform_policy(mdp.num_states, mdp.num_actions), horizon, goals
    )
    return {
        "horizon": horizon,
        "optimal_success": opt_success,
        "optimal_return": opt_return,
        "random_success": rnd_success,
        "random_return": rnd_return,
    }
