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

The experts of the default source are the project's own controllers, not trained networks (these take
milliseconds and are reproducible to the bit; the "ppo" source below trains one): on CartPole-v1 a hand-written linear
controller of the pole angle and velocity, ``a = [theta + 0.5 theta' + 0.01 x + 0.1 x' > 0]``, which holds
the pole for all 500 steps from every start tried; on the toy-text grid worlds the greedy policy of
``align.rl.tabular.value_iteration`` on the environment's exact model. CartPole-v1 and FrozenLake-v1 (4x4,
slippery) are the tuned ones (``MEDIUM_EPS``); CliffWalking-v1 and Taxi-v4 work with the untuned default
0.5 (CliffWalking has no time limit, so its random episodes can run to thousands of steps).

Sources (``source=``): "controller" (the default) is the above. "ppo" (CartPole-v1 only,
``align.rl.offline_agents``) is closer to D4RL's real training runs: the project's PPO is trained once per
seed (about 20 s, cached under ``offline_data_dir() / "agents"``) with policy snapshots along the way;
medium is a partly-trained snapshot (mean return closest to 0.4 of the final policy's), expert the final
policy, medium-replay the run's own training episodes up to the medium snapshot. Its files carry the source
in their name, and its stats.json the snapshots used (updates, environment steps, fraction of training,
mean return).

Storage (Parquet, or JSONL with the same fields): one row per episode with list columns

    observations  (T, *obs) floats, or (T,) ints for a Discrete observation space
    actions       (T,) ints (Discrete actions) or (T, A) floats
    rewards       (T,) floats: r_t, received after a_t
    terminals     (T,) bools: the episode ended in a terminal state after step t (never set on a time limit)
    timeouts      (T,) bools: the episode was cut by the time limit after step t
    timesteps     (T,) ints: t = 0, 1, ..., T - 1
    policy        string: which behaviour policy made the episode ("expert", "eps=0.50", ...)

and a ``<name>.stats.json`` next to it with the return statistics (episodes, steps, return mean / std /
min / max, lengths). ``load_offline_dataset`` checks every row and names the file, row and field of
anything wrong. ``returns_to_go`` and ``sample_subsequences`` turn episodes into the Decision Transformer's
(R_t, s_t, a_t) training windows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from align.advantages import discounted_returns
from align.rl.envs import make_env, resolve_env_id

DATASET_KINDS = ("random", "medium", "medium-replay", "medium-expert", "expert")
"""The dataset names ``make_offline_dataset`` accepts."""

DATA_SOURCES = ("controller", "ppo")
"""Behaviour sources of the generated datasets: the hand-written / value-iteration experts plus noise, or a
trained PPO agent's snapshots and training episodes (``align.rl.offline_agents``, CartPole-v1 only)."""

STATS_META_KEYS = (
    "env_id",
    "kind",
    "seed",
    "source",
    "expert_return_mean",
    "medium_snapshot",
    "expert_snapshot",
)
"""Generator metadata copied into ``stats()`` (and so into stats.json)."""

REQUIRED_FIELDS = ("observations", "actions", "rewards", "terminals", "timesteps")
"""Per-step fields every dataset row must have (``timeouts`` and ``policy`` are optional)."""

FIELD_HELP = {
    "observations": "one observation per step",
    "actions": "one action per step",
    "rewards": "one reward per step (the returns-to-go are computed from them)",
    "terminals": "one bool per step, True where the episode ended in a terminal state",
    "timesteps": "the step index t = 0, 1, ... of each step",
}

MEDIUM_EPS = {"CartPole-v1": 0.5, "FrozenLake-v1": 0.15}
"""Probability of a uniformly random action in the 'medium' policy, per environment. Measured (seed 0):
CartPole-v1 mean return 186 (expert 500, random 22); FrozenLake-v1 4x4 slippery success rate 0.29
(expert 0.74, random 0.012). The slippery lake punishes noise hard: at 0.5 the success rate is 0.06."""

DEFAULT_STEPS = {"CartPole-v1": 50_000, "FrozenLake-v1": 20_000}
"""Environment steps per generated part (medium-expert has two parts), per environment."""


class OfflineDataError(ValueError):
    """A dataset file is malformed; the message names the file, the row (episode) and the field."""


# --------------------------------------------------------------------------------------------------
# Returns-to-go
# --------------------------------------------------------------------------------------------------


def returns_to_go(rewards: torch.Tensor | np.ndarray, gamma: float = 1.0) -> torch.Tensor:
    r"""The return-to-go of every step of one episode, ``R_t = sum_{t' >= t} gamma^{t'-t} r_{t'}``.

    Chen et al. 2021, sec. 3.1: the Decision Transformer conditions on ``R_t`` (undiscounted, gamma = 1)
    instead of the reward, so that at test time it can be asked for a return. This is
    ``align.advantages.discounted_returns`` of a single episode (no bootstrap: the episode is complete).

    Args:
        rewards: ``(T,)`` rewards of one episode, ``r_t`` received after ``a_t``.
        gamma: discount; 1 in the paper.

    Returns:
        ``(T,)`` float64 tensor; ``R_0`` is the episode return and ``R_{T-1} = r_{T-1}``.
    """
    r = torch.as_tensor(np.asarray(rewards), dtype=torch.float64)
    if r.dim() != 1:
        raise ValueError(f"rewards must be one episode, shape (T,), got {tuple(r.shape)}")
    return discounted_returns(r, gamma=gamma)


# --------------------------------------------------------------------------------------------------
# The dataset in memory
# --------------------------------------------------------------------------------------------------


@dataclass
class OfflineDataset:
    """Episodes as numpy arrays (see the module docstring for the fields) plus where they came from."""

    episodes: list[dict[str, np.ndarray]]
    """One dict per episode: observations, actions, rewards, terminals, timeouts, timesteps."""
    policies: list[str] = field(default_factory=list)
    """Behaviour policy of each episode (empty strings when the file has none)."""
    path: str = "<memory>"
    """File the dataset was read from (for messages)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """env_id, kind, seed, ... as written by the generator."""

    @property
    def lengths(self) -> np.ndarray:
        """(N,) episode lengths."""
        return np.array([len(e["rewards"]) for e in self.episodes], dtype=np.int64)

    @property
    def returns(self) -> np.ndarray:
        """(N,) undiscounted episode returns."""
        return np.array([float(np.sum(e["rewards"], dtype=np.float64)) for e in self.episodes])

    @property
    def discrete_actions(self) -> bool:
        return self.episodes[0]["actions"].ndim == 1

    @property
    def discrete_observations(self) -> bool:
        return self.episodes[0]["observations"].ndim == 1

    def stats(self) -> dict[str, Any]:
        """Return statistics: the dataset's mean and best trajectory returns are the baselines of Chen et al."""
        ret, n = self.returns, self.lengths
        by_policy: dict[str, int] = {}
        for p in self.policies:
            by_policy[p] = by_policy.get(p, 0) + 1
        return {
            **{k: v for k, v in self.meta.items() if k in STATS_META_KEYS},
            "episodes": len(self.episodes),
            "steps": int(n.sum()),
            "return_mean": float(ret.mean()),
            "return_std": float(ret.std()),
            "return_min": float(ret.min()),
            "return_max": float(ret.max()),
            "return_median": float(np.median(ret)),
            "length_mean": float(n.mean()),
            "length_min": int(n.min()),
            "length_max": int(n.max()),
            "episodes_by_policy": dict(sorted(by_policy.items())),
        }


# --------------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------------


def _stats_path(path: Path) -> Path:
    return path.with_name(path.name.rsplit(".", 1)[0] + ".stats.json")


def save_offline_dataset(dataset: OfflineDataset, path: str | Path) -> Path:
    """Write ``dataset`` to ``path`` (``.parquet`` or ``.jsonl``) and its statistics to ``<name>.stats.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, ep in enumerate(dataset.episodes):
        rows.append(
            {
                "observations": ep["observations"].tolist(),
                "actions": ep["actions"].tolist(),
                "rewards": ep["rewards"].astype(np.float64).tolist(),
                "terminals": ep["terminals"].astype(bool).tolist(),
                "timeouts": ep["timeouts"].astype(bool).tolist(),
                "timesteps": ep["timesteps"].astype(np.int64).tolist(),
                "policy": dataset.policies[i] if dataset.policies else "",
            }
        )
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        table = table.replace_schema_metadata({"align": json.dumps(dataset.meta)})
        pq.write_table(table, tmp)
    elif path.suffix == ".jsonl":
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    else:
        raise ValueError(f"{path}: unsupported extension {path.suffix!r}; use .parquet or .jsonl")
    tmp.replace(path)  # atomic: a reader never sees half a file
    _stats_path(path).write_text(json.dumps(dataset.stats(), indent=2) + "\n")
    return path


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(b"align")
        return table.to_pylist(), (json.loads(raw) if raw else {})
    if path.suffix == ".jsonl":
        rows = []
        with open(path) as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise OfflineDataError(f"{path}, line {n + 1}: not valid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise OfflineDataError(
                        f"{path}, line {n + 1}: expected a JSON object (one episode), got {type(row).__name__}"
                    )
                rows.append(row)
        return rows, {}
    raise OfflineDataError(f"{path}: unsupported extension {path.suffix!r}; expected .parquet or .jsonl")


def load_offline_dataset(path: str | Path, env: gym.Env | None = None) -> OfflineDataset:
    """Read and check a dataset file; with ``env``, also check observations and actions against its spaces.

    Every problem is an ``OfflineDataError`` naming the file, the row (episode) and the field, and saying what
    was expected: a missing field (e.g. no ``rewards``, so no returns), fields of one episode with different
    numbers of steps, a null or non-finite reward, observation or action, a terminal that is not true or
    false, a timestep that is not an integer >= 0, observations of the wrong shape, out-of-range actions.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"offline dataset {str(path)!r} does not exist (make one with data/make_offline_rl.py)"
        )
    rows, meta = _read_rows(path)
    if not rows:
        raise OfflineDataError(f"{path}: the dataset has no episodes")
    obs_space = env.observation_space if env is not None else None
    act_space = env.action_space if env is not None else None
    episodes, policies = [], []
    for i, row in enumerate(rows):
        where = f"{path}, row {i} (episode {i})"
        missing = [k for k in REQUIRED_FIELDS if row.get(k) is None]
        if missing:
            k = missing[0]
            raise OfflineDataError(
                f"{where}: missing field {k!r} ({FIELD_HELP[k]}); the row has fields {sorted(row)}. "
                f"Every row needs {list(REQUIRED_FIELDS)}"
            )
        n = len(row["observations"])
        if n == 0:
            raise OfflineDataError(
                f"{where}: field 'observations' is empty; an episode needs at least one step"
            )
        fields = [*REQUIRED_FIELDS, *(["timeouts"] if row.get("timeouts") is not None else [])]
        for k in fields:
            if len(row[k]) != n:
                raise OfflineDataError(
                    f"{where}: field {k!r} has {len(row[k])} entries but 'observations' has {n}; every per-step "
                    "field of an episode must have one entry per step"
                )
        rewards = _finite_floats(where, "rewards", np.asarray(row["rewards"]))
        try:
            obs = np.asarray(row["observations"])
            actions = np.asarray(row["actions"])
        except ValueError as e:  # ragged inner lists
            raise OfflineDataError(
                f"{where}: observations or actions have steps of different shapes ({e})"
            ) from None
        # Checked before the casts below, which would turn a null into NaN (floats) without a word
        obs_f = _finite_floats(where, "observations", obs)
        actions_f = _finite_floats(where, "actions", actions)
        ep = {
            "observations": obs.astype(np.int64) if obs.ndim == 1 else obs_f.astype(np.float32),
            "actions": actions.astype(np.int64) if actions.ndim == 1 else actions_f.astype(np.float32),
            "rewards": rewards,
            "terminals": _bools(where, "terminals", row["terminals"]),
            "timeouts": (
                _bools(where, "timeouts", row["timeouts"])
                if row.get("timeouts") is not None
                else np.zeros(n, dtype=bool)
            ),
            "timesteps": _timesteps(where, row["timesteps"]),
        }
        if i > 0:
            first = episodes[0]
            for k in ("observations", "actions"):
                if ep[k].shape[1:] != first[k].shape[1:] or (ep[k].ndim == 1) != (first[k].ndim == 1):
                    raise OfflineDataError(
                        f"{where}: field {k!r} has per-step shape {ep[k].shape[1:]}, row 0 has "
                        f"{first[k].shape[1:]}; all episodes must share one shape"
                    )
        if obs_space is not None:
            _check_space(where, "observations", ep["observations"], obs_space)
        if act_space is not None:
            _check_space(where, "actions", ep["actions"], act_space)
        episodes.append(ep)
        policies.append(str(row.get("policy") or ""))
    return OfflineDataset(episodes, policies, str(path), meta)


def _at(index: Sequence[int]) -> str:
    """Where an entry sits in a per-step field: "step 3", or "step 3, entry 1" inside a (T, *obs) field."""
    j, *rest = (int(v) for v in index)
    if not rest:
        return f"step {j}"
    return f"step {j}, entry {rest[0] if len(rest) == 1 else tuple(rest)}"


def _finite_floats(where: str, name: str, values: np.ndarray) -> np.ndarray:
    """``values`` (T, ...) as float64, or an ``OfflineDataError`` at the first null, non-number or non-finite.

    numpy casts a null to NaN silently, and one NaN observation makes the state normalisation NaN for the
    whole dataset, so training would fail much later with an error that does not point at the file.
    """
    if values.dtype == object:
        null = np.equal(values, None)
        if null.any():
            raise OfflineDataError(
                f"{where}: field {name!r} is null at {_at(np.argwhere(null)[0])}; expected a finite number"
            )
    try:
        floats = values.astype(np.float64)
    except (TypeError, ValueError):
        for index in np.ndindex(values.shape):  # only to name the culprit; the cast above is the fast path
            v = values[index]
            v = v.item() if isinstance(v, np.generic) else v  # 'x', not np.str_('x'), in the message
            try:
                float(v)
            except (TypeError, ValueError):
                raise OfflineDataError(
                    f"{where}: field {name!r} is {v!r} at {_at(index)}; expected a finite number"
                ) from None
        raise
    bad = ~np.isfinite(floats)
    if bad.any():
        index = tuple(np.argwhere(bad)[0])
        raise OfflineDataError(
            f"{where}: field {name!r} is {floats[index]} at {_at(index)}; expected a finite number"
        )
    return floats


def _bools(where: str, name: str, values: Sequence[Any]) -> np.ndarray:
    """``values`` (T,) as bools, or an ``OfflineDataError`` at the first entry not true, false, 0 or 1.

    ``np.asarray(..., dtype=bool)`` reads a null as False and any string as True, which would silently move
    episode ends (and with them the returns-to-go of a D4RL-style terminal).
    """
    for j, v in enumerate(values):
        if v is None:
            raise OfflineDataError(f"{where}: field {name!r} is null at step {j}; expected true or false")
        if not isinstance(v, (bool, np.bool_, int, float, np.integer, np.floating)) or v not in (0, 1):
            raise OfflineDataError(f"{where}: field {name!r} is {v!r} at step {j}; expected true or false")
    return np.asarray(values, dtype=bool)


def _timesteps(where: str, values: Sequence[Any]) -> np.ndarray:
    """``values`` (T,) as int64, or an ``OfflineDataError`` at the first entry that is not an integer >= 0.

    The timesteps index the Decision Transformer's timestep embedding: a negative one would index from its
    end (or fail inside the model), a fractional one would be truncated.
    """
    for j, v in enumerate(values):
        whole = isinstance(v, (int, np.integer)) or (
            isinstance(v, (float, np.floating)) and float(v).is_integer()
        )
        if v is None or isinstance(v, (bool, np.bool_)) or not whole or v < 0:
            got = "null" if v is None else repr(v)
            raise OfflineDataError(
                f"{where}: field 'timesteps' is {got} at step {j}; expected an integer >= 0 "
                f"({FIELD_HELP['timesteps']})"
            )
    return np.asarray(values, dtype=np.int64)


def _check_space(where: str, name: str, values: np.ndarray, space: gym.Space) -> None:
    if isinstance(space, gym.spaces.Discrete):
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise OfflineDataError(
                f"{where}: field {name!r} should hold one integer per step for the environment's {space}, "
                f"got per-step shape {values.shape[1:]}"
            )
        bad = (values < space.start) | (values >= space.start + space.n)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise OfflineDataError(
                f"{where}: field {name!r} is {values[j]} at step {j}, outside the environment's {space}"
            )
    elif isinstance(space, gym.spaces.Box) and values.shape[1:] != space.shape:
        raise OfflineDataError(
            f"{where}: field {name!r} has per-step shape {values.shape[1:]}, the environment's {space} "
            f"needs {space.shape}"
        )


# --------------------------------------------------------------------------------------------------
# Behaviour policies and generation
# --------------------------------------------------------------------------------------------------

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
        o, a, r, term, tout = [], [], [], [], []
        while True:
            act = int(rng.integers(n_actions)) if rng.random() < eps else int(expert(obs))
            nxt, rew, terminated, truncated, _ = env.step(act)
            o.append(obs)
            a.append(act)
            r.append(float(rew))
            term.append(bool(terminated))
            tout.append(bool(truncated and not terminated))
            obs = nxt
            if terminated or truncated:
                break
        obs_arr = np.asarray(o)
        episodes.append(
            {
                "observations": obs_arr.astype(np.int64) if obs_arr.ndim == 1 else obs_arr.astype(np.float32),
                "actions": np.asarray(a, dtype=np.int64),
                "rewards": np.asarray(r, dtype=np.float64),
                "terminals": np.asarray(term),
                "timeouts": np.asarray(tout),
                "timesteps": np.arange(len(a), dtype=np.int64),
            }
        )
        policies.append("expert" if eps == 0 else "random" if eps == 1 else f"eps={eps:.2f}")
        total += len(a)
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
    expert = expert_policy(env_id, env)
    steps = int(steps or DEFAULT_STEPS.get(env_id, 20_000))
    med = MEDIUM_EPS.get(env_id, 0.5)
    # One generator per (seed, kind): each dataset is reproducible on its own, whatever else was made.
    rng = np.random.default_rng([seed, DATASET_KINDS.index(kind)])
    env_seed = seed * 1000 + DATASET_KINDS.index(kind)

    def part(eps: Callable[[int], float], s: int) -> tuple[list, list]:
        return collect_episodes(env, expert, eps, steps=steps, seed=s, rng=rng)

    if kind == "random":
        eps_list, pol = part(lambda i: 1.0, env_seed)
    elif kind == "medium":
        eps_list, pol = part(lambda i: med, env_seed)
    elif kind == "expert":
        eps_list, pol = part(lambda i: 0.0, env_seed)
    elif kind == "medium-expert":
        e1, p1 = part(lambda i: med, env_seed)
        e2, p2 = part(lambda i: 0.0, env_seed + 500)
        eps_list, pol = e1 + e2, p1 + p2
    else:  # medium-replay: a "training run" from random to medium. The number of episodes is not known
        # in advance (episodes lengthen as the policy improves), so the schedule runs over the expected
        # count, from the mean lengths of random (about 22 steps on CartPole) and medium episodes.
        n_rand = _mean_length(env, expert, 1.0, seed, med)
        n_med = _mean_length(env, expert, med, seed, med)
        n_eps = max(2, int(steps / ((n_rand + n_med) / 2)))
        eps_list, pol = part(lambda i: max(med, 1.0 - (1.0 - med) * i / (n_eps - 1)), env_seed)
        pol = [p if p != "random" else "eps=1.00" for p in pol]
    env.close()
    meta = {
        "env_id": env_id,
        "kind": kind,
        "seed": seed,
        "source": "controller",
        "steps_per_part": steps,
        "medium_eps": med,
    }
    return OfflineDataset(eps_list, pol, "<generated>", meta)


def _mean_length(env: gym.Env, expert: Policy, eps: float, seed: int, med: float) -> float:
    rng = np.random.default_rng([seed, 99])
    eps_, _ = collect_episodes(env, expert, lambda i: eps, steps=2000, seed=seed + 99, rng=rng)
    return float(np.mean([len(e["rewards"]) for e in eps_]))


def offline_data_dir(cache_dir: str | Path | None = None) -> Path:
    """Where generated datasets are cached: ``cache_dir``, else ``$ALIGN_CACHE_DIR/offline_rl`` (~/.cache/align)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from align.models import align_cache_dir

    return align_cache_dir() / "offline_rl"


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
    """The path of the generated dataset, making it first when it is not cached yet (a second or so; the
    first "ppo" dataset of a seed also trains its agent, about 20 s)."""
    path = offline_data_dir(cache_dir) / dataset_file_name(env_id, kind, seed, steps, source)
    if not path.is_file():
        dataset = make_offline_dataset(
            env_id, kind, seed=seed, steps=steps, env_kwargs=env_kwargs, source=source, cache_dir=cache_dir
        )
        save_offline_dataset(dataset, path)
    return path


# --------------------------------------------------------------------------------------------------
# Training windows for the Decision Transformer
# --------------------------------------------------------------------------------------------------


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
