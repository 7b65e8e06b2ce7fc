"""What the classic-RL trainers share: the config fields, networks, episode bookkeeping, environment
checkpoints, greedy evaluation and the run outputs (summary, learning curve).

The algorithms live next door and stay short: ``dqn.py`` (DQN), ``policy_gradient.py`` (REINFORCE, A2C,
PPO) and ``tabular_trainer.py`` (Q-learning, SARSA, Monte Carlo, value and policy iteration). Every one is
a ``align.trainer.Trainer``: the same loop, logging, checkpoints and exact resume as the LLM trainers.

Step accounting, as in every align trainer: ``max_steps`` counts optimizer steps. An algorithm plans
them on each round of experience (a rollout, ``train_freq`` environment steps, a batch of episodes);
environment steps and episodes are the counters ``env/steps`` and ``env/episodes``. ``total_timesteps``
(environment steps, as Stable-Baselines3 users expect) is translated into ``max_steps``
(``RLConfig._resolve_budget``); ``parse_rl_config`` lets the one given on the command line win over the
one in the YAML file.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from align.config import ConfigError, TrainConfig, check_range, parse_config
from align.losses import entropy_from_logits, selective_log_softmax
from align.models import eval_mode
from align.rl.envs import action_space_kind, make_env, resolve_env_id
from align.trainer import METRICS_FILE, Trainer, read_metrics

SUMMARY_FILE = "summary.json"
CURVE_FILE = "learning_curve.png"
ARCH_FILE = "architecture.json"

# Config


@dataclass
class RLConfig(TrainConfig):
    """Fields every classic-RL trainer has: the environment, discount, budget, evaluation, threads."""

    output_dir: str = "outputs/rl"
    """Where metrics.jsonl, config.yaml, checkpoints/, model/, summary.json and learning_curve.png go."""
    env_id: str = "CartPole-v1"
    """Environment id, one of align.rl.envs.SUPPORTED_ENVS (e.g. CartPole-v1, Pendulum-v1, FrozenLake-v1)."""
    gamma: float = 0.99
    """Discount factor in [0, 1]."""
    max_steps: int = 0
    """Optimizer steps to train for. 0 = derived from total_timesteps."""
    total_timesteps: int = 0
    """Environment steps to train for, rounded up to whole rounds of experience. 0 = derived from
    max_steps."""
    eval_episodes: int = 20
    """Greedy episodes run by evaluate() (mean and std of their returns are reported)."""
    eval_seed: int = 10_000
    """Evaluation episode i resets its own environment with seed eval_seed + i (fixed, unlike training)."""
    torch_threads: int = 1
    """torch intra-op threads while training and evaluating. 1 is fastest for these small networks: the
    matrices are too small to split, and extra threads only add synchronisation."""
    logging_steps: int = 10

    #: Name used in error messages.
    algorithm: ClassVar[str] = "RL"
    #: True when the algorithm needs a Discrete action space.
    discrete_actions_only: ClassVar[bool] = False

    def env_steps_per_iteration(self) -> int | None:
        """Environment steps gathered per round of experience, or None when it varies (whole episodes)."""
        return None

    def updates_per_iteration(self) -> int:
        """Optimizer steps planned on one round of experience (PPO: epochs x minibatches)."""
        return 1

    def warmup_iterations(self) -> int:
        """Rounds of experience gathered before the first update (DQN's learning_starts)."""
        return 0

    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``make_env`` (none by default)."""
        return {}

    def validate(self) -> None:
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("total_timesteps", self.total_timesteps, 0)
        check_range("max_steps", self.max_steps, 0)
        check_range("eval_episodes", self.eval_episodes, 1)
        check_range("torch_threads", self.torch_threads, 1)
        self._check_env()
        self._resolve_budget()
        super().validate()

    def _resolve_budget(self) -> None:
        """Translate total_timesteps (environment steps, as SB3) into max_steps (optimizer steps) or back."""
        per = self.env_steps_per_iteration()
        updates, warm = self.updates_per_iteration(), self.warmup_iterations()
        if self.max_steps == 0 and self.total_timesteps == 0:
            raise ConfigError(
                "set max_steps (optimizer steps) or total_timesteps (environment steps); both are 0"
            )
        if self.total_timesteps and per is None:
            raise ConfigError(
                f"total_timesteps: {self.algorithm} gathers whole episodes, not a fixed number of environment "
                "steps; set max_steps (optimizer steps) and leave total_timesteps at 0"
            )
        if per is None:
            return
        derived = max(math.ceil(self.total_timesteps / per) - warm, 0) * updates
        if self.max_steps == 0:
            if derived == 0:
                raise ConfigError(
                    f"total_timesteps={self.total_timesteps} ends before the first update "
                    f"({warm} rounds of {per} environment steps come first)"
                )
            self.max_steps = derived
        elif not self.total_timesteps:
            self.total_timesteps = (math.ceil(self.max_steps / updates) + warm) * per
        elif derived != self.max_steps:
            raise ConfigError(
                f"max_steps={self.max_steps} and total_timesteps={self.total_timesteps} disagree ({per} environment "
                f"steps and {updates} optimizer steps per round); give one of them and set the other to 0"
            )

    def _check_env(self) -> None:
        try:
            resolve_env_id(self.env_id)
        except ValueError as e:
            raise ConfigError(f"env_id: {e}") from None
        try:
            env = make_env(self.env_id, **self.env_kwargs())
        except TypeError as e:
            names = " / ".join(self.env_kwargs())
            raise ConfigError(f"{names}: {self.env_id} does not take these options ({e})") from None
        try:
            self._check_spaces(env)
        finally:
            env.close()

    def _check_spaces(self, env: gym.Env) -> None:
        """Raise ``ConfigError`` (naming env_id) when the algorithm cannot handle the env's spaces."""
        kind = action_space_kind(env)
        if self.discrete_actions_only and kind != "discrete":
            raise ConfigError(
                f"env_id: {self.algorithm} needs a discrete action space, but {self.env_id} has {kind} "
                f"actions ({env.action_space}); use PPO, A2C or REINFORCE for continuous actions"
            )
        obs_space = env.observation_space
        if not isinstance(obs_space, (gym.spaces.Box, gym.spaces.Discrete)):
            raise ConfigError(
                f"env_id: {self.env_id} has a {type(obs_space).__name__} observation space; "
                "supported are Box and Discrete"
            )


def parse_rl_config(
    cls: type[Any], args: Sequence[str] | None = None, default_config: str | Path | None = None
):
    """``parse_config`` for RL configs, with two conveniences for recipes.

    * Without ``--config``, ``default_config`` (the recipe's YAML) is used, so a bare run learns.
    * ``--max_steps`` and ``--total_timesteps`` are two units of one budget: the one given on the command
      line wins over the other from the YAML file (which is then derived from it).
    """
    argv = list(sys.argv[1:] if args is None else args)
    flags = {a.split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    if default_config is not None and "__config" not in flags:
        argv = ["--config", str(default_config), *argv]
    if "__max_steps" in flags and "__total_timesteps" not in flags:
        argv += ["--total_timesteps", "0"]
    if "__total_timesteps" in flags and "__max_steps" not in flags:
        argv += ["--max_steps", "0"]
    return parse_config(cls, argv)


# Networks

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(
    sizes: Sequence[int], activation: str = "tanh", *, ortho_init: bool = False, out_gain: float = 1.0
) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between them (none after the last).

    ``ortho_init``: orthogonal weights with gain sqrt(2) on hidden layers and ``out_gain`` on the last, zero
    biases (the PPO implementation detail of OpenAI baselines and SB3; Andrychowicz et al. 2021).
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        last = i == len(sizes) - 2
        if ortho_init:
            nn.init.orthogonal_(lin.weight, gain=out_gain if last else math.sqrt(2))
            nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class ObsEncoder(nn.Module):
    """Observations to a flat float vector: Box observations flattened, Discrete ones one-hot."""

    def __init__(self, space: gym.Space) -> None:
        super().__init__()
        discrete = isinstance(space, gym.spaces.Discrete)
        self.num_states: int | None = int(space.n) if discrete else None
        self.dim = int(space.n) if discrete else int(np.prod(space.shape))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(B,) states -> (B, S) one-hot; (B, *shape) boxes -> (B, prod(shape)) float."""
        if self.num_states is not None:
            return F.one_hot(obs.long(), self.num_states).float()
        return (obs.flatten(1) if obs.dim() > 2 else obs).float()


def _space_kwargs(obs_space: gym.Space) -> dict[str, Any]:
    if isinstance(obs_space, gym.spaces.Discrete):
        return {"kind": "discrete", "n": int(obs_space.n)}
    return {"kind": "box", "shape": list(obs_space.shape)}


def _space_from_kwargs(kw: dict[str, Any]) -> gym.Space:
    if kw["kind"] == "discrete":
        return gym.spaces.Discrete(kw["n"])
    return gym.spaces.Box(-np.inf, np.inf, shape=tuple(kw["shape"]), dtype=np.float32)


class QNetwork(nn.Module):
    """Q(s, .) for a Discrete action space: an MLP from the encoded observation to one value per action."""

    def __init__(
        self,
        obs_space: gym.Space,
        num_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation="relu",
    ) -> None:
        super().__init__()
        self.encoder = ObsEncoder(obs_space)
        self.net = mlp([self.encoder.dim, *hidden_sizes, num_actions], activation)
        self.architecture = {
            "class": "QNetwork",
            "obs_space": _space_kwargs(obs_space),
            "num_actions": int(num_actions),
            "hidden_sizes": list(hidden_sizes),
            "activation": activation,
        }

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, *obs) -> (B, A)."""
        return self.net(self.encoder(obs))


class ActorCritic(nn.Module):
    """A policy pi(a | s) and, optionally, a value V(s): separate MLPs, as SB3's default ``MlpPolicy``.

    Discrete actions: a categorical over ``action_dim`` logits. Continuous actions: a diagonal Gaussian whose
    mean the actor outputs and whose log standard deviation is a state-independent parameter
    (``log_std_init``), as in SB3 and CleanRL. Sampled Gaussian actions are stored unclipped (their log-prob
    is what the loss needs); the environment receives them clipped to the action bounds.
    """

    def __init__(
        self,
        obs_space: gym.Space,
        action_dim: int,
        *,
        discrete: bool,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        critic: bool = True,
        ortho_init: bool = True,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.discrete = discrete
        self.encoder = ObsEncoder(obs_space)
        d = self.encoder.dim
        self.actor = mlp([d, *hidden_sizes, action_dim], activation, ortho_init=ortho_init, out_gain=0.01)
        self.critic = (
            mlp([d, *hidden_sizes, 1], activation, ortho_init=ortho_init, out_gain=1.0) if critic else None
        )
        self.log_std = None if discrete else nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        self.architecture = {
            "class": "ActorCritic",
            "obs_space": _space_kwargs(obs_space),
            "action_dim": int(action_dim),
            "discrete": bool(discrete),
            "hidden_sizes": list(hidden_sizes),
            "activation": activation,
            "critic": bool(critic),
            "ortho_init": bool(ortho_init),
            "log_std_init": float(log_std_init),
        }

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, *obs) -> (distribution parameters (B, A): logits or Gaussian means, values (B,) or None)."""
        x = self.encoder(obs)
        return self.actor(x), (self.critic(x).squeeze(-1) if self.critic is not None else None)

    def dist_params(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits (discrete) or means (continuous), (B, A)."""
        return self.actor(self.encoder(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s), (B,)."""
        if self.critic is None:
            raise RuntimeError("this ActorCritic was built without a critic (critic=False)")
        return self.critic(self.encoder(obs)).squeeze(-1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw actions: (B,) indices (discrete) or (B, A) vectors (continuous)."""
        if self.discrete:
            # Gumbel-max: argmax(logits + G), G = -log(E), E ~ Exp(1), is an exact draw from softmax(logits);
            # 2.5x cheaper than softmax + multinomial for a handful of rows (7 vs 18 us).
            exp = torch.empty_like(params).exponential_(generator=generator)
            return (params - exp.log()).argmax(-1)
        noise = torch.randn(params.shape, generator=generator, dtype=params.dtype)
        return params + self.log_std.exp() * noise

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        """The greedy action: argmax of the logits, or the Gaussian mean."""
        return params.argmax(-1) if self.discrete else params

    def logprobs(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a | s), (B,)."""
        if self.discrete:
            # selective_log_softmax loops over its first dimension: pass the batch as one row.
            return selective_log_softmax(params.unsqueeze(0), actions.long().unsqueeze(0)).squeeze(0)
        return gaussian_logprob_entropy(params, self.log_std, actions)[0]

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        """Entropy of pi(. | s), (B,)."""
        if self.discrete:
            return entropy_from_logits(params)
        return gaussian_entropy(self.log_std).expand(params.shape[:-1])

    def logprob_entropy(
        self, params: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a | s) and the entropy of pi(. | s), both (B,)."""
        return self.logprobs(params, actions), self.entropy(params)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian, sum_i [1/2 + log(2 pi) / 2 + log sigma_i] (a 0-dim tensor)."""
    return (0.5 + 0.5 * math.log(2.0 * math.pi) + log_std).sum(-1)


def gaussian_logprob_entropy(
    mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal Gaussian: log N(a; mean, exp(log_std)^2) summed over action dims, and its entropy; (B,) each.

    ``log p = sum_i [-(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2]``; H as ``gaussian_entropy``.
    """
    half_log_2pi = 0.5 * math.log(2.0 * math.pi)
    z = (actions - mean) * torch.exp(-log_std)
    logprobs = (-0.5 * z.pow(2) - log_std - half_log_2pi).sum(-1)
    return logprobs, gaussian_entropy(log_std).expand(mean.shape[:-1])


def build_model(architecture: dict[str, Any]) -> nn.Module:
    """Rebuild a ``QNetwork`` or ``ActorCritic`` from its ``architecture`` dict (saved as architecture.json)."""
    kw = dict(architecture)
    cls = kw.pop("class")
    obs_space = _space_from_kwargs(kw.pop("obs_space"))
    if cls == "QNetwork":
        return QNetwork(obs_space, **kw)
    if cls == "ActorCritic":
        return ActorCritic(obs_space, **kw)
    raise ValueError(f"unknown architecture class {cls!r}")


def load_model(path: str | Path) -> nn.Module:
    """Load a model saved by an RL recipe (``output_dir/model``): architecture.json + model.safetensors."""
    from safetensors.torch import load_file

    path = Path(path)
    model = build_model(json.loads((path / ARCH_FILE).read_text()))
    model.load_state_dict(load_file(path / "model.safetensors"))
    return model.eval()


# Episode bookkeeping and environment checkpoints


class EpisodeTracker:
    """Running return and length of the episode in progress in each of ``n`` environments."""

    def __init__(self, n: int) -> None:
        self.returns = np.zeros(n, dtype=np.float64)
        self.lengths = np.zeros(n, dtype=np.int64)

    def step(self, rewards: np.ndarray, dones: np.ndarray) -> tuple[list[float], list[int]]:
        """Add one step's rewards; return (returns, lengths) of the episodes that ended at it."""
        self.returns += rewards
        self.lengths += 1
        if not dones.any():
            return [], []
        idx = np.flatnonzero(dones)
        out = self.returns[idx].tolist(), self.lengths[idx].tolist()
        self.returns[idx] = 0.0
        self.lengths[idx] = 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"returns": self.returns.tolist(), "lengths": self.lengths.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns = np.asarray(state["returns"], dtype=np.float64)
        self.lengths = np.asarray(state["lengths"], dtype=np.int64)


def episode_metrics(returns: list[float], lengths: list[int]) -> dict[str, float]:
    """``episode/return`` and ``episode/length`` means, only when some episode ended (no NaN in the log)."""
    if not returns:
        return {}
    return {"episode/return": float(np.mean(returns)), "episode/length": float(np.mean(lengths))}


_PLAIN = (bool, int, float, str, type(None))


def _capture(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in vars(obj).items():
        if isinstance(v, np.random.Generator):
            out[k] = {"__rng__": v.bit_generator.state}
        elif isinstance(v, _PLAIN):
            out[k] = v
        elif isinstance(v, np.ndarray) and v.dtype.kind in "biuf":  # numbers; maps (bytes) are static
            out[k] = {"__array__": torch.from_numpy(v.copy())}
        elif isinstance(v, np.generic):
            out[k] = {"__scalar__": v.item(), "dtype": str(v.dtype)}
        elif isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v):
            out[k] = {"__tuple__": list(v)}
    return out


def _restore(obj: Any, state: dict[str, Any]) -> None:
    for k, v in state.items():
        if isinstance(v, dict) and "__rng__" in v:
            rng = getattr(obj, k, None)
            if not isinstance(rng, np.random.Generator):
                rng = np.random.Generator(getattr(np.random, v["__rng__"]["bit_generator"])())
            rng.bit_generator.state = v["__rng__"]
            setattr(obj, k, rng)
        elif isinstance(v, dict) and "__array__" in v:
            setattr(obj, k, v["__array__"].numpy().copy())
        elif isinstance(v, dict) and "__scalar__" in v:
            setattr(obj, k, np.dtype(v["dtype"]).type(v["__scalar__"]))
        elif isinstance(v, dict) and "__tuple__" in v:
            setattr(obj, k, tuple(v["__tuple__"]))
        else:
            setattr(obj, k, v)


def _layers(env: gym.Env) -> Iterator[Any]:
    while True:
        yield env
        if not isinstance(env, gym.Wrapper):
            return
        env = env.env


def env_state_dict(env: gym.Env | gym.vector.SyncVectorEnv) -> dict[str, Any]:
    """The state of an environment (or a sync vector env) as tensors and plain Python, for checkpoints.

    Every wrapper layer and the base env contribute their plain attributes (numbers, strings, numpy arrays
    such as CartPole's ``state``, FrozenLake's ``s``, ``TimeLimit._elapsed_steps``) and their numpy random
    generators' states. That is the whole state of gymnasium's classic-control and toy-text environments
    and of the project's tabular ones, so a resumed run continues the same episodes. Environments that keep
    state in other objects (physics engines) are not covered.
    """
    if isinstance(env, gym.vector.SyncVectorEnv):
        return {"vector": _capture(env), "envs": [env_state_dict(e) for e in env.envs]}
    return {"layers": [[type(layer).__name__, _capture(layer)] for layer in _layers(env)]}


def load_env_state_dict(env: gym.Env | gym.vector.SyncVectorEnv, state: dict[str, Any]) -> None:
    """Restore what ``env_state_dict`` returned into an environment built the same way."""
    if isinstance(env, gym.vector.SyncVectorEnv):
        if len(state["envs"]) != len(env.envs):
            raise ValueError(
                f"checkpoint has {len(state['envs'])} environments, this run has {len(env.envs)}"
            )
        _restore(env, state["vector"])
        for e, s in zip(env.envs, state["envs"]):
            load_env_state_dict(e, s)
        return
    layers = list(_layers(env))
    names = [type(layer).__name__ for layer in layers]
    saved = [name for name, _ in state["layers"]]
    if names != saved:
        raise ValueError(f"checkpoint environment is {saved}, this run's is {names}")
    for layer, (_, s) in zip(layers, state["layers"]):
        _restore(layer, s)


# The shared trainer


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous number."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def as_obs_tensor(obs: Any) -> torch.Tensor:
    """A numpy observation (batch) as a torch tensor (float32 for Box observations, sharing memory)."""
    arr = np.asarray(obs)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return torch.from_numpy(arr)


def run_greedy_episodes(
    env: gym.Env, act: Callable[[Any], Any], episodes: int, seed: int, max_episode_steps: int = 100_000
) -> tuple[list[float], list[int]]:
    """Play ``episodes`` episodes with the deterministic policy ``act(obs) -> action``; episode i is reset with
    seed ``seed + i``. Returns (returns, lengths)."""
    returns, lengths = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, n = 0.0, 0
        while n < max_episode_steps:
            obs, r, terminated, truncated, _ = env.step(act(obs))
            total += float(r)
            n += 1
            if terminated or truncated:
                break
        returns.append(total)
        lengths.append(n)
    return returns, lengths


def _counter(key: str, doc: str) -> property:
    """An int attribute stored as the loop counter ``key`` (logged with every metrics line)."""

    def set_counter(self, value: int) -> None:
        self.state.counters[key] = float(value)

    return property(lambda self: int(self.state.counters.get(key, 0)), set_counter, doc=doc)


class RLTrainer(Trainer):
    """The ``Trainer`` with what every classic-RL algorithm adds: environment-step counting (logged as
    ``env/steps`` and ``env/episodes`` with every metrics line), greedy evaluation on a separate environment
    with fixed seeds, ``torch_threads`` while training, and best-model selection on evaluations of their own.
    """

    progress_keys = ("episode/return", "eval/return_mean", "loss")

    def __init__(self, config: RLConfig, model: nn.Module | None, *, callbacks=None) -> None:
        super().__init__(config, model, callbacks=callbacks)
        self.num_timesteps = 0
        self.episodes = 0
        self._eval_env: gym.Env | None = None
        self._selection_eval = False

    # -- hooks for subclasses ------------------------------------------------------------------------
    def greedy_action(self, obs: Any) -> Any:
        """The deterministic action for one observation (used by ``evaluate``)."""
        raise NotImplementedError

    # -- loop additions ------------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        """Train with ``torch_threads`` threads; evaluations during training (model selection with
        ``metric_for_best_model``) use seeds of their own, so the final report is on unseen episodes."""
        self._selection_eval = True
        try:
            with torch_threads(self.config.torch_threads):
                logs = super().train()
        finally:
            self._selection_eval = False
        if self.load_best_model() and self.accelerator.is_main_process:
            print(
                f"{type(self).__name__}: restored the weights of step {self.state.best_step} "
                f"({self.config.metric_for_best_model} = {self.state.best_metric:.4g})"
            )
        return logs

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Run ``eval_episodes`` greedy episodes (argmax action, or the Gaussian mean) with seeds
        ``eval_seed + i`` on an environment of its own: ``eval/return_mean``, ``eval/return_std``
        (population std), ``eval/length_mean``. Training state (environments, generators) is untouched."""
        cfg = self.config
        if self._eval_env is None:
            self._eval_env = make_env(cfg.env_id, **cfg.env_kwargs())
        # Selection episodes during training start 100,000 seeds away from the reported ones.
        seed = cfg.eval_seed + (100_000 if self._selection_eval else 0)
        with eval_mode(self.model), torch_threads(cfg.torch_threads):
            returns, lengths = run_greedy_episodes(
                self._eval_env, self.greedy_action, cfg.eval_episodes, seed
            )
        return {
            "eval/return_mean": float(np.mean(returns)),
            "eval/return_std": float(np.std(returns)),
            "eval/length_mean": float(np.mean(lengths)),
        }

    def save_model(self, path: str | Path) -> Path:
        """Save the weights (safetensors) and ``architecture.json`` so ``load_model(path)`` rebuilds it."""
        path = super().save_model(path)
        unwrapped = self.accelerator.unwrap_model(self.model) if self.model is not None else None
        arch = getattr(unwrapped, "architecture", None)
        if arch is not None and self.accelerator.is_main_process:
            (path / ARCH_FILE).write_text(json.dumps(arch, indent=2) + "\n")
        return path

    num_timesteps = _counter("env/steps", "Environment steps taken so far (checkpointed with the loop).")
    episodes = _counter("env/episodes", "Episodes finished so far.")


# Run outputs


def plot_learning_curve(output_dir: str | Path, title: str | None = None) -> Path | None:
    """Draw ``episode/return`` (and ``eval/return_mean`` when logged) against environment steps from
    metrics.jsonl into ``learning_curve.png``; for dynamic programming, which has no episodes, the exact
    start values per sweep. Returns the path, or None when nothing was logged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    if not (output_dir / METRICS_FILE).exists():
        return None
    rows = read_metrics(output_dir)
    keys, ylabel = ("episode/return", "eval/return_mean"), "return"
    if not any(k in r for r in rows for k in keys):  # dynamic programming: no episodes, exact values
        keys, ylabel = ("value/start", "policy/value_start"), "value of the start state"
    xkey = "env/steps" if any(r.get("env/steps") for r in rows) else "step"
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for key, style in zip(keys, ("-", "o-")):
        pts = [(r[xkey], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, label=key, markersize=4)
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("environment steps" if xkey == "env/steps" else "trainer steps")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = output_dir / CURVE_FILE
    fig.savefig(path)
    return path


def finish_run(trainer: RLTrainer, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every RL recipe does after building its trainer: train (timed), evaluate greedily, save the model,
    draw the learning curve and write ``summary.json``. Returns the summary."""
    cfg = trainer.config
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    metrics = trainer.evaluate()
    out = Path(cfg.output_dir)
    trainer.save_model(out / "model")
    summary: dict[str, Any] = {
        "algorithm": name,
        "env_id": cfg.env_id,
        "seed": cfg.seed,
        "steps": trainer.state.step,
        "env_steps": trainer.num_timesteps,
        "episodes": trainer.episodes,
        "train_seconds": round(seconds, 3),
        "env_steps_per_second": round(trainer.num_timesteps / max(seconds, 1e-9), 1),
        "eval_episodes": cfg.eval_episodes,
        "eval_return_mean": metrics.get("eval/return_mean"),
        "eval_return_std": metrics.get("eval/return_std"),
        "eval": metrics,
        "best_step": trainer.state.best_step if cfg.metric_for_best_model else None,
        **(extra or {}),
    }
    if trainer.accelerator.is_main_process:
        curve = plot_learning_curve(out, title=f"{name} on {cfg.env_id}")
        summary["learning_curve"] = str(curve) if curve else None
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        trainer.record_outputs()
        print(
            f"{name} {cfg.env_id}: greedy return {summary['eval_return_mean']:.1f} +- "
            f"{summary['eval_return_std']:.1f} over {cfg.eval_episodes} episodes after {trainer.num_timesteps} "
            f"environment steps ({seconds:.1f} s, {summary['env_steps_per_second']:.0f} steps/s); "
            f"outputs in {out}"
        )
    return summary


def recipe_config(cls: type[Any], args: Sequence[str] | None, default_config: str | Path, prog: str):
    """``parse_rl_config`` for a recipe: a config error exits with the message (naming the option)."""
    try:
        return parse_rl_config(cls, args, default_config)
    except ConfigError as e:
        sys.exit(f"{prog}: {e}")
