"""Environments for classic RL: the gymnasium ids this project supports, and its own tabular MDPs.

`make_env` / `make_vec_env` accept only the ids in `SUPPORTED_ENVS` (a typo is an error that suggests
the close match, not a surprise download of some other environment). Older ids of the toy-text
environments are accepted as aliases of the ids gymnasium 1.x registers: `CliffWalking-v0` ->
`CliffWalking-v1` and `Taxi-v3` -> `Taxi-v4` (same default dynamics; v1 / v4 only add slippery, rainy
and fickle options). Importing this module registers the project's MDPs as gymnasium environments:

    align/Maze-v0           `mdp.maze` (Dyna maze of S&B Figure 8.2 by default), -1 per step, gamma 1
    align/SlipperyGrid-v0   `mdp.slippery_grid`, intended move with probability 0.5, +1 goal
    align/RandomWalk-v0     `mdp.random_walk`, S&B Example 6.2

Keyword arguments of `make_env` go to the constructor (`layout=[...]` for the maze, `map_name="8x8"`,
`is_slippery=False` for FrozenLake).

The text ids of `align.envs.text` (`align/FrozenLakeText-v0`, ...: environments a language model plays
through text) are accepted too: `make_env` of one gives the discrete env it wraps, with the same options
and its `max_turns` as the time limit, so one id serves value iteration, Q-learning, DQN and the model.
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym

from align.rl import mdp as mdp_lib

SUPPORTED_ENVS: dict[str, str] = {
    "CartPole-v1": "classic control, 4-d observation, 2 discrete actions",
    "Acrobot-v1": "classic control, 6-d observation, 3 discrete actions",
    "MountainCar-v0": "classic control, 2-d observation, 3 discrete actions",
    "Pendulum-v1": "classic control, continuous torque (Box action)",
    "MountainCarContinuous-v0": "classic control, continuous force (Box action)",
    "FrozenLake-v1": "toy text, 4x4 or 8x8 (map_name), is_slippery",
    "FrozenLake8x8-v1": "toy text, FrozenLake with map_name='8x8'",
    "CliffWalking-v1": "toy text, 4x12, S&B Example 6.6",
    "Taxi-v4": "toy text, 500 states, 6 actions",
    "align/Maze-v0": "tabular maze, deterministic, -1 per step",
    "align/SlipperyGrid-v0": "tabular grid, slippery moves, +1 goal",
    "align/RandomWalk-v0": "tabular random walk, S&B Example 6.2",
}
"""The ids `make_env` accepts, with one line each."""

ALIASES: dict[str, str] = {"CliffWalking-v0": "CliffWalking-v1", "Taxi-v3": "Taxi-v4"}
"""Older ids mapped to gymnasium 1.x's ids for the same (default) environment."""

_OWN = {
    "align/Maze-v0": ("maze", 500),
    "align/SlipperyGrid-v0": ("slippery_grid", 200),
    "align/RandomWalk-v0": ("random_walk", 1000),
}


def tabular_env(factory: str, render_mode: str | None = None, **kwargs: Any) -> mdp_lib.TabularEnv:
    """Entry point of the registered ids: `TabularEnv(mdp.<factory>(**kwargs))`."""
    return mdp_lib.TabularEnv(getattr(mdp_lib, factory)(**kwargs), render_mode=render_mode)


def register_envs() -> None:
    """Register the project's MDPs with gymnasium (idempotent; done on import of this module)."""
    for env_id, (factory, max_steps) in _OWN.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="align.rl.envs:tabular_env",
                max_episode_steps=max_steps,
                kwargs={"factory": factory},
            )


register_envs()


def _text_env_spec(env_id: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(discrete id, options) behind a text id (`align/<Name>Text-v0`), None for other ids."""
    if not (env_id.startswith("align/") and "Text-v" in env_id):
        return None
    from align.envs.text import discrete_spec  # lazy: align.envs is built on this module

    return discrete_spec(env_id, **kwargs)


def resolve_env_id(env_id: str) -> str:
    """The gymnasium id for `env_id` (aliases applied); a ValueError for ids not in `SUPPORTED_ENVS` (or,
    for a text id, not in `align.envs.text.TEXT_ENVS`)."""
    if _text_env_spec(env_id, {}) is not None:
        return env_id
    if env_id in ALIASES:
        return ALIASES[env_id]
    if env_id in SUPPORTED_ENVS:
        return env_id
    known = list(SUPPORTED_ENVS) + list(ALIASES)
    close = difflib.get_close_matches(env_id, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown environment id {env_id!r}.{hint} Supported: {', '.join(SUPPORTED_ENVS)}")


def check_env_kwargs(env_id: str, kwargs: dict[str, Any]) -> None:
    """Refuse, naming the option, a constructor option whose value the environment would fail on
    unhelpfully: FrozenLake's `map_name` must be one of its maps ('4x4', '8x8'; gymnasium raises a bare
    `KeyError`). Raises `align.config.ConfigError` (a `ValueError`)."""
    if resolve_env_id(env_id).startswith("FrozenLake") and kwargs.get("map_name") is not None:
        from gymnasium.envs.toy_text.frozen_lake import MAPS

        from align.config import ConfigError

        if kwargs["map_name"] not in MAPS and kwargs.get("desc") is None:
            raise ConfigError(
                f"map_name: FrozenLake has no map {kwargs['map_name']!r}; choose one of "
                f"{', '.join(repr(m) for m in MAPS)}"
            )


def make_env(env_id: str, *, seed: int | None = None, **kwargs: Any) -> gym.Env:
    """`gym.make` for a supported id (its options checked by `check_env_kwargs`). With `seed`, the env is
    reset once with it (and its action space seeded), so the following `reset()` calls continue a
    reproducible stream. A text id gives the discrete env it wraps (`_text_env_spec`)."""
    env_id, kwargs = _text_env_spec(env_id, kwargs) or (env_id, kwargs)
    check_env_kwargs(env_id, kwargs)
    env = gym.make(resolve_env_id(env_id), **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vec_env(
    env_id: str,
    num_envs: int,
    *,
    seed: int | None,
    vector_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """`gym.make_vec` for a supported id: `num_envs` copies in one process. With `seed`, copy i is reset
    with seed + i (gymnasium's convention) and the action space is seeded. `vector_kwargs` go to the vector
    env (e.g. {"autoreset_mode": AutoresetMode.SAME_STEP}).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    env_id, kwargs = _text_env_spec(env_id, kwargs) or (env_id, kwargs)
    check_env_kwargs(env_id, kwargs)
    envs = gym.make_vec(
        resolve_env_id(env_id),
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs=vector_kwargs,
        **kwargs,
    )
    if seed is not None:
        envs.reset(seed=seed)
        envs.action_space.seed(seed)
    return envs


def _env_name(env: gym.Env | gym.vector.VectorEnv) -> str:
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(getattr(env, "unwrapped", env)).__name__


def action_space_kind(env: gym.Env | gym.vector.VectorEnv) -> str:
    """'discrete' for a Discrete action space, 'continuous' for a Box one (a vector env's single space)."""
    space = getattr(env, "single_action_space", None) or env.action_space
    if isinstance(space, gym.spaces.Discrete):
        return "discrete"
    if isinstance(space, gym.spaces.Box):
        return "continuous"
    raise ValueError(
        f"{_env_name(env)} has an action space of type {type(space).__name__}, neither Discrete nor Box"
    )


def require_discrete(env: gym.Env | gym.vector.VectorEnv, algo_name: str) -> None:
    """Raise a ValueError naming the env and `algo_name` unless the env's actions are discrete."""
    kind = action_space_kind(env)
    if kind != "discrete":
        raise ValueError(
            f"{algo_name} needs a discrete action space, but {_env_name(env)} has {kind} actions "
            f"({getattr(env, 'single_action_space', None) or env.action_space})"
        )
