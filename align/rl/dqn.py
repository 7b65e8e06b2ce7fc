"""DQN: Q-learning with a neural network, a replay buffer and a target network (Mnih et al. 2015, Nature).

    target_i = r_i + gamma * (1 - terminated_i) * max_a' Q_target(s'_i, a')                  (DQN)
    target_i = r_i + gamma * (1 - terminated_i) * Q_target(s'_i, argmax_a' Q(s'_i, a'))       (double DQN)
    L        = mean_i huber(Q(s_i, a_i) - target_i)       (or the squared error)

Double DQN is van Hasselt et al. 2016: the online network picks the next action, the target network
values it, which removes most of max's overestimation. A transition cut by a time limit (truncated) still
bootstraps from its real final observation; only ``terminated`` zeroes the next value (Pardo et al. 2018).

Each round of experience collects ``train_freq`` environment steps (epsilon-greedy; uniformly random before
``learning_starts``) and updates the target network; once more than ``learning_starts`` steps have been
taken, it plans ``gradient_steps`` optimizer steps on minibatches sampled uniformly from the replay buffer. These are
Stable-Baselines3's semantics, so rl-baselines3-zoo hyperparameters carry over unchanged:
``target_update_interval`` counts environment steps, each crossing of a multiple of it applies
``target <- tau * online + (1 - tau) * target`` (``tau = 1``: hard copy, Mnih et al.; ``tau < 1``: Polyak
averaging, Lillicrap et al. 2016), and epsilon falls linearly from ``exploration_initial_eps`` to
``exploration_final_eps`` over the first ``exploration_fraction`` of ``total_timesteps``.
"""

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from align.config import ConfigError, check_range
from align.rl.common import (
    QNetwork,
    RLConfig,
    RLTrainer,
    as_obs_tensor,
    env_state_dict,
    episode_metrics,
    load_env_state_dict,
)
from align.rl.envs import make_env
from align.trainer import UpdateStep


@dataclass
class DQNConfig(RLConfig):
    """DQN with double-DQN, Huber/MSE loss, hard or Polyak target updates (defaults: SB3's DQN defaults)."""

    output_dir: str = "outputs/dqn"
    learning_rate: float = 1e-4
    per_device_train_batch_size: int = 32
    """Transitions sampled (uniformly, with replacement) from the replay buffer per gradient step."""
    max_grad_norm: float = 10.0
    """Clip the gradient norm of each update to this value; 0 disables clipping."""
    buffer_size: int = 100_000
    """Replay buffer capacity in transitions (oldest overwritten first)."""
    learning_starts: int = 1000
    """Environment steps of uniformly random actions before the first update."""
    train_freq: int = 4
    """Environment steps between two training phases."""
    gradient_steps: int = 1
    """Gradient steps (optimizer steps) per training phase, after learning_starts."""
    target_update_interval: int = 10_000
    """Update the target network every this many environment steps."""
    tau: float = 1.0
    """Target update coefficient: 1 = hard copy, < 1 = Polyak averaging target <- tau online + (1-tau) target."""
    exploration_initial_eps: float = 1.0
    """Epsilon of epsilon-greedy at the start."""
    exploration_final_eps: float = 0.05
    """Epsilon after the decay."""
    exploration_fraction: float = 0.1
    """Fraction of total_timesteps over which epsilon decays linearly."""
    double_q: bool = False
    """Double DQN targets: the online network chooses the next action, the target network values it."""
    td_loss: Literal["huber", "mse"] = "huber"
    """TD loss: 'huber' (smooth L1, as Mnih et al. and SB3) or 'mse'."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the Q-network."""
    activation: Literal["relu", "tanh"] = "relu"
    """Hidden activation of the Q-network."""

    algorithm: ClassVar[str] = "DQN"
    discrete_actions_only: ClassVar[bool] = True

    def env_steps_per_iteration(self) -> int | None:
        return self.train_freq

    def updates_per_iteration(self) -> int:
        return self.gradient_steps

    def warmup_iterations(self) -> int:
        # Rounds whose environment steps end at or before learning_starts take no gradient step.
        return self.learning_starts // self.train_freq

    def validate(self) -> None:
        check_range("buffer_size", self.buffer_size, 1)
        check_range("learning_starts", self.learning_starts, 0)
        check_range("train_freq", self.train_freq, 1)
        check_range("gradient_steps", self.gradient_steps, 1)
        check_range("target_update_interval", self.target_update_interval, 1)
        check_range("tau", self.tau, 0.0, 1.0, low_inclusive=False)
        check_range("exploration_initial_eps", self.exploration_initial_eps, 0.0, 1.0)
        check_range("exploration_final_eps", self.exploration_final_eps, 0.0, 1.0)
        check_range("exploration_fraction", self.exploration_fraction, 0.0, 1.0)
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ConfigError(
                f"hidden_sizes must be a non-empty list of positive widths, got {self.hidden_sizes}"
            )
        if self.gradient_accumulation_steps != 1:
            raise ConfigError(
                "gradient_accumulation_steps must be 1 for DQN (each gradient step is one minibatch; "
                "raise per_device_train_batch_size instead)"
            )
        super().validate()


def dqn_loss(
    q_values: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    next_q_target: torch.Tensor,
    *,
    gamma: float,
    next_q_online: torch.Tensor | None = None,
    loss: str = "huber",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one-step TD loss of DQN, or of double DQN when ``next_q_online`` is given.

    ``q_values`` ``(B, A)``: Q(s, .) of the online network (with grad); ``actions``, ``rewards``,
    ``terminated`` ``(B,)``, terminated 1 where s' is terminal (its value is 0; a truncated s' counts 0);
    ``next_q_target`` ``(B, A)``: Q_target(s', .); ``next_q_online`` ``(B, A)``: the online Q(s', .) that
    picks double DQN's action (None: DQN's max); ``loss``: "huber" (smooth L1, delta 1) or "mse". Targets
    are constants (no grad). Metrics: ``loss/td``, ``q/mean`` (taken actions), ``td/error_abs_mean``.
    """
    q = q_values.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        if next_q_online is None:
            next_v = next_q_target.amax(-1)
        else:
            next_v = next_q_target.gather(-1, next_q_online.argmax(-1, keepdim=True)).squeeze(-1)
        targets = rewards + gamma * (1.0 - terminated.to(rewards.dtype)) * next_v
    if loss == "huber":
        value = F.smooth_l1_loss(q, targets)
    elif loss == "mse":
        value = F.mse_loss(q, targets)
    else:
        raise ValueError(f"loss must be 'huber' or 'mse', got {loss!r}")
    with torch.no_grad():
        metrics = {
            "loss/td": value.detach(),
            "q/mean": q.mean(),
            "td/error_abs_mean": (targets - q).abs().mean(),
        }
    return value, metrics


class ReplayBuffer:
    """A ring buffer of transitions (s, a, r, s', terminated) in preallocated numpy arrays."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: Any = np.float32) -> None:
        self.capacity = int(capacity)
        self.obs = np.zeros((self.capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros((self.capacity, *obs_shape), dtype=obs_dtype)
        self.actions = np.zeros(self.capacity, dtype=np.int64)
        self.rewards = np.zeros(self.capacity, dtype=np.float32)
        self.terminated = np.zeros(self.capacity, dtype=np.float32)
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: Any, action: int, reward: float, next_obs: Any, terminated: bool) -> None:
        i = self.pos
        self.obs[i] = obs
        self.next_obs[i] = next_obs
        self.actions[i] = action
        self.rewards[i] = reward
        self.terminated[i] = terminated
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    _FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated")

    def sample(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """The transitions at indices ``idx`` (B,) as tensors."""
        return {name: torch.from_numpy(getattr(self, name)[idx]) for name in self._FIELDS}

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        out: dict[str, Any] = {"pos": self.pos, "size": n, "capacity": self.capacity}
        for name in self._FIELDS:
            out[name] = torch.from_numpy(getattr(self, name)[:n].copy())
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"checkpoint buffer_size is {state['capacity']}, this run's is {self.capacity}")
        n = int(state["size"])
        for name in self._FIELDS:
            getattr(self, name)[:n] = state[name].numpy()
        self.pos, self.size = int(state["pos"]), n


class DQNTrainer(RLTrainer):
    """DQN on the Trainer base: each plan is ``train_freq`` environment steps, a target-network update when
    due, then ``gradient_steps`` minibatch updates (see the module docstring)."""

    def __init__(self, config: DQNConfig, *, callbacks=None) -> None:
        cfg = config
        self.env = make_env(cfg.env_id, **cfg.env_kwargs())
        obs_space = self.env.observation_space
        self.num_actions = int(self.env.action_space.n)
        torch.manual_seed(cfg.seed)
        q_net = QNetwork(obs_space, self.num_actions, cfg.hidden_sizes, cfg.activation)
        self.target_net = copy.deepcopy(q_net).requires_grad_(False)
        super().__init__(cfg, q_net, callbacks=callbacks)
        self.q_net = self.accelerator.unwrap_model(self.model)
        obs_dtype = np.int64 if obs_space.shape == () else np.float32
        self.buffer = ReplayBuffer(cfg.buffer_size, obs_space.shape, obs_dtype)
        self.rng = np.random.default_rng(cfg.seed)
        self._obs, _ = self.env.reset(seed=cfg.seed)
        self._episode_return, self._episode_length = 0.0, 0

    # -- acting ------------------------------------------------------------------------------------
    def epsilon(self, t: int) -> float:
        """Epsilon after ``t`` environment steps: linear from initial to final over the first
        ``exploration_fraction * total_timesteps`` steps."""
        cfg = self.config
        span = cfg.exploration_fraction * cfg.total_timesteps
        frac = min(t / span, 1.0) if span > 0 else 1.0
        return cfg.exploration_initial_eps + frac * (cfg.exploration_final_eps - cfg.exploration_initial_eps)

    @torch.no_grad()
    def greedy_action(self, obs: Any) -> int:
        return int(self.q_net(as_obs_tensor(obs).unsqueeze(0)).argmax())

    @torch.no_grad()
    def collect(self, n: int) -> tuple[list[float], list[int]]:
        """Take ``n`` epsilon-greedy steps into the replay buffer; return the finished episodes' returns, lengths."""
        cfg, env, buf, rng = self.config, self.env, self.buffer, self.rng
        obs = self._obs
        returns, lengths = [], []
        for _ in range(n):
            t = self.num_timesteps
            if t < cfg.learning_starts or rng.random() < self.epsilon(t):
                action = int(rng.integers(self.num_actions))
            else:
                action = self.greedy_action(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buf.add(obs, action, reward, next_obs, terminated)
            self.num_timesteps += 1
            self._episode_return += float(reward)
            self._episode_length += 1
            if terminated or truncated:
                returns.append(self._episode_return)
                lengths.append(self._episode_length)
                self._episode_return, self._episode_length = 0.0, 0
                self.episodes += 1
                obs, _ = env.reset()
            else:
                obs = next_obs
        self._obs = obs
        return returns, lengths

    @torch.no_grad()
    def update_target(self, steps_before: int, steps_after: int) -> bool:
        """Apply one target update per multiple of ``target_update_interval`` crossed between the two step
        counts. The online network did not change in between, so k Polyak updates are one with
        ``tau_k = 1 - (1 - tau)^k``."""
        cfg = self.config
        k = steps_after // cfg.target_update_interval - steps_before // cfg.target_update_interval
        if k <= 0:
            return False
        tau = 1.0 - (1.0 - cfg.tau) ** k
        if tau >= 1.0:
            self.target_net.load_state_dict(self.q_net.state_dict())
        else:
            for tp, p in zip(self.target_net.parameters(), self.q_net.parameters()):
                tp.lerp_(p, tau)
        return True

    # -- learning ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_minibatches(self, n: int) -> list[dict[str, torch.Tensor]]:
        """``n`` minibatches for one training phase, drawn together.

        The target network does not change during a training phase (it is updated between phases), so for
        plain DQN its values Q_target(s', .) of all ``n`` minibatches are computed in one forward pass: the
        same numbers as ``n`` small passes, at a fraction of the cost. (Double DQN also needs the online
        network's choice at s', which changes after every update, so it is computed per minibatch.)
        """
        B = self.config.per_device_train_batch_size
        idx = self.rng.integers(0, len(self.buffer), (n, B))
        flat = self.buffer.sample(idx.reshape(-1))
        if not self.config.double_q:
            flat["next_q_target"] = self.target_net(flat["next_obs"])
        return [{k: v[i * B : (i + 1) * B] for k, v in flat.items()} for i in range(n)]

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        q_values = self.model(batch["obs"])
        with torch.no_grad():
            next_q_target = batch.get("next_q_target")
            if next_q_target is None:
                next_q_target = self.target_net(batch["next_obs"])
            next_q_online = self.model(batch["next_obs"]) if cfg.double_q else None
        return dqn_loss(
            q_values,
            batch["actions"],
            batch["rewards"],
            batch["terminated"],
            next_q_target,
            gamma=cfg.gamma,
            next_q_online=next_q_online,
            loss=cfg.td_loss,
        )

    def plan_updates(self) -> list[UpdateStep]:
        """Take ``train_freq`` epsilon-greedy steps (repeated until ``learning_starts`` is passed), update the
        target network when due, and plan ``gradient_steps`` updates on fresh replay minibatches."""
        cfg = self.config
        returns: list[float] = []
        lengths: list[int] = []
        while True:
            before = self.num_timesteps
            eps = self.epsilon(before)
            r, n = self.collect(cfg.train_freq)
            returns += r
            lengths += n
            synced = self.update_target(before, self.num_timesteps)
            if self.num_timesteps > cfg.learning_starts:
                break
        metrics: dict[str, float] = {
            "epsilon": eps,
            "buffer/size": float(len(self.buffer)),
            "target/updated": float(synced),
            **episode_metrics(returns, lengths),
        }
        batches = self.sample_minibatches(cfg.gradient_steps)
        return [UpdateStep([(b, 1.0)], metrics if i == 0 else {}) for i, b in enumerate(batches)]

    # -- checkpoint --------------------------------------------------------------------------------
    def extra_state_dict(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "env": env_state_dict(self.env),
            "obs": torch.as_tensor(np.asarray(self._obs)).clone(),
            "episode": [self._episode_return, self._episode_length],
            "target": {k: v.clone() for k, v in self.target_net.state_dict().items()},
        }

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.rng.bit_generator.state = state["rng"]
        load_env_state_dict(self.env, state["env"])
        self._obs = state["obs"].numpy().copy()
        self._episode_return, self._episode_length = float(state["episode"][0]), int(state["episode"][1])
        self.target_net.load_state_dict(state["target"])
