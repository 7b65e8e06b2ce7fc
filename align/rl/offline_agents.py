r"""CartPole offline datasets made by a trained agent: the project's PPO, its snapshots and its training run.

``align.rl.offline_data`` makes its CartPole data from a hand-written controller plus random-action noise
(the ``"controller"`` source, the default). This module is the ``"ppo"`` source, closer to D4RL (Fu et al.
2020), whose data come from real training runs: the project's own PPO (``align.rl.policy_gradient``, with
the hyperparameters of recipes/configs/rl/ppo_cartpole.yaml, 100,000 environment steps) is trained once per
seed, keeping

* a snapshot of the policy every ``snapshot_every`` updates (and the initial and final ones), each scored
  by the mean return of ``SNAPSHOT_EVAL_EPISODES`` episodes with sampled actions, and
* every episode the agent played while training, in the order they ended, each labelled with the policy
  version (number of updates done) that took its last step: the run's real "replay".

The datasets (``make_ppo_dataset``), all actions sampled from the policy (as D4RL's, and as PPO trains):

    random         uniformly random actions
    medium         episodes of the "medium" snapshot: the non-final snapshot whose mean return is closest
                   to ``MEDIUM_FRACTION`` (0.4, between D4RL's third and half) of the expert's; a partly
                   trained agent, not a noisy expert
    medium-replay  the training run's own episodes from the start until the medium snapshot: every episode
                   whose last step was taken by a policy no later than the medium snapshot, in training
                   order. Its size is whatever the run played until then, not ``steps``
    medium-expert  the medium episodes followed by as many steps of expert episodes
    expert         episodes of the final policy

Episode labels (the ``policy`` column): ``ppo@u<k>`` for a snapshot after k updates, ``ppo-train@u<k>`` for
a training episode that ended under policy version k, ``random`` for random actions (``policy_update``
reads k back). The trained run is cached under ``offline_data_dir(cache_dir) / "agents"`` (snapshots,
replay, scores; the trainer's metrics.jsonl and final model), so only the first call trains. Everything is
a function of the seed: PPO runs on one torch thread with seeded environments and generators, and the
dataset episodes use their own seeded environments and generators.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align.rl.common import ActorCritic, build_model, torch_threads
from align.rl.envs import make_env, resolve_env_id
from align.rl.offline_dataset import (
    DATASET_KINDS,
    DEFAULT_STEPS,
    OfflineDataset,
    episode_from_steps,
    load_offline_dataset,
    offline_data_dir,
    save_offline_dataset,
)
from align.rl.policy_gradient import PPOConfig, PPOTrainer

PPO_ENVS = ("CartPole-v1",)
"""Environments the PPO source supports (its hyperparameters are CartPole's)."""

PPO_HYPERPARAMETERS: dict[str, Any] = {
    "num_envs": 8,
    "n_steps": 32,
    "per_device_train_batch_size": 256,
    "num_epochs": 8,
    "gamma": 0.98,
    "gae_lambda": 0.8,
    "learning_rate": 0.001,
    "lr_scheduler_type": "linear",
    "clip_eps": 0.2,
    "clip_eps_schedule": "linear",
    "ent_coef": 0.0,
    "vf_coef": 1.0,
    "max_grad_norm": 0.5,
    "normalize_advantage": True,
    "hidden_sizes": [64, 64],
    "activation": "tanh",
    "ortho_init": True,
    "adam_epsilon": 1.0e-5,
}
"""Those of recipes/configs/rl/ppo_cartpole.yaml (rl-baselines3-zoo's tuned CartPole-v1 PPO; a unit test
keeps the two equal). Written out here because the package does not read the recipes' folder."""

DEFAULT_PPO_TIMESTEPS = 100_000
"""Training budget in environment steps: ppo_cartpole.yaml's."""

DEFAULT_SNAPSHOT_EVERY = 4
"""Updates between snapshots: 4 x 256 = 1,024 environment steps, about 100 snapshots over the default run,
fine enough to find a snapshot near any return between random and expert."""

SNAPSHOT_EVAL_EPISODES = 20
"""Episodes (sampled actions, fixed seeds) that score each snapshot."""

MEDIUM_FRACTION = 0.4
"""The medium snapshot's mean return aims at this fraction of the expert's (D4RL: a third to a half)."""

_LABEL = re.compile(r"^ppo(?:-train)?@u(\d+)$")


def policy_update(label: str) -> int | None:
    """The policy version (updates done) in a ``ppo@u<k>`` or ``ppo-train@u<k>`` label; None for others."""
    m = _LABEL.match(label)
    return int(m.group(1)) if m else None


# Playing episodes

Actor = Callable[[np.ndarray], np.ndarray]
"""A batch of observations ``(B, *obs)`` to a batch of actions ``(B,)``."""


def sampling_actor(policy: ActorCritic, generator: torch.Generator) -> Actor:
    """Actions sampled from ``policy`` with ``generator`` (the stochastic policy PPO trained, not its argmax)."""

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        params = policy.dist_params(torch.as_tensor(np.asarray(obs, dtype=np.float32)))
        return policy.sample(params, generator).numpy()

    return act


def random_actor(n_actions: int, rng: np.random.Generator) -> Actor:
    """Uniformly random actions."""
    return lambda obs: rng.integers(n_actions, size=len(obs))


def play_episodes(
    env_id: str,
    act: Actor,
    *,
    seed: int,
    episodes: int | None = None,
    min_steps: int | None = None,
    batch: int = 16,
    env_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Play whole episodes, ``batch`` side by side with one call of ``act`` per step, episode j reset with seed
    ``seed + j``: exactly ``episodes`` episodes, or the fewest (in order) that hold at least ``min_steps`` steps.

    Returns episodes in ``align.rl.offline_dataset``'s layout: observations, actions, rewards, terminals,
    timeouts (a time-limit cut, not a terminal state), timesteps.
    """
    if (episodes is None) == (min_steps is None):
        raise ValueError("play_episodes: give exactly one of episodes and min_steps")
    envs = [make_env(env_id, **(env_kwargs or {})) for _ in range(batch)]
    out: list[dict[str, np.ndarray]] = []
    total = 0
    try:
        while (episodes is not None and len(out) < episodes) or (min_steps is not None and total < min_steps):
            n = batch if episodes is None else min(batch, episodes - len(out))
            first = len(out)
            obs = [envs[i].reset(seed=seed + first + i)[0] for i in range(n)]
            bufs: list[list[tuple]] = [[] for _ in range(n)]
            active = list(range(n))
            while active:
                actions = act(np.stack([obs[i] for i in active]))
                still = []
                for i, a in zip(active, actions.tolist()):
                    nxt, r, term, trunc, _ = envs[i].step(a)
                    bufs[i].append((obs[i], a, float(r), bool(term), bool(trunc and not term)))
                    obs[i] = nxt
                    if not (term or trunc):
                        still.append(i)
                active = still
            for steps in bufs:
                out.append(episode_from_steps(steps))
                total += len(steps)
                if min_steps is not None and total >= min_steps:
                    break
    finally:
        for env in envs:
            env.close()
    return out


# Training with snapshots and the replay


class RecordingPPOTrainer(PPOTrainer):
    """``PPOTrainer`` that keeps every episode it plays and a policy snapshot every ``snapshot_every`` updates.

    Recording sits in ``_step_envs``, which every rollout step goes through, so the training itself is the
    plain PPO's (same batches, same random draws). ``replay[i]`` ended under policy version
    ``replay_updates[i]`` (the updates done when its last step was taken).
    """

    def __init__(self, config: PPOConfig, snapshot_every: int) -> None:
        super().__init__(config)
        self.snapshot_every = snapshot_every
        self.replay: list[dict[str, np.ndarray]] = []
        self.replay_updates: list[int] = []
        self._open: list[list[tuple]] = [[] for _ in range(config.num_envs)]
        self.snapshots: list[dict[str, Any]] = []
        self._snapshot()

    def _snapshot(self) -> None:
        state = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        self.snapshots.append(
            {"update": self.state.step, "env_steps": self.num_timesteps, "state_dict": state}
        )

    def _step_envs(self, obs: np.ndarray) -> tuple[np.ndarray, ...]:
        out = super()._step_envs(obs)
        actions, _, rewards, terminated, truncated, _ = out
        version = self.state.step  # incremented after training_step: the policy acting now
        for i in range(len(self._open)):
            cut = bool(truncated[i] and not terminated[i])
            self._open[i].append(
                (np.array(obs[i]), int(actions[i]), float(rewards[i]), bool(terminated[i]), cut)
            )
            if terminated[i] or truncated[i]:
                self.replay.append(episode_from_steps(self._open[i]))
                self.replay_updates.append(version)
                self._open[i] = []
        return out

    def on_step_end(self, metrics: dict[str, float]) -> None:
        super().on_step_end(metrics)
        step = self.state.step
        if step % self.snapshot_every == 0 or step == self.config.max_steps:
            self._snapshot()


@dataclass
class PPOAgentRun:
    """A trained PPO run: scored snapshots and the episodes played while training."""

    env_id: str
    seed: int
    snapshots: list[dict[str, Any]]
    """In training order: ``update``, ``env_steps``, ``return_mean``, ``return_std`` (sampled actions over
    ``SNAPSHOT_EVAL_EPISODES`` episodes), ``state_dict``."""
    replay: OfflineDataset
    """Every finished training episode, in the order they ended, labelled ``ppo-train@u<k>``."""
    architecture: dict[str, Any]
    info: dict[str, Any]
    """Budget, hyperparameters, training time, greedy return of the final policy, cache folder."""

    def policy(self, index: int) -> ActorCritic:
        """The snapshot ``index`` as an ``ActorCritic`` in eval mode."""
        model = build_model(self.architecture)
        model.load_state_dict(self.snapshots[index]["state_dict"])
        return model.eval()

    @property
    def total_updates(self) -> int:
        return int(self.snapshots[-1]["update"])

    def medium_index(self, fraction: float = MEDIUM_FRACTION) -> int:
        """The non-final snapshot whose mean return is closest to ``fraction`` of the final one's (ties: the
        earliest)."""
        target = fraction * self.snapshots[-1]["return_mean"]
        gaps = [abs(s["return_mean"] - target) for s in self.snapshots[:-1]]
        return int(np.argmin(gaps))

    def snapshot_meta(self, index: int) -> dict[str, Any]:
        """Where snapshot ``index`` sits in training (update, environment steps, fraction) and its return."""
        s = self.snapshots[index]
        return {
            "update": int(s["update"]),
            "env_steps": int(s["env_steps"]),
            "progress": round(s["update"] / self.total_updates, 4),
            "return_mean": round(float(s["return_mean"]), 2),
        }

    def replay_until(self, index: int) -> tuple[list[dict[str, np.ndarray]], list[str]]:
        """The training episodes played by policies up to snapshot ``index`` (medium-replay), with labels."""
        cutoff = int(self.snapshots[index]["update"])
        keep = [i for i, p in enumerate(self.replay.policies) if policy_update(p) <= cutoff]
        if not keep:
            raise ValueError(
                f"the PPO run (total_timesteps={self.info['total_timesteps']}) finished no episode before its "
                f"medium snapshot (update {cutoff}); raise total_timesteps"
            )
        return [self.replay.episodes[i] for i in keep], [self.replay.policies[i] for i in keep]


def agent_run_dir(
    env_id: str, seed: int, total_timesteps: int, snapshot_every: int, cache_dir: str | Path | None = None
) -> Path:
    """``<offline data dir>/agents/<env>_ppo_s<seed>_t<timesteps>_every<n>``: what determines the run is in the name."""
    name = f"{resolve_env_id(env_id).replace('/', '_')}_ppo_s{seed}_t{total_timesteps}_every{snapshot_every}"
    return offline_data_dir(cache_dir) / "agents" / name


def ensure_ppo_agent(
    env_id: str = "CartPole-v1",
    *,
    seed: int = 0,
    total_timesteps: int | None = None,
    snapshot_every: int | None = None,
    cache_dir: str | Path | None = None,
) -> PPOAgentRun:
    """The trained PPO run for (env, seed, budget, snapshot interval): loaded from the cache, or trained,
    scored and cached first.

    ``total_timesteps`` and ``snapshot_every`` default to ``DEFAULT_PPO_TIMESTEPS`` and
    ``DEFAULT_SNAPSHOT_EVERY``, read at call time. ``run.json`` is written last, so a run interrupted half way
    is trained again rather than read half.
    """
    env_id = _check_env(env_id)
    total_timesteps = DEFAULT_PPO_TIMESTEPS if total_timesteps is None else int(total_timesteps)
    snapshot_every = DEFAULT_SNAPSHOT_EVERY if snapshot_every is None else int(snapshot_every)
    if total_timesteps < 1:
        raise ValueError(
            f"total_timesteps must be a positive number of environment steps, got {total_timesteps}"
        )
    if snapshot_every < 1:
        raise ValueError(f"snapshot_every must be a positive number of PPO updates, got {snapshot_every}")
    run_dir = agent_run_dir(env_id, seed, total_timesteps, snapshot_every, cache_dir)
    if not (run_dir / "run.json").is_file():
        _train(env_id, seed, total_timesteps, snapshot_every, run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    snapshots = torch.load(run_dir / "snapshots.pt", weights_only=True)
    for s, scored in zip(snapshots, info.pop("snapshots")):
        s.update(scored)
    replay = load_offline_dataset(run_dir / "replay.parquet")
    arch = info.pop("architecture")
    return PPOAgentRun(env_id, seed, snapshots, replay, arch, {**info, "dir": str(run_dir)})


def _check_env(env_id: str) -> str:
    env_id = resolve_env_id(env_id)
    if env_id not in PPO_ENVS:
        raise ValueError(
            f"env_id: the 'ppo' data source trains PPO with CartPole's hyperparameters and supports "
            f"{list(PPO_ENVS)}, not {env_id}; use source 'controller' (the project's expert plus noise) there"
        )
    return env_id


def _train(env_id: str, seed: int, total_timesteps: int, snapshot_every: int, run_dir: Path) -> None:
    """Train the PPO run, score its snapshots and write the run folder (``run.json`` last)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = PPOConfig(
        output_dir=str(run_dir / "train"),
        overwrite_output_dir=True,  # a run interrupted before run.json left its files there
        env_id=env_id,
        seed=seed,
        total_timesteps=total_timesteps,
        eval_episodes=20,
        logging_steps=10,
        disable_progress_bar=True,
        torch_threads=1,
        **PPO_HYPERPARAMETERS,
    )
    # One thread from the start: the orthogonal initialisation's QR (MKL) already rounds differently with
    # more threads (2e-7 in the initial weights, 2x the return at some snapshots after 40 updates).
    with torch_threads(1):
        trainer = RecordingPPOTrainer(cfg, snapshot_every)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    greedy = trainer.evaluate()
    trainer.save_model(run_dir / "model")
    arch = trainer.policy.architecture
    t1 = time.perf_counter()
    scores = _score_snapshots(env_id, seed, arch, trainer.snapshots)
    _save_replay_and_snapshots(trainer, env_id, seed, run_dir)
    info = {
        "env_id": env_id,
        "seed": seed,
        "total_timesteps": total_timesteps,
        "env_steps": trainer.num_timesteps,
        "updates": trainer.state.step,
        "steps_per_update": cfg.num_envs * cfg.n_steps,
        "snapshot_every": snapshot_every,
        "snapshot_eval_episodes": SNAPSHOT_EVAL_EPISODES,
        "train_seconds": round(seconds, 2),
        "score_seconds": round(time.perf_counter() - t1, 2),
        "greedy_return_mean": greedy["eval/return_mean"],
        "hyperparameters": PPO_HYPERPARAMETERS,
        "architecture": arch,
        "snapshots": scores,
    }
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(run_dir / "run.json")


def _save_replay_and_snapshots(trainer: RecordingPPOTrainer, env_id: str, seed: int, run_dir: Path) -> None:
    """replay.parquet (the training episodes, labelled ``ppo-train@u<k>``) and snapshots.pt (the weights)."""
    labels = [f"ppo-train@u{k}" for k in trainer.replay_updates]
    replay = OfflineDataset(
        trainer.replay,
        labels,
        "<ppo training run>",
        {"env_id": env_id, "kind": "ppo-training-replay", "seed": seed, "source": "ppo"},
    )
    save_offline_dataset(replay, run_dir / "replay.parquet")
    torch.save(
        [
            {"update": s["update"], "env_steps": s["env_steps"], "state_dict": s["state_dict"]}
            for s in trainer.snapshots
        ],
        run_dir / "snapshots.pt",
    )


def _score_snapshots(
    env_id: str, seed: int, architecture: dict[str, Any], snapshots: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each snapshot's mean and std return over ``SNAPSHOT_EVAL_EPISODES`` episodes with sampled actions.

    The episode seeds are the same for every snapshot, so differences between snapshots are the policy's.
    """
    scores = []
    with torch_threads(1):
        for i, snap in enumerate(snapshots):
            model = build_model(architecture)
            model.load_state_dict(snap["state_dict"])
            model.eval()
            gen = torch.Generator().manual_seed(_derive_seed(seed, "score", i))
            eps = play_episodes(
                env_id,
                sampling_actor(model, gen),
                seed=_derive_seed(seed, "score-env"),
                episodes=SNAPSHOT_EVAL_EPISODES,
            )
            ret = np.array([e["rewards"].sum() for e in eps])
            scores.append(
                {
                    "update": snap["update"],
                    "env_steps": snap["env_steps"],
                    "return_mean": float(ret.mean()),
                    "return_std": float(ret.std()),
                }
            )
    return scores


def _derive_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed from ``seed`` and labels: every use gets its own stream, stable across runs."""
    words = [seed] + [sum(ord(c) * 31**j for j, c in enumerate(str(p))) % 2**32 for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0] >> 1)


# The datasets


def make_ppo_dataset(
    env_id: str,
    kind: str,
    *,
    seed: int = 0,
    steps: int | None = None,
    cache_dir: str | Path | None = None,
    total_timesteps: int | None = None,
    snapshot_every: int | None = None,
) -> OfflineDataset:
    """The ``kind`` dataset (see the module docstring) from the PPO run of ``seed``, training it on first use.

    ``steps``: environment steps per played part (default ``DEFAULT_STEPS[env_id]``, 50,000 on CartPole);
    medium-expert has two parts. medium-replay is the run's own episodes and ignores it. ``meta`` records
    the source, the snapshots used (updates, environment steps, fraction of training, mean return) and the
    budget, for stats.json. ``total_timesteps`` / ``snapshot_every``: the PPO run's (``ensure_ppo_agent``).
    """
    if kind not in DATASET_KINDS:
        raise ValueError(f"kind: unknown dataset kind {kind!r}; expected one of {list(DATASET_KINDS)}")
    env_id = _check_env(env_id)
    steps = int(steps or DEFAULT_STEPS.get(env_id, 20_000))
    meta: dict[str, Any] = {"env_id": env_id, "kind": kind, "seed": seed, "source": "ppo"}
    if kind == "random":  # no agent involved: do not train one
        return _random_dataset(env_id, seed, steps, meta)
    run = ensure_ppo_agent(
        env_id, seed=seed, total_timesteps=total_timesteps, snapshot_every=snapshot_every, cache_dir=cache_dir
    )
    meta.update(
        {
            "ppo_total_timesteps": run.info["total_timesteps"],
            "ppo_updates": run.total_updates,
            "ppo_snapshot_every": run.info["snapshot_every"],
            "expert_return_mean": round(float(run.snapshots[-1]["return_mean"]), 2),
        }
    )
    episodes, labels, snapshots_used = _agent_episodes(run, kind, seed=seed, steps=steps)
    meta.update(snapshots_used)
    if kind != "medium-replay":
        meta["steps_per_part"] = steps
    return OfflineDataset(episodes, labels, "<generated>", meta)


def _random_dataset(env_id: str, seed: int, steps: int, meta: dict[str, Any]) -> OfflineDataset:
    """The random dataset: at least ``steps`` steps of uniformly random actions."""
    env = make_env(env_id)
    n_actions = int(env.action_space.n)
    env.close()
    episodes = play_episodes(
        env_id,
        random_actor(n_actions, np.random.default_rng(_derive_seed(seed, "random"))),
        seed=_derive_seed(seed, "random", "env") % 2**30,
        min_steps=steps,
    )
    return OfflineDataset(
        episodes, ["random"] * len(episodes), "<generated>", {**meta, "steps_per_part": steps}
    )


def _agent_episodes(
    run: PPOAgentRun, kind: str, *, seed: int, steps: int
) -> tuple[list[dict[str, np.ndarray]], list[str], dict[str, Any]]:
    """The episodes and labels of the ``kind`` dataset (not random) from ``run``, and the snapshots used
    (``medium_snapshot`` / ``expert_snapshot``: ``PPOAgentRun.snapshot_meta``)."""
    env_id = run.env_id
    med, last = run.medium_index(), len(run.snapshots) - 1

    def part(index: int, n: int) -> tuple[list[dict[str, np.ndarray]], list[str]]:
        # Each part has its own environment seeds and generator, so each dataset is reproducible on its own.
        s = _derive_seed(seed, kind, n)
        with torch_threads(1):
            act = sampling_actor(run.policy(index), torch.Generator().manual_seed(s))
            eps = play_episodes(env_id, act, seed=s % 2**30, min_steps=steps)
        return eps, [f"ppo@u{run.snapshots[index]['update']}"] * len(eps)

    if kind == "medium":
        return *part(med, 0), {"medium_snapshot": run.snapshot_meta(med)}
    if kind == "expert":
        return *part(last, 0), {"expert_snapshot": run.snapshot_meta(last)}
    if kind == "medium-expert":
        e1, l1 = part(med, 0)
        e2, l2 = part(last, 1)
        used = {"medium_snapshot": run.snapshot_meta(med), "expert_snapshot": run.snapshot_meta(last)}
        return e1 + e2, l1 + l2, used
    episodes, labels = run.replay_until(med)  # medium-replay
    return episodes, labels, {"medium_snapshot": run.snapshot_meta(med)}
