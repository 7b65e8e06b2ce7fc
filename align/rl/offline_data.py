r"""Offline RL datasets the project makes: trajectories of its own agents, stored one episode per row.

Datasets (D4RL's names, Fu et al. 2020), made deterministically from a seed by ``make_offline_dataset``:

    random         uniformly random actions
    medium         a noisy expert: each action is uniformly random with probability ``MEDIUM_EPS[env]``, tuned
                   so the mean return is a third to a half of the expert's
    medium-replay  the episodes of a "training run" that improves from random to medium: the random-action
                   probability falls linearly from 1 to ``MEDIUM_EPS[env]`` over the episodes, so the data
                   hold every quality between random and medium (D4RL: the replay buffer of a SAC run stopped
                   at the medium level)
    medium-expert  the medium episodes followed by as many steps of expert episodes
    expert         the expert alone

The experts of the default source are the project's own controllers, not trained networks (these are
cheap and reproducible to the bit; the "ppo" source below trains one): on CartPole-v1 a hand-written linear
controller of the pole angle and velocity, ``a = [theta + 0.5 theta' + 0.01 x + 0.1 x' > 0]``, which holds
the pole for all 500 steps from every start tried; on the toy-text grid worlds the greedy policy of
``align.rl.tabular.value_iteration`` on the environment's exact model. CartPole-v1 and FrozenLake-v1 (4x4,
slippery) are the tuned ones (``MEDIUM_EPS``); CliffWalking-v1 and Taxi-v4 work with the untuned default
0.5 (CliffWalking has no time limit, so its random episodes can run to thousands of steps).

Sources (``source=``): "controller" (the default) is the above. "ppo" (CartPole-v1 only) is closer to
D4RL's real training runs: the snapshots and training episodes of the project's PPO, described in
``align.rl.offline_agents``. Its files carry the source in their name.

The files (one episode per row, a ``<name>.stats.json`` beside them) and their checks are
``align.rl.offline_dataset``'s. ``returns_to_go`` and ``sample_subsequences`` turn episodes into the
Decision Transformer's (R_t, s_t, a_t) training windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from align.advantages import discounted_returns
from align.rl.envs import make_env, resolve_env_id
from align.rl.offline_dataset import (
    DATASET_KINDS,
    DEFAULT_STEPS,
    OfflineDataset,
    episode_from_steps,
    offline_data_dir,
    save_offline_dataset,
)

DATA_SOURCES = ("controller", "ppo")
"""Behaviour sources of the generated datasets: the hand-written / value-iteration experts plus noise, or a
trained PPO agent's snapshots and training episodes (``align.rl.offline_agents``, CartPole-v1 only)."""

MEDIUM_EPS = {"CartPole-v1": 0.5, "FrozenLake-v1": 0.15}
"""Probability of a uniformly random action in the 'medium' policy, per environment, tuned so that the
medium return is a third to a half of the expert's (README.md lists the returns it gives)."""


# Returns-to-go


def returns_to_go(rewards: torch.Tensor | np.ndarray, gamma: float = 1.0) -> torch.Tensor:
    r"""The return-to-go of every step of one episode, ``R_t = sum_{t' >= t} gamma^{t'-t} r_{t'}``.

    Chen et al. 2021, sec. 3.1: the Decision Transformer conditions on ``R_t`` (undiscounted, gamma = 1)
    instead of the reward, so that at test time it can be asked for a return. This is
    ``align.advantages.discounted_returns`` of a single episode (no bootstrap: the episode is complete).
    ``rewards`` ``(T,)``: ``r_t`` received after ``a_t``. Returns ``(T,)`` float64: ``R_0`` is the episode
    return and ``R_{T-1} = r_{T-1}``.
    """
    r = torch.as_tensor(np.asarray(rewards), dtype=torch.float64)
    if r.dim() != 1:
        raise ValueError(f"rewards must be one episode, shape (T,), got {tuple(r.shape)}")
    return discounted_returns(r, gamma=gamma)


# Behaviour policies and generation

Policy = Callable[[Any], Any]


def cartpole_expert(obs: np.ndarray) -> int:
    """The hand-written CartPole-v1 expert: push towards where the pole is falling.

    ``a = [theta + 0.5 theta' + 0.01 x + 0.1 x' > 0]`` (1 = push right): a linear (PD) controller of the
    pole angle, with small cart terms that keep the cart near the centre. Return 500 from every start tried.
    """
    x, x_dot, theta, theta_dot = (float(v) for v in obs)
    return int(theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0)


def tabular_expert(env: gym.Env, gamma: float = 0.99) -> Policy:
    """The optimal policy of a toy-text environment: greedy on ``value_iteration`` of its exact model."""
    from align.rl.mdp import from_toy_text
    from align.rl.tabular import value_iteration

    _, _, greedy, _ = value_iteration(from_toy_text(env, gamma=gamma))
    actions = greedy.argmax(-1).tolist()
    return lambda s: actions[int(s)]


def expert_policy(env_id: str, env: gym.Env) -> Policy:
    """The project's expert for ``env_id``: the CartPole controller, or value iteration on a toy-text model."""
    if resolve_env_id(env_id) == "CartPole-v1":
        return cartpole_expert
    if isinstance(env.observation_space, gym.spaces.Discrete):
        return tabular_expert(env)
    raise ValueError(
        f"no expert for {env_id}: datasets can be generated for CartPole-v1 and the toy-text grid worlds "
        "(FrozenLake-v1, CliffWalking-v1, Taxi-v4); for other environments pass your own file (dataset_path)"
    )


def collect_episodes(
    env: gym.Env,
    expert: Policy,
    epsilons: Callable[[int], float],
    *,
    steps: int,
    seed: int,
    rng: np.random.Generator,
) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Play whole episodes until at least ``steps`` steps were taken (the last episode is finished).

    Episode ``i`` follows ``expert`` except that each action is uniformly random with probability
    ``epsilons(i)``. The first reset uses ``seed``; later resets continue the environment's stream.
    """
    n_actions = int(env.action_space.n)
    episodes, policies = [], []
    total, i = 0, 0
    while total < steps:
        eps = float(epsilons(i))
        obs, _ = env.reset(seed=seed if i == 0 else None)
        steps_taken: list[tuple] = []
        while True:
            act = int(rng.integers(n_actions)) if rng.random() < eps else int(expert(obs))
            nxt, rew, terminated, truncated, _ = env.step(act)
            steps_taken.append((obs, act, float(rew), bool(terminated), bool(truncated and not terminated)))
            obs = nxt
            if terminated or truncated:
                break
        episodes.append(episode_from_steps(steps_taken))
        policies.append("expert" if eps == 0 else "random" if eps == 1 else f"eps={eps:.2f}")
        total += len(steps_taken)
        i += 1
    return episodes, policies


def make_offline_dataset(
    env_id: str,
    kind: str,
    *,
    seed: int = 0,
    steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    source: str = "controller",
    cache_dir: str | Path | None = None,
) -> OfflineDataset:
    """Generate the ``kind`` dataset (see the module docstring) on ``env_id``, deterministically from ``seed``.

    ``steps``: environment steps per part (default ``DEFAULT_STEPS[env_id]``, else 20,000); whole episodes
    are kept, so a part has at least ``steps`` steps. medium-expert has two parts (medium, then expert).
    ``source``: "controller" or "ppo" (see the module docstring). ``cache_dir``: where the "ppo" source
    keeps its trained agent (default ``offline_data_dir()``); the controller source uses no cache.
    """
    check_source(source)
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {list(DATASET_KINDS)}")
    if source == "ppo":
        # Imported here, not at the top, so that the controller source does not load the PPO trainer.
        from align.rl.offline_agents import make_ppo_dataset

        if env_kwargs:
            raise ValueError(
                f"env_kwargs: the 'ppo' source trains on the environment as registered; got {env_kwargs}"
            )
        return make_ppo_dataset(env_id, kind, seed=seed, steps=steps, cache_dir=cache_dir)
    env_id = resolve_env_id(env_id)
    env = make_env(env_id, **(env_kwargs or {}))
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise ValueError(f"{env_id}: datasets are generated for discrete-action environments only")
    steps = int(steps or DEFAULT_STEPS.get(env_id, 20_000))
    med = MEDIUM_EPS.get(env_id, 0.5)
    try:
        episodes, policies = _controller_episodes(env, expert_policy(env_id, env), kind, seed, steps, med)
    finally:
        env.close()
    meta = {
        "env_id": env_id,
        "kind": kind,
        "seed": seed,
        "source": "controller",
        "steps_per_part": steps,
        "medium_eps": med,
    }
    return OfflineDataset(episodes, policies, "<generated>", meta)


def _controller_episodes(
    env: gym.Env, expert: Policy, kind: str, seed: int, steps: int, med: float
) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """The episodes and behaviour labels of the ``kind`` dataset: ``expert`` with random actions at the rate
    of the kind (``med`` for medium)."""
    # One generator per (seed, kind): each dataset is reproducible on its own, whatever else was made.
    rng = np.random.default_rng([seed, DATASET_KINDS.index(kind)])
    env_seed = seed * 1000 + DATASET_KINDS.index(kind)

    def part(eps: Callable[[int], float], s: int) -> tuple[list, list]:
        return collect_episodes(env, expert, eps, steps=steps, seed=s, rng=rng)

    rate = {"random": 1.0, "medium": med, "expert": 0.0}.get(kind)
    if rate is not None:
        return part(lambda i: rate, env_seed)
    if kind == "medium-expert":
        e1, p1 = part(lambda i: med, env_seed)
        e2, p2 = part(lambda i: 0.0, env_seed + 500)
        return e1 + e2, p1 + p2
    # medium-replay: a "training run" from random to medium. The number of episodes is not known in advance
    # (episodes lengthen as the policy improves), so the schedule runs over the expected count, from the
    # mean lengths of random (about 22 steps on CartPole) and medium episodes.
    n_rand = _mean_length(env, expert, 1.0, seed, med)
    n_med = _mean_length(env, expert, med, seed, med)
    n_eps = max(2, int(steps / ((n_rand + n_med) / 2)))
    episodes, policies = part(lambda i: max(med, 1.0 - (1.0 - med) * i / (n_eps - 1)), env_seed)
    return episodes, [p if p != "random" else "eps=1.00" for p in policies]


def _mean_length(env: gym.Env, expert: Policy, eps: float, seed: int, med: float) -> float:
    rng = np.random.default_rng([seed, 99])
    eps_, _ = collect_episodes(env, expert, lambda i: eps, steps=2000, seed=seed + 99, rng=rng)
    return float(np.mean([len(e["rewards"]) for e in eps_]))


def check_source(source: str) -> None:
    """Raise a ``ValueError`` naming the option when ``source`` is not one of ``DATA_SOURCES``."""
    if source not in DATA_SOURCES:
        raise ValueError(f"source: unknown data source {source!r}; expected one of {list(DATA_SOURCES)}")


def dataset_file_name(
    env_id: str, kind: str, seed: int, steps: int | None, source: str = "controller"
) -> str:
    """``<env>_<kind>_s<seed>_<steps>.parquet``, with ``_<source>`` after the environment for a source other
    than "controller": everything that determines the generated data is in the name. The controller's names
    are those from before sources existed, so caches made then stay valid."""
    check_source(source)
    steps = int(steps or DEFAULT_STEPS.get(resolve_env_id(env_id), 20_000))
    tag = "" if source == "controller" else f"_{source}"
    return f"{resolve_env_id(env_id).replace('/', '_')}{tag}_{kind}_s{seed}_{steps}.parquet"


def ensure_offline_dataset(
    env_id: str,
    kind: str,
    *,
    seed: int = 0,
    steps: int | None = None,
    cache_dir: str | Path | None = None,
    env_kwargs: dict[str, Any] | None = None,
    source: str = "controller",
) -> Path:
    """The path of the generated dataset, making it first when it is not cached yet (the first "ppo" dataset
    of a seed also trains its agent)."""
    path = offline_data_dir(cache_dir) / dataset_file_name(env_id, kind, seed, steps, source)
    if not path.is_file():
        dataset = make_offline_dataset(
            env_id, kind, seed=seed, steps=steps, env_kwargs=env_kwargs, source=source, cache_dir=cache_dir
        )
        save_offline_dataset(dataset, path)
    return path


# Training windows for the Decision Transformer


@dataclass
class SequenceData:
    """Episodes prepared for sampling: normalised states, actions, returns-to-go and timesteps.

    ``states[i]`` is ``(T_i, S)`` float32: ``(s - mean) / std`` for Box observations (Chen et al. normalise
    states by the dataset's statistics), one-hot for Discrete ones. ``rtg[i]`` is ``(T_i,)`` float32, the
    returns-to-go divided by ``return_scale``. ``actions[i]`` is ``(T_i,)`` int64 or ``(T_i, A)`` float32.
    """

    states: list[np.ndarray]
    actions: list[np.ndarray]
    rtg: list[np.ndarray]
    timesteps: list[np.ndarray]
    state_mean: np.ndarray
    state_std: np.ndarray
    return_scale: float
    discrete: bool
    act_dim: int
    max_timestep: int

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(a) for a in self.actions], dtype=np.int64)


def encode_states(
    obs: np.ndarray, state_mean: np.ndarray, state_std: np.ndarray, num_states: int | None
) -> np.ndarray:
    """Observations ``(T, *obs)`` (or ``(T,)`` Discrete indices) to model inputs ``(T, S)`` float32."""
    if num_states is not None:
        return np.eye(num_states, dtype=np.float32)[np.asarray(obs, dtype=np.int64)]
    flat = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
    return ((flat - state_mean) / state_std).astype(np.float32)


def prepare_sequences(
    dataset: OfflineDataset,
    *,
    num_states: int | None,
    act_dim: int,
    return_scale: float,
    normalize_states: bool = True,
    max_timestep: int = 1000,
) -> SequenceData:
    """``SequenceData`` from a dataset: state statistics over all steps, returns-to-go, scaled.

    ``num_states``: the size of a Discrete observation space (one-hot states), or None for Box observations.
    Timesteps above ``max_timestep - 1`` (the size of the timestep embedding) are clamped to it.
    """
    eps = dataset.episodes
    if num_states is None:
        all_obs = np.concatenate([e["observations"].reshape(len(e["observations"]), -1) for e in eps])
        mean = all_obs.mean(0) if normalize_states else np.zeros(all_obs.shape[1], np.float32)
        # A constant feature would divide by zero; 1e-6 keeps it at 0 instead (as Chen et al.).
        std = all_obs.std(0) + 1e-6 if normalize_states else np.ones(all_obs.shape[1], np.float32)
        mean, std = mean.astype(np.float32), std.astype(np.float32)
    else:
        mean, std = np.zeros(num_states, np.float32), np.ones(num_states, np.float32)
    return SequenceData(
        states=[encode_states(e["observations"], mean, std, num_states) for e in eps],
        actions=[e["actions"] for e in eps],
        rtg=[(returns_to_go(e["rewards"]).numpy() / return_scale).astype(np.float32) for e in eps],
        timesteps=[np.minimum(e["timesteps"], max_timestep - 1) for e in eps],
        state_mean=mean,
        state_std=std,
        return_scale=float(return_scale),
        discrete=dataset.discrete_actions,
        act_dim=int(act_dim),
        max_timestep=int(max_timestep),
    )


def sample_starts(
    lengths: Sequence[int] | np.ndarray, batch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``batch_size`` (episode, start) pairs: the episode with probability proportional to its length,
    the start uniformly among its steps (Chen et al.'s gym sampler; every step is equally likely to start a
    window). Returns ``(B, 2)`` int64."""
    lengths = np.asarray(lengths, dtype=np.int64)
    p = lengths / lengths.sum()
    ep = rng.choice(len(lengths), size=batch_size, p=p)
    start = np.floor(rng.random(batch_size) * lengths[ep]).astype(np.int64)
    return np.stack([ep, start], axis=1)


def make_windows(data: SequenceData, picks: np.ndarray, context_length: int) -> dict[str, torch.Tensor]:
    """The training batch for ``picks`` ``(B, 2)`` = (episode, start): steps ``start .. start + K - 1`` of each
    episode (fewer where the episode ends first), left-padded to K.

    Left padding (as Chen et al. and the transformers example) puts the newest step last, where evaluation
    reads its prediction. Padded steps have mask 0, zero states / returns / timesteps, and action label 0
    (masked out of the loss).

    Returns ``states`` (B, K, S), ``actions`` (B, K) int64 labels or (B, K, A) floats, ``returns_to_go``
    (B, K, 1), ``timesteps`` (B, K) int64, ``mask`` (B, K) float (1 = a real step).
    """
    B, K = len(picks), int(context_length)
    S = data.states[0].shape[1]
    states = np.zeros((B, K, S), np.float32)
    actions = np.zeros((B, K), np.int64) if data.discrete else np.zeros((B, K, data.act_dim), np.float32)
    rtg = np.zeros((B, K, 1), np.float32)
    timesteps = np.zeros((B, K), np.int64)
    mask = np.zeros((B, K), np.float32)
    for b, (i, s) in enumerate(picks):
        e = min(int(s) + K, len(data.actions[i]))
        n = e - int(s)
        states[b, K - n :] = data.states[i][s:e]
        actions[b, K - n :] = data.actions[i][s:e]
        rtg[b, K - n :, 0] = data.rtg[i][s:e]
        timesteps[b, K - n :] = data.timesteps[i][s:e]
        mask[b, K - n :] = 1.0
    return {
        "states": torch.from_numpy(states),
        "actions": torch.from_numpy(actions),
        "returns_to_go": torch.from_numpy(rtg),
        "timesteps": torch.from_numpy(timesteps),
        "mask": torch.from_numpy(mask),
    }


def sample_subsequences(
    data: SequenceData, batch_size: int, context_length: int, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """A random training batch: ``make_windows`` at ``sample_starts`` (length-weighted episodes)."""
    return make_windows(data, sample_starts(data.lengths, batch_size, rng), context_length)


def check_context_length(dataset: OfflineDataset, context_length: int) -> None:
    """A context longer than every episode only ever sees padding beyond the longest one: refuse it."""
    longest = int(dataset.lengths.max())
    if context_length > longest:
        raise ValueError(
            f"context_length={context_length} is longer than every episode in {dataset.path} (the longest has "
            f"{longest} steps, the mean {dataset.lengths.mean():.1f}); the extra positions would only ever hold "
            f"padding. Set context_length to at most {longest}"
        )


def dataset_summary_line(stats: dict[str, Any]) -> str:
    """One line for logs: episodes, steps and the return statistics."""
    source = stats.get("source", "controller")
    tag = "" if source == "controller" else f" ({source})"
    return (
        f"{stats.get('env_id', '?')} {stats.get('kind', '?')}{tag}: {stats['episodes']} episodes, {stats['steps']} steps, "
        f"return {stats['return_mean']:.1f} +- {stats['return_std']:.1f} (min {stats['return_min']:.1f}, "
        f"max {stats['return_max']:.1f})"
    )
