r"""Policy-gradient methods: REINFORCE, A2C and PPO, for discrete (categorical) and continuous (Gaussian)
actions, on the same loss and advantage functions as the LLM trainers.

    REINFORCE  L = -mean_t (G_t - b(s_t)) log pi(a_t | s_t)        Williams 1992; S&B 2018, sec. 13.3-13.4
    A2C        L = -mean_t A_t log pi(a_t | s_t) + c_v L_V - c_H H    Mnih et al. 2016 (synchronous A3C)
    PPO        L = -mean_t min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t) + c_v L_V - c_H H   Schulman et al. 2017

Everything algorithmic is a call into ``align.losses`` and ``align.advantages``:

* ``policy_gradient_loss`` is REINFORCE's and A2C's policy loss, and GRPO's gradient at ratio 1;
* ``ppo_clip_loss`` is this PPO's and GRPO's clipped surrogate (GRPO is PPO whose baseline is the mean
  reward of a group of completions; REINFORCE's "mean" baseline is the same idea over a batch of episodes);
* ``value_loss`` (optionally clipped, PPO2) trains every critic;
* ``discounted_returns`` gives REINFORCE's reward-to-go and A2C's n-step returns, ``gae`` the GAE
  advantages of A2C and PPO, ``whiten`` the advantage normalisation.

This file only arranges the data. Rollouts come from a synchronous vector environment with same-step
auto-reset: when an episode ends, the step returns the next episode's first observation and the real
final one in ``info["final_obs"]``. A time-limit truncation is not a terminal state (Pardo et al. 2018):
returns and advantages bootstrap from V(final observation) there, and stop at true terminations.
"""

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from align.advantages import discounted_returns, explained_variance, gae, whiten
from align.config import ConfigError, check_range
from align.losses import masked_mean, policy_gradient_loss, ppo_clip_loss, value_loss
from align.rl.common import (
    ActorCritic,
    EpisodeTracker,
    RLConfig,
    RLTrainer,
    as_obs_tensor,
    env_state_dict,
    episode_metrics,
    load_env_state_dict,
)
from align.rl.envs import make_vec_env
from align.trainer import UpdateStep

# Configs


@dataclass
class PolicyGradientConfig(RLConfig):
    """Fields shared by REINFORCE, A2C and PPO: environments, networks, loss weights."""

    num_envs: int = 8
    """Environments stepped together (a synchronous vector env)."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the actor and of the critic (separate networks)."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Hidden activation."""
    ortho_init: bool = True
    """Orthogonal initialisation (gain sqrt(2) hidden, 0.01 policy head, 1 value head), as OpenAI baselines."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (continuous actions)."""
    normalize_advantage: bool = True
    """Whiten the advantages of each (mini)batch to zero mean and unit variance (align.advantages.whiten)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss)."""
    vf_coef: float = 0.5
    """Weight of the critic loss align.losses.value_loss, which is 0.5 * (V - R)^2 (SB3's vf_coef c is our 2c)."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm of each update to this value; 0 disables clipping."""
    adam_epsilon: float = 1e-5
    """Adam epsilon (1e-5, as SB3 and CleanRL for actor-critic methods)."""

    def validate(self) -> None:
        check_range("num_envs", self.num_envs, 1)
        check_range("ent_coef", self.ent_coef, 0.0)
        check_range("vf_coef", self.vf_coef, 0.0)
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ConfigError(
                f"hidden_sizes must be a non-empty list of positive widths, got {self.hidden_sizes}"
            )
        super().validate()


@dataclass
class ReinforceConfig(PolicyGradientConfig):
    """REINFORCE with reward-to-go and a baseline. One trainer step: ``num_envs`` complete episodes."""

    output_dir: str = "outputs/reinforce"
    learning_rate: float = 1e-3
    num_envs: int = 8
    """Episodes per iteration: each environment plays one episode from a reset."""
    baseline: Literal["none", "mean", "value"] = "value"
    """b(s_t): 'none'; 'mean', the mean reward-to-go of the batch; 'value', a learned V(s_t) (its critic
    also bootstraps episodes cut by a time limit)."""
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping."""

    algorithm: ClassVar[str] = "REINFORCE"


@dataclass
class A2CConfig(PolicyGradientConfig):
    """Advantage actor-critic (synchronous). One trainer step: ``n_steps`` steps of ``num_envs`` environments."""

    output_dir: str = "outputs/a2c"
    learning_rate: float = 7e-4
    n_steps: int = 5
    """Steps per environment per rollout (the n of n-step returns)."""
    advantage: Literal["gae", "nstep"] = "gae"
    """'gae' (align.advantages.gae with gae_lambda) or 'nstep' (bootstrapped n-step returns minus V, from
    align.advantages.discounted_returns); they agree when gae_lambda = 1."""
    gae_lambda: float = 1.0
    """GAE lambda (1 = n-step returns, 0 = one-step TD errors)."""
    normalize_advantage: bool = False
    """Whiten the advantages of each batch (off in A2C, as in SB3)."""

    algorithm: ClassVar[str] = "A2C"

    def env_steps_per_iteration(self) -> int | None:
        return self.num_envs * self.n_steps

    def validate(self) -> None:
        check_range("n_steps", self.n_steps, 1)
        check_range("gae_lambda", self.gae_lambda, 0.0, 1.0)
        super().validate()


@dataclass
class PPOConfig(PolicyGradientConfig):
    """PPO with GAE, clipped surrogate, optional value clipping, minibatch epochs and a target-KL stop."""

    output_dir: str = "outputs/ppo"
    learning_rate: float = 3e-4
    """Adam learning rate (lr_scheduler_type 'linear' anneals it to 0, as SB3's lin_ schedules)."""
    n_steps: int = 256
    """Steps per environment per rollout; the batch is num_envs * n_steps transitions."""
    per_device_train_batch_size: int = 64
    """Minibatch size of the PPO epochs."""
    num_epochs: int = 10
    """Passes over the rollout per trainer step."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_eps: float = 0.2
    """Clip range epsilon of the surrogate objective."""
    clip_eps_schedule: Literal["constant", "linear"] = "constant"
    """'linear' anneals clip_eps to 0 over max_steps (SB3's lin_0.2)."""
    clip_eps_value: float | None = None
    """Clip range of the value loss around the rollout's values (PPO2); None disables it."""
    target_kl: float | None = None
    """Stop the epochs of a step early when the approximate KL(old || new) of a minibatch exceeds 1.5 x this
    (checked before its update, as SB3); None never stops."""

    algorithm: ClassVar[str] = "PPO"

    def env_steps_per_iteration(self) -> int | None:
        return self.num_envs * self.n_steps

    def updates_per_iteration(self) -> int:
        return self.num_epochs * math.ceil(self.num_envs * self.n_steps / self.per_device_train_batch_size)

    def validate(self) -> None:
        check_range("n_steps", self.n_steps, 1)
        check_range("num_epochs", self.num_epochs, 1)
        check_range("gae_lambda", self.gae_lambda, 0.0, 1.0)
        check_range("clip_eps", self.clip_eps, 0.0, low_inclusive=False)
        check_range("clip_eps_value", self.clip_eps_value, 0.0, low_inclusive=False, allow_none=True)
        check_range("target_kl", self.target_kl, 0.0, low_inclusive=False, allow_none=True)
        if self.gradient_accumulation_steps != 1:
            raise ConfigError(
                "gradient_accumulation_steps must be 1 for PPO (each minibatch is one update; "
                "set per_device_train_batch_size instead)"
            )
        super().validate()


# Rollouts


def nstep_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    *,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bootstrapped n-step returns and advantages of a rollout, from ``discounted_returns``.

    All ``(N, T)``. A truncated step's reward gets ``gamma * V(final observation)`` added and counts as an
    episode end (SB3's treatment of time limits); the rollout's last step bootstraps from ``V(s_T)``. Equals
    ``gae(..., lam=1)`` (a test checks it on real rollouts). Returns ``(advantages, returns)``.
    """
    trunc = truncated.bool() & ~terminated.bool()
    bootstrapped = rewards + gamma * trunc.to(rewards.dtype) * next_values
    returns = discounted_returns(
        bootstrapped, gamma=gamma, dones=terminated.bool() | trunc, last_value=next_values[..., -1]
    )
    return returns - values, returns


class PolicyGradientTrainer(RLTrainer):
    """Shared by REINFORCE, A2C and PPO: the vector environment, the ``ActorCritic`` policy, rollouts and
    their checkpoint state. Subclasses set ``uses_critic`` and supply the batch and the loss."""

    def __init__(self, config: PolicyGradientConfig, *, callbacks=None) -> None:
        cfg = config
        self.envs = make_vec_env(
            cfg.env_id,
            cfg.num_envs,
            seed=None,
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            **cfg.env_kwargs(),
        )
        space = self.envs.single_action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        action_dim = int(space.n) if self.discrete else int(np.prod(space.shape))
        if not self.discrete:
            self._low, self._high = space.low, space.high
        torch.manual_seed(cfg.seed)
        policy = ActorCritic(
            self.envs.single_observation_space,
            action_dim,
            discrete=self.discrete,
            hidden_sizes=cfg.hidden_sizes,
            activation=cfg.activation,
            critic=self.uses_critic(cfg),
            ortho_init=cfg.ortho_init,
            log_std_init=cfg.log_std_init,
        )
        super().__init__(cfg, policy, callbacks=callbacks)
        self.policy: ActorCritic = self.accelerator.unwrap_model(self.model)
        # Actions are sampled from this generator, so its state (checkpointed) fixes them on resume.
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self._obs, _ = self.envs.reset(seed=cfg.seed)
        self.tracker = EpisodeTracker(cfg.num_envs)

    def uses_critic(self, config: PolicyGradientConfig) -> bool:
        return True

    # -- acting ------------------------------------------------------------------------------------
    def env_actions(self, actions: np.ndarray) -> np.ndarray:
        """What the environment receives: Gaussian samples clipped to the action bounds."""
        return actions if self.discrete else np.clip(actions, self._low, self._high)

    @torch.no_grad()
    def greedy_action(self, obs: Any) -> Any:
        a = self.policy.mode(self.policy.dist_params(as_obs_tensor(obs).unsqueeze(0)))[0]
        return int(a) if self.discrete else np.clip(a.numpy(), self._low, self._high)

    def _step_envs(self, obs: np.ndarray) -> tuple[np.ndarray, ...]:
        params = self.policy.dist_params(as_obs_tensor(obs))
        actions = self.policy.sample(params, self.generator).numpy()
        next_obs, rewards, terminated, truncated, info = self.envs.step(self.env_actions(actions))
        return actions, next_obs, rewards, terminated, truncated, info

    @torch.no_grad()
    def collect_rollout(self, n_steps: int) -> dict[str, Any]:
        """``n_steps`` steps of every environment, continuing its episodes across calls.

        Returns ``(N, T)`` tensors (time last, the layout of ``align.advantages``): ``rewards``,
        ``terminated``, ``truncated``, ``values`` V(s_t), ``next_values`` (V(s_{t+1}); at truncated steps
        V(real final observation); the last column V(s_T)), ``logprobs`` of the actions under the rollout
        policy; ``obs`` ``(N, T, *obs)`` and ``actions``; ``episodes``: (returns, lengths) of finished episodes.
        """
        N, T = self.config.num_envs, n_steps
        obs = self._obs
        obs_buf = np.zeros((T, *np.shape(obs)), dtype=np.asarray(obs).dtype)
        act_buf, rew_buf, term_buf, trunc_buf = [], np.zeros((T, N), np.float32), [], []
        finals: list[tuple[int, int, Any]] = []
        ep_returns: list[float] = []
        ep_lengths: list[int] = []
        for t in range(T):
            obs_buf[t] = obs
            actions, obs, rewards, terminated, truncated, info = self._step_envs(obs)
            act_buf.append(actions)
            rew_buf[t] = rewards
            term_buf.append(terminated)
            trunc_buf.append(truncated)
            done = terminated | truncated
            r, n = self.tracker.step(rewards, done)
            if r:
                ep_returns += r
                ep_lengths += n
                cut = truncated & ~terminated
                finals += [(t, int(i), info["final_obs"][i]) for i in np.flatnonzero(cut)]
        self._obs = obs
        self.num_timesteps += N * T
        self.episodes += len(ep_returns)

        flat_obs = as_obs_tensor(obs_buf).reshape(T * N, *obs_buf.shape[2:])
        actions_t = torch.from_numpy(np.stack(act_buf))
        flat_actions = actions_t.reshape(T * N, *actions_t.shape[2:])
        extra = [as_obs_tensor(obs)] + [as_obs_tensor(np.asarray(f)).unsqueeze(0) for _, _, f in finals]
        values_all = self.policy.value(torch.cat([flat_obs, *extra]))
        values = values_all[: T * N].view(T, N)
        next_values = torch.cat([values[1:], values_all[T * N : T * N + N].unsqueeze(0)])
        for k, (t, i, _) in enumerate(finals):
            next_values[t, i] = values_all[T * N + N + k]
        logprobs = self.policy.logprobs(self.policy.dist_params(flat_obs), flat_actions)

        def nt(x: torch.Tensor) -> torch.Tensor:  # (T, N, ...) -> (N, T, ...)
            return x.transpose(0, 1).contiguous()

        return {
            "obs": nt(flat_obs.view(T, N, *flat_obs.shape[1:])),
            "actions": nt(actions_t),
            "rewards": nt(torch.from_numpy(rew_buf)),
            "terminated": nt(torch.from_numpy(np.stack(term_buf))),
            "truncated": nt(torch.from_numpy(np.stack(trunc_buf))),
            "values": nt(values),
            "next_values": nt(next_values),
            "logprobs": nt(logprobs.view(T, N)),
            "episodes": (ep_returns, ep_lengths),
        }

    def rollout_advantages(self, rollout: dict[str, Any], lam: float, method: str = "gae"):
        """(advantages, returns) ``(N, T)`` of a rollout: GAE(gamma, lam), or n-step returns minus V."""
        r = rollout
        if method == "nstep":
            return nstep_advantages(
                r["rewards"],
                r["values"],
                r["next_values"],
                r["terminated"],
                r["truncated"],
                gamma=self.config.gamma,
            )
        return gae(
            r["rewards"],
            r["values"],
            gamma=self.config.gamma,
            lam=lam,
            next_values=r["next_values"],
            terminated=r["terminated"],
            truncated=r["truncated"],
        )

    def flat_batch(self, rollout: dict[str, Any], advantages: torch.Tensor, returns: torch.Tensor) -> dict:
        """The rollout as a flat batch of N * T transitions for the loss."""
        n = advantages.numel()
        return {
            "obs": rollout["obs"].reshape(n, *rollout["obs"].shape[2:]),
            "actions": rollout["actions"].reshape(n, *rollout["actions"].shape[2:]),
            "logprobs": rollout["logprobs"].reshape(n),
            "values": rollout["values"].reshape(n),
            "advantages": advantages.reshape(n),
            "returns": returns.reshape(n),
        }

    def actor_critic_loss(
        self, batch: dict[str, torch.Tensor], clip_eps: float | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """A2C's loss (``clip_eps=None``: ``policy_gradient_loss``) or PPO's (``ppo_clip_loss``), plus
        ``vf_coef * value_loss - ent_coef * entropy``."""
        cfg = self.config
        params, values = self.model(batch["obs"])
        logprobs = self.policy.logprobs(params, batch["actions"])
        adv = batch["advantages"]
        if cfg.normalize_advantage and adv.numel() > 1 and not batch.get("whitened", False):
            adv = whiten(adv)
        if clip_eps is None:
            policy_loss, metrics = policy_gradient_loss(logprobs, adv)
            v_loss, v_metrics = value_loss(values, None, batch["returns"])
        else:
            policy_loss, metrics = ppo_clip_loss(logprobs, batch["logprobs"], adv, clip_eps=clip_eps)
            v_loss, v_metrics = value_loss(
                values, batch["values"], batch["returns"], clip_eps=cfg.clip_eps_value
            )
        return self.entropy_bonus(policy_loss + cfg.vf_coef * v_loss, params, {**metrics, **v_metrics})

    def entropy_bonus(
        self, loss: torch.Tensor, params: torch.Tensor, metrics: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``loss - ent_coef * entropy``, with the mean entropy logged."""
        if self.config.ent_coef:
            ent = self.policy.entropy(params).mean()
            loss = loss - self.config.ent_coef * ent
        else:  # no bonus: keep the entropy out of the backward graph (a fifth of its nodes), log it only
            with torch.no_grad():
                ent = self.policy.entropy(params.detach()).mean()
        return loss, {**metrics, "entropy": ent.detach()}

    def rollout_metrics(self, rollout: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
        return {
            "value/explained_variance": explained_variance(batch["values"], batch["returns"]),
            **episode_metrics(*rollout["episodes"]),
        }

    # -- checkpoint --------------------------------------------------------------------------------
    def extra_state_dict(self) -> dict[str, Any]:
        return {
            "env": env_state_dict(self.envs),
            "obs": torch.from_numpy(np.array(self._obs)),
            "tracker": self.tracker.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        load_env_state_dict(self.envs, state["env"])
        self._obs = state["obs"].numpy().copy()
        self.tracker.load_state_dict(state["tracker"])
        self.generator.set_state(state["generator"])


# REINFORCE


class ReinforceTrainer(PolicyGradientTrainer):
    """REINFORCE with reward-to-go and a baseline. each plan plays ``num_envs`` complete episodes (one per
    environment, from a reset); ``compute_loss`` is ``policy_gradient_loss`` (+ the critic's ``value_loss``).
    """

    def uses_critic(self, config: ReinforceConfig) -> bool:
        return config.baseline == "value"

    @torch.no_grad()
    def collect_episodes(self) -> dict[str, Any]:
        """Reset every environment and play until each has finished one episode. Returns ``(N, T)`` tensors
        (T the longest episode) with ``mask`` 1 on each environment's own episode and 0 after it."""
        N = self.config.num_envs
        obs, _ = self.envs.reset()
        active = np.ones(N, dtype=bool)
        obs_l, act_l, rew_l, mask_l, term_l = [], [], [], [], []
        final_obs: list[Any] = [None] * N
        truncated_end = np.zeros(N, dtype=bool)
        returns, lengths = np.zeros(N), np.zeros(N, dtype=np.int64)
        while active.any():
            obs_l.append(obs)
            actions, obs, rewards, terminated, truncated, info = self._step_envs(obs)
            act_l.append(actions)
            rew_l.append(np.where(active, rewards, 0.0).astype(np.float32))
            mask_l.append(active.copy())
            term_l.append(terminated & active)
            returns += np.where(active, rewards, 0.0)
            lengths += active
            ended = active & (terminated | truncated)
            for i in np.flatnonzero(ended & truncated & ~terminated):
                truncated_end[i] = True
                final_obs[i] = info["final_obs"][i]
            active &= ~ended
        T = len(obs_l)
        self.num_timesteps += int(lengths.sum())
        self.episodes += N

        def nt(arrays: list[np.ndarray]) -> torch.Tensor:  # T x (N, ...) -> (N, T, ...)
            return torch.from_numpy(np.stack(arrays)).transpose(0, 1).contiguous()

        obs_t = nt([np.asarray(o) for o in obs_l])
        if obs_t.dtype == torch.float64:
            obs_t = obs_t.float()
        last_value = torch.zeros(N)
        if self.config.baseline == "value" and truncated_end.any():
            idx = np.flatnonzero(truncated_end)
            finals = torch.stack([as_obs_tensor(np.asarray(final_obs[i])) for i in idx])
            last_value[torch.from_numpy(idx)] = self.policy.value(finals)
        return {
            "obs": obs_t,
            "actions": nt(act_l),
            "rewards": nt(rew_l),
            "mask": nt(mask_l),
            "terminated": nt(term_l),
            "last_value": last_value,
            "episodes": (returns.tolist(), lengths.tolist()),
            "T": T,
        }

    def plan_updates(self) -> list[UpdateStep]:
        """One optimizer step on ``num_envs`` fresh episodes, weighted by their steps (the loss is a mean
        over steps, so accumulated batches of episodes weigh each step the same)."""
        batch = self.episode_batch()
        episodes = episode_metrics(batch.pop("episode_returns"), batch.pop("episode_lengths"))
        return [UpdateStep([(batch, float(batch["advantages"].numel()))], episodes)]

    def episode_batch(self) -> dict[str, Any]:
        """``num_envs`` episodes as a flat batch of their M steps: obs, actions, advantages, returns."""
        cfg = self.config
        ep = self.collect_episodes()
        mask = ep["mask"]
        # Reward-to-go G_t; an episode cut by the time limit continues with V(final obs) (value baseline).
        returns = discounted_returns(
            ep["rewards"], gamma=cfg.gamma, dones=ep["terminated"], last_value=ep["last_value"], mask=mask
        )
        m = mask.bool()
        flat_obs = ep["obs"][m]
        if cfg.baseline == "value":
            with torch.no_grad():
                values = torch.zeros_like(returns)
                values[m] = self.policy.value(flat_obs)
            advantages = returns - values
        elif cfg.baseline == "mean":
            advantages = returns - masked_mean(returns, mask)
        else:
            advantages = returns
        if cfg.normalize_advantage:
            advantages = whiten(advantages, mask)
        episode_returns, episode_lengths = ep["episodes"]
        return {
            "obs": flat_obs,
            "actions": ep["actions"][m],
            "advantages": advantages[m],
            "returns": returns[m],
            "episode_returns": episode_returns,
            "episode_lengths": episode_lengths,
        }

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        params, values = self.model(batch["obs"])
        logprobs = self.policy.logprobs(params, batch["actions"])
        loss, metrics = policy_gradient_loss(logprobs, batch["advantages"])
        if values is not None:
            v_loss, v_metrics = value_loss(values, None, batch["returns"])
            loss = loss + cfg.vf_coef * v_loss
            metrics = {**metrics, **v_metrics}
        return self.entropy_bonus(loss, params, metrics)


# A2C


class A2CTrainer(PolicyGradientTrainer):
    """Synchronous advantage actor-critic: each plan is one ``n_steps`` rollout with GAE or n-step
    advantages; ``compute_loss`` is ``policy_gradient_loss + vf_coef * value_loss - ent_coef * entropy``."""

    def plan_updates(self) -> list[UpdateStep]:
        """One optimizer step on one ``n_steps`` rollout of every environment."""
        cfg = self.config
        rollout = self.collect_rollout(cfg.n_steps)
        advantages, returns = self.rollout_advantages(rollout, cfg.gae_lambda, cfg.advantage)
        batch = self.flat_batch(rollout, advantages, returns)
        return [UpdateStep([(batch, 1.0)], self.rollout_metrics(rollout, batch))]

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.actor_critic_loss(batch)


# PPO


class PPOTrainer(PolicyGradientTrainer):
    """PPO-clip (Schulman et al. 2017) with the details of OpenAI baselines' PPO2 / SB3: GAE, per-minibatch
    advantage whitening, optional value clipping, entropy bonus, global gradient clipping, linear annealing
    of the learning rate (``lr_scheduler_type: linear``) and of the clip range, target-KL early stop."""

    _kl_stopped = False

    def clip_eps_now(self) -> float:
        """The clip range at the current step (annealed linearly to 0 with ``clip_eps_schedule: linear``)."""
        cfg = self.config
        if cfg.clip_eps_schedule == "linear":
            return cfg.clip_eps * (1.0 - self.state.step / cfg.max_steps)
        return cfg.clip_eps

    def plan_updates(self) -> list[UpdateStep]:
        """One rollout of ``num_envs * n_steps`` transitions with GAE advantages, then ``num_epochs`` passes
        of shuffled minibatches, one optimizer step each."""
        cfg = self.config
        rollout = self.collect_rollout(cfg.n_steps)
        advantages, returns = self.rollout_advantages(rollout, cfg.gae_lambda)
        batch = self.flat_batch(rollout, advantages, returns)
        n = batch["advantages"].numel()
        size = min(cfg.per_device_train_batch_size, n)
        whole = size == n  # one minibatch per epoch: whiten once here, not in every epoch
        if whole and cfg.normalize_advantage and n > 1:
            batch["advantages"] = whiten(batch["advantages"])
        metrics = self.rollout_metrics(rollout, batch)
        steps = []
        for _ in range(cfg.num_epochs):
            perm = torch.randperm(n, generator=self.generator)
            for start in range(0, n, size):
                mb = batch if whole else {k: v[perm[start : start + size]] for k, v in batch.items()}
                steps.append(UpdateStep([({**mb, "whitened": whole}, 1.0)], metrics if not steps else {}))
        self._kl_stopped = False
        return steps

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        clip_eps = self.clip_eps_now()
        loss, metrics = self.actor_critic_loss(batch, clip_eps)
        return loss, {**metrics, "clip/eps": clip_eps}

    def skip_update(self, metrics: dict[str, Any]) -> bool:
        """SB3's target-KL stop: once a minibatch's approximate KL(old || new) exceeds 1.5 x target_kl
        (checked before its update), the rest of the rollout's planned steps take no update (they still
        count as steps, so the budget in environment steps is unchanged)."""
        target = self.config.target_kl
        if target is not None and not self._kl_stopped and metrics.get("kl/old_approx", 0.0) > 1.5 * target:
            self._kl_stopped = True
        return self._kl_stopped

    def extra_state_dict(self) -> dict[str, Any]:
        return {**super().extra_state_dict(), "kl_stopped": self._kl_stopped}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        super().load_extra_state_dict(state)
        self._kl_stopped = bool(state.get("kl_stopped", False))
