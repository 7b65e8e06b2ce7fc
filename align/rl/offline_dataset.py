r"""An offline RL dataset: episodes in memory (``OfflineDataset``), on disk, and checked on reading.

This is what every maker and user of offline data shares: the generators of ``align.rl.offline_data`` (the
project's controllers plus noise) and ``align.rl.offline_agents`` (its PPO agent) write these files, and the
Decision Transformer reads them, as it reads a dataset a user brings.

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
anything wrong.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

DATASET_KINDS = ("random", "medium", "medium-replay", "medium-expert", "expert")
"""The dataset names the generators make (D4RL's, Fu et al. 2020)."""

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

DEFAULT_STEPS = {"CartPole-v1": 50_000, "FrozenLake-v1": 20_000}
"""Environment steps per generated part (medium-expert has two parts), per environment."""


class OfflineDataError(ValueError):
    """A dataset file is malformed; the message names the file, the row (episode) and the field."""


# The dataset in memory


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

    def stats(self) -> dict[str, Any]:
        """Return statistics: the dataset's mean and best trajectory returns are the baselines of Chen et al."""
        ret, n = self.returns, self.lengths
        by_policy = Counter(self.policies)
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


def episode_from_steps(steps: Sequence[tuple]) -> dict[str, np.ndarray]:
    """One episode in the layout above from its ``(observation, action, reward, terminated, timed_out)``
    steps; Discrete observations (one integer per step) stay integers."""
    obs, actions, rewards, terms, touts = zip(*steps)
    obs_arr = np.asarray(obs)
    return {
        "observations": obs_arr.astype(np.int64) if obs_arr.ndim == 1 else obs_arr.astype(np.float32),
        "actions": np.asarray(actions, dtype=np.int64),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "terminals": np.asarray(terms, dtype=bool),
        "timeouts": np.asarray(touts, dtype=bool),
        "timesteps": np.arange(len(actions), dtype=np.int64),
    }


# Reading and writing


def _stats_path(path: Path) -> Path:
    return path.with_name(path.name.rsplit(".", 1)[0] + ".stats.json")


def save_offline_dataset(dataset: OfflineDataset, path: str | Path) -> Path:
    """Write ``dataset`` to ``path`` (``.parquet`` or ``.jsonl``) and its statistics to ``<name>.stats.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "observations": ep["observations"].tolist(),
            "actions": ep["actions"].tolist(),
            "rewards": ep["rewards"].astype(np.float64).tolist(),
            "terminals": ep["terminals"].astype(bool).tolist(),
            "timeouts": ep["timeouts"].astype(bool).tolist(),
            "timesteps": ep["timesteps"].astype(np.int64).tolist(),
            "policy": dataset.policies[i] if dataset.policies else "",
        }
        for i, ep in enumerate(dataset.episodes)
    ]
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
    episodes, policies = [], []
    for i, row in enumerate(rows):
        where = f"{path}, row {i} (episode {i})"
        ep = _episode_from_row(where, row)
        if episodes:
            _check_same_shapes(where, ep, episodes[0])
        if env is not None:
            _check_space(where, "observations", ep["observations"], env.observation_space)
            _check_space(where, "actions", ep["actions"], env.action_space)
        episodes.append(ep)
        policies.append(str(row.get("policy") or ""))
    return OfflineDataset(episodes, policies, str(path), meta)


def _episode_from_row(where: str, row: dict[str, Any]) -> dict[str, np.ndarray]:
    """One row as an episode of numpy arrays, or an ``OfflineDataError`` at the first missing field, field of
    the wrong length, or entry that is not what the field holds."""
    missing = [k for k in REQUIRED_FIELDS if row.get(k) is None]
    if missing:
        k = missing[0]
        raise OfflineDataError(
            f"{where}: missing field {k!r} ({FIELD_HELP[k]}); the row has fields {sorted(row)}. "
            f"Every row needs {list(REQUIRED_FIELDS)}"
        )
    n = len(row["observations"])
    if n == 0:
        raise OfflineDataError(f"{where}: field 'observations' is empty; an episode needs at least one step")
    has_timeouts = row.get("timeouts") is not None
    for k in [*REQUIRED_FIELDS, *(["timeouts"] if has_timeouts else [])]:
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
    return {
        "observations": obs.astype(np.int64) if obs.ndim == 1 else obs_f.astype(np.float32),
        "actions": actions.astype(np.int64) if actions.ndim == 1 else actions_f.astype(np.float32),
        "rewards": rewards,
        "terminals": _bools(where, "terminals", row["terminals"]),
        "timeouts": _bools(where, "timeouts", row["timeouts"]) if has_timeouts else np.zeros(n, dtype=bool),
        "timesteps": _timesteps(where, row["timesteps"]),
    }


def _check_same_shapes(where: str, ep: dict[str, np.ndarray], first: dict[str, np.ndarray]) -> None:
    """Every episode's observations and actions have row 0's per-step shape."""
    for k in ("observations", "actions"):
        if ep[k].shape[1:] != first[k].shape[1:] or (ep[k].ndim == 1) != (first[k].ndim == 1):
            raise OfflineDataError(
                f"{where}: field {k!r} has per-step shape {ep[k].shape[1:]}, row 0 has "
                f"{first[k].shape[1:]}; all episodes must share one shape"
            )


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


def offline_data_dir(cache_dir: str | Path | None = None) -> Path:
    """Where generated datasets are cached: ``cache_dir``, else ``$ALIGN_CACHE_DIR/offline_rl`` (~/.cache/align)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from align.models import align_cache_dir

    return align_cache_dir() / "offline_rl"
