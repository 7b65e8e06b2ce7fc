r"""Decision Transformer: offline RL as return-conditioned sequence modelling (Chen et al. 2021).

A trajectory is the token sequence ``(R_1, s_1, a_1, R_2, s_2, a_2, ...)`` with the return-to-go
``R_t = sum_{t' >= t} r_{t'}`` (``align.rl.offline_data.returns_to_go``). A causal transformer reads the
last K steps (3K tokens) and predicts ``a_t`` from the output at the token of ``s_t``, which has seen
``R_1, s_1, a_1, ..., R_t, s_t`` but not ``a_t``:

    L = mean_{t: mask_t = 1} -log p(a_t | R_{<=t}, s_{<=t}, a_{<t})      discrete actions (cross-entropy)
    L = mean_{t: mask_t = 1} ||a_t - a_hat_t||^2 / A                    continuous actions (squared error)

This is the supervised next-token objective of SFT, over (return, state, action) tokens instead of words:
the discrete case calls ``align.losses.sft_loss``. The network is transformers' ``DecisionTransformerModel``
(a GPT-2 with embeddings of return, state, action and timestep; the timestep embedding replaces positions);
nothing of it is reimplemented here.

At test time the model is conditioned on a target return ``R_1 = target``; after each step the return-to-go
drops by the reward received (``R_{t+1} = R_t - r_t``), and only the last K steps are kept
(``ReturnConditionedContext``). ``evaluate_targets`` reports the achieved return for several targets, the
paper's Figure 4. The baseline on the same data is behaviour cloning with an MLP (``BCTrainer``), and the
dataset's mean and best episode return.

Training is the shared ``Trainer`` loop over K-step windows of length-weighted episodes
(``sample_subsequences``); the window sampler's generator is checkpointed, so resume is exact.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from align.config import ConfigError, check_range
from align.losses import sft_loss
from align.models import eval_mode
from align.rl.common import SUMMARY_FILE, RLConfig, RLTrainer, mlp, torch_threads
from align.rl.envs import make_env
from align.rl.offline_data import (
    SequenceData,
    check_context_length,
    dataset_summary_line,
    encode_states,
    ensure_offline_dataset,
    prepare_sequences,
    sample_subsequences,
)
from align.rl.offline_dataset import OfflineDataset, load_offline_dataset
from align.trainer import METRICS_FILE, Callback, Trainer, read_metrics

META_FILE = "dt_meta.json"
TARGET_FIGURE = "return_vs_target.png"
CURVE_FILE = "learning_curve.png"


@dataclass
class DTConfig(RLConfig):
    """Decision Transformer on an offline dataset, its behaviour-cloning baseline, and the evaluation."""

    output_dir: str = "outputs/dt_cartpole"
    """Where metrics.jsonl, config.yaml, model/, bc/, summary.json and the two figures go."""
    dataset: Literal["random", "medium", "medium-replay", "medium-expert", "expert"] = "medium-replay"
    """Which generated dataset to train on (align.rl.offline_data). Ignored when dataset_path is set."""
    dataset_path: str | None = None
    """A dataset file (.parquet or .jsonl, one episode per row, as data/make_offline_rl.py writes) to use
    instead of a generated one."""
    dataset_seed: int = 0
    """Seed of the generated dataset (the data are a function of env_id, dataset, dataset_seed, dataset_steps)."""
    dataset_steps: int = 0
    """Environment steps per generated dataset part; 0 = the default for the environment (50,000 on CartPole)."""
    data_source: Literal["controller", "ppo"] = "controller"
    """Behaviour policy of the generated dataset: 'controller' (the project's expert plus random-action
    noise) or 'ppo' (the project's PPO's snapshots, CartPole-v1 only, cached). Ignored with dataset_path."""
    data_dir: str | None = None
    """Cache folder of generated datasets (default: $ALIGN_CACHE_DIR/offline_rl, else ~/.cache/align/offline_rl)."""
    context_length: int = 20
    """K, the number of (R, s, a) steps the transformer sees (3K tokens). At most the longest episode."""
    hidden_size: int = 128
    """Width of the embeddings and of the GPT-2 blocks."""
    n_layer: int = 3
    """GPT-2 blocks."""
    n_head: int = 1
    """Attention heads per block (hidden_size must be a multiple)."""
    dropout: float = 0.1
    """Dropout on embeddings, attention and residuals (0.1 in Chen et al.)."""
    max_ep_len: int = 1000
    """Size of the timestep embedding; later timesteps share the last entry."""
    return_scale: float = 0.0
    """Divide returns-to-go by this before embedding them (Chen et al. use 1000 on MuJoCo); 0 = the largest
    absolute episode return in the dataset, so the data's returns lie in [-1, 1]."""
    normalize_states: bool = True
    """Normalise Box observations by the dataset's per-feature mean and std (Discrete ones are one-hot)."""
    target_returns: list[float] = field(default_factory=lambda: [100.0, 250.0, 500.0])
    """Returns to condition on in evaluation; those above the dataset's best are allowed (with a warning)."""
    eval_sample_actions: bool = True
    """Discrete actions: sample from the predicted distribution, as the paper's Atari evaluation does
    (argmax would collapse a return-conditioned mixture of behaviours); False: argmax. BC uses the same rule."""
    bc_max_steps: int = 2000
    """Optimizer steps of the behaviour-cloning baseline (an MLP on the same data); 0 skips it."""
    bc_hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden widths of the BC MLP (ReLU)."""
    bc_learning_rate: float = 1e-3
    """AdamW learning rate of the BC baseline."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate (1e-4 in Chen et al.)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (1e-4 in Chen et al.)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up steps (Chen et al. warm up for 10,000 of 100,000 steps)."""
    max_grad_norm: float = 0.25
    """Gradient-norm clipping (0.25 in Chen et al.)."""
    per_device_train_batch_size: int = 64
    """Windows of K steps per micro-batch."""
    max_steps: int = 2000
    """Optimizer steps."""
    eval_episodes: int = 20
    """Episodes per target return (run side by side, one batched forward per step)."""
    logging_steps: int = 50

    algorithm: ClassVar[str] = "Decision Transformer"

    def validate(self) -> None:
        check_range("dataset_steps", self.dataset_steps, 0)
        check_range("context_length", self.context_length, 1)
        check_range("hidden_size", self.hidden_size, 1)
        check_range("n_layer", self.n_layer, 1)
        check_range("n_head", self.n_head, 1)
        if self.hidden_size % self.n_head:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of n_head ({self.n_head})"
            )
        check_range("dropout", self.dropout, 0.0, 1.0, high_inclusive=False)
        check_range("max_ep_len", self.max_ep_len, 1)
        check_range("return_scale", self.return_scale, 0.0)
        check_range("bc_max_steps", self.bc_max_steps, 0)
        check_range("bc_learning_rate", self.bc_learning_rate, 0.0)
        if not self.target_returns:
            raise ConfigError("target_returns must hold at least one return to condition on")
        if not all(math.isfinite(t) for t in self.target_returns):
            raise ConfigError(f"target_returns must be finite numbers, got {self.target_returns}")
        if not self.bc_hidden_sizes or min(self.bc_hidden_sizes) < 1:
            raise ConfigError(
                f"bc_hidden_sizes must be a non-empty list of positive widths, got {self.bc_hidden_sizes}"
            )
        if self.dataset_path == "":
            self.dataset_path = None
        super().validate()

    def resolve_dataset_path(self) -> Path:
        """``dataset_path``, or the generated dataset's cache path (generating it on first use)."""
        if self.dataset_path:
            return Path(self.dataset_path)
        return ensure_offline_dataset(
            self.env_id,
            self.dataset,
            seed=self.dataset_seed,
            steps=self.dataset_steps or None,
            cache_dir=self.data_dir,
            env_kwargs=self.env_kwargs(),
            source=self.data_source,
        )


# --------------------------------------------------------------------------------------------------
# Model, forward and loss
# --------------------------------------------------------------------------------------------------


def build_dt_model(cfg: DTConfig, state_dim: int, act_dim: int, *, discrete: bool) -> nn.Module:
    """transformers' ``DecisionTransformerModel`` sized by the config: ``state_dim`` inputs, ``act_dim``
    outputs (logits for discrete actions; a linear head, no tanh, for continuous ones)."""
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    hf = DecisionTransformerConfig(
        state_dim=int(state_dim),
        act_dim=int(act_dim),
        hidden_size=cfg.hidden_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.hidden_size,
        activation_function="relu",  # as Chen et al.'s gym code
        max_ep_len=cfg.max_ep_len,
        n_positions=3 * cfg.context_length,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        action_tanh=False,
        # GPT-2's token ids mean nothing here (there is no vocabulary); None keeps the config check quiet.
        bos_token_id=None,
        eos_token_id=None,
    )
    return DecisionTransformerModel(hf)


def action_inputs(actions: torch.Tensor, mask: torch.Tensor, *, discrete: bool, act_dim: int) -> torch.Tensor:
    """Action tokens for the model, ``(B, K, A)``: one-hot for discrete labels ``(B, K)``; zero at padding."""
    a = F.one_hot(actions.long(), act_dim).float() if discrete else actions.float()
    return a * mask.unsqueeze(-1).to(a.dtype)


def dt_forward(
    model: nn.Module,
    states: torch.Tensor,
    actions: torch.Tensor,
    returns_to_go: torch.Tensor,
    timesteps: torch.Tensor,
    mask: torch.Tensor,
    *,
    discrete: bool,
    act_dim: int,
) -> torch.Tensor:
    """Action predictions ``(B, K, A)`` of a ``DecisionTransformerModel``: position t is read at the token of
    ``s_t`` (transformers' ``action_preds``), so it depends on ``R_{<=t}, s_{<=t}, a_{<t}`` and not on ``a_t``.

    Args: ``states`` (B, K, S); ``actions`` (B, K) labels or (B, K, A); ``returns_to_go`` (B, K, 1) (already
    scaled); ``timesteps`` (B, K) int; ``mask`` (B, K), 1 = a real step, 0 = left padding.
    """
    out = model(
        states=states,
        actions=action_inputs(actions, mask, discrete=discrete, act_dim=act_dim),
        returns_to_go=returns_to_go,
        timesteps=timesteps.long(),
        attention_mask=mask.long(),
        return_dict=True,
    )
    return out.action_preds


def dt_action_loss(
    action_preds: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, *, discrete: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The Decision Transformer's loss (module docstring) over the steps where ``mask`` ``(B, K)`` is 1.

    ``action_preds`` ``(B, K, A)``: logits (discrete) or actions; ``actions``: ``(B, K)`` labels or
    ``(B, K, A)``. Discrete: ``align.losses.sft_loss``, token mean. Continuous: Chen et al.'s MSE.
    """
    m = mask.bool()
    steps = m.sum().to(action_preds.dtype)
    if discrete:
        loss, _ = sft_loss(action_preds, actions.long(), mask, aggregation="token")
        with torch.no_grad():
            hit = (action_preds.argmax(-1) == actions.long()) & m
            acc = hit.sum().to(action_preds.dtype) / steps.clamp(min=1)
        metrics = {"loss/action": loss.detach(), "action/accuracy": acc, "action/steps": steps.detach()}
        return loss, metrics
    per_step = (action_preds - actions.to(action_preds.dtype)).pow(2).mean(-1)
    loss = (per_step * m).sum() / steps.clamp(min=1)
    return loss, {"loss/action": loss.detach(), "action/steps": steps.detach()}


# --------------------------------------------------------------------------------------------------
# Evaluation: return-conditioned rollouts
# --------------------------------------------------------------------------------------------------


class ReturnConditionedContext:
    """The model's input during one evaluation episode: the last K (R_t, s_t, a_t, t), left-padded.

    ``observe(state)`` opens step t with the current return-to-go; ``inputs()`` gives the window whose last
    action slot is a placeholder (zeros: the prediction there does not see it); ``record(action, reward)``
    fills it and lowers the return-to-go by the reward, ``R_{t+1} = R_t - r_t`` (Chen et al., Algorithm 1).
    Returns-to-go are kept in raw units and divided by ``return_scale`` when handed to the model.
    """

    def __init__(
        self,
        context_length: int,
        state_dim: int,
        target_return: float,
        *,
        return_scale: float,
        discrete: bool,
        act_dim: int,
        max_timestep: int,
    ) -> None:
        self.K, self.state_dim, self.act_dim = int(context_length), int(state_dim), int(act_dim)
        self.return_to_go = float(target_return)
        self.return_scale, self.discrete, self.max_timestep = float(return_scale), discrete, int(max_timestep)
        self.t = 0
        self.states: list[np.ndarray] = []
        self.actions: list[Any] = []
        self.rtgs: list[float] = []
        self.timesteps: list[int] = []

    def observe(self, state: np.ndarray) -> None:
        """Start step t with encoded state ``(S,)``; drop the oldest step beyond K."""
        self.states.append(np.asarray(state, dtype=np.float32))
        self.actions.append(0 if self.discrete else np.zeros(self.act_dim, np.float32))
        self.rtgs.append(self.return_to_go)
        self.timesteps.append(min(self.t, self.max_timestep - 1))
        if len(self.states) > self.K:
            del self.states[0], self.actions[0], self.rtgs[0], self.timesteps[0]

    def record(self, action: Any, reward: float) -> None:
        """Close step t: store ``a_t`` and set ``R_{t+1} = R_t - r_t``."""
        self.actions[-1] = action
        self.return_to_go -= float(reward)
        self.t += 1

    def inputs(self) -> dict[str, np.ndarray]:
        """``states`` (K, S), ``actions`` (K,) or (K, A), ``returns_to_go`` (K, 1) scaled, ``timesteps`` (K,),
        ``mask`` (K,), left-padded like the training windows."""
        K, n = self.K, len(self.states)
        states = np.zeros((K, self.state_dim), np.float32)
        actions = np.zeros(K, np.int64) if self.discrete else np.zeros((K, self.act_dim), np.float32)
        rtg = np.zeros((K, 1), np.float32)
        ts = np.zeros(K, np.int64)
        mask = np.zeros(K, np.float32)
        if n:
            states[K - n :] = np.stack(self.states)
            actions[K - n :] = np.asarray(self.actions)
            rtg[K - n :, 0] = np.asarray(self.rtgs, np.float32) / self.return_scale
            ts[K - n :] = self.timesteps
            mask[K - n :] = 1.0
        return {"states": states, "actions": actions, "returns_to_go": rtg, "timesteps": ts, "mask": mask}


Predictor = Callable[[dict[str, torch.Tensor]], torch.Tensor]
"""Batched windows ``(n, K, ...)`` -> predictions for the last step ``(n, A)`` (logits or actions)."""


@torch.no_grad()
def rollout_episodes(
    env_id: str,
    predict: Predictor,
    data: SequenceData,
    *,
    target_return: float,
    context_length: int,
    episodes: int,
    seed: int,
    num_states: int | None,
    sample: bool,
    generator: torch.Generator | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> tuple[list[float], list[int]]:
    """Play ``episodes`` episodes side by side (episode i reset with ``seed + i``), one batched forward per
    step, each conditioned on ``target_return`` (``ReturnConditionedContext``). Returns (returns, lengths)."""
    envs = [make_env(env_id, **(env_kwargs or {})) for _ in range(episodes)]
    space = envs[0].action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    state_dim = data.states[0].shape[1]
    ctx = [
        ReturnConditionedContext(
            context_length,
            state_dim,
            target_return,
            return_scale=data.return_scale,
            discrete=discrete,
            act_dim=data.act_dim,
            max_timestep=data.max_timestep,
        )
        for _ in range(episodes)
    ]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    returns, lengths = [0.0] * episodes, [0] * episodes
    active = list(range(episodes))
    while active:
        enc = encode_states(np.asarray([obs[i] for i in active]), data.state_mean, data.state_std, num_states)
        for j, i in enumerate(active):
            ctx[i].observe(enc[j])
        windows = [ctx[i].inputs() for i in active]
        batch = {k: torch.from_numpy(np.stack([w[k] for w in windows])) for k in windows[0]}
        acts_np = _actions(predict(batch).float(), space, sample, generator)
        still = []
        for j, i in enumerate(active):
            a = int(acts_np[j]) if discrete else acts_np[j]
            obs[i], r, terminated, truncated, _ = envs[i].step(a)
            ctx[i].record(a, float(r))
            returns[i] += float(r)
            lengths[i] += 1
            if not (terminated or truncated):
                still.append(i)
        active = still
    for env in envs:
        env.close()
    return returns, lengths


def _actions(preds: torch.Tensor, space: gym.Space, sample: bool, generator: torch.Generator | None) -> Any:
    """Actions ``(n,)`` from predictions ``(n, A)``: sampled from ``softmax(logits)`` or the argmax for a
    Discrete space, the prediction clipped to the bounds for a Box."""
    if not isinstance(space, gym.spaces.Discrete):
        return np.clip(preds.numpy(), space.low, space.high)
    if sample:
        return torch.multinomial(torch.softmax(preds, -1), 1, generator=generator).squeeze(-1).numpy()
    return preds.argmax(-1).numpy()


def warn_unreached_targets(targets: list[float], best_return: float, source: str) -> list[float]:
    """Warn about (and return) the targets above the best episode return in the data: allowed, since
    probing them is part of the evaluation, but the model never saw such a return-to-go."""
    above = [t for t in targets if t > best_return]
    if above:
        warnings.warn(
            f"target return(s) {above} exceed the best episode return in {source} ({best_return:g}); the model "
            "never saw such a return-to-go, so conditioning on them extrapolates (Chen et al., sec. 5.3)",
            stacklevel=2,
        )
    return above


# --------------------------------------------------------------------------------------------------
# Trainers
# --------------------------------------------------------------------------------------------------


class _OfflineTrainer(RLTrainer):
    """What the DT and BC trainers share: the dataset, its spaces, window sampling, resume state."""

    progress_keys = ("loss", "action/accuracy", "eval/return_mean")

    def __init__(
        self,
        config: DTConfig,
        dataset: OfflineDataset | None = None,
        *,
        callbacks: list[Callback] | None = None,
    ) -> None:
        cfg = config
        env = make_env(cfg.env_id, **cfg.env_kwargs())
        self.dataset = (
            dataset if dataset is not None else load_offline_dataset(cfg.resolve_dataset_path(), env)
        )
        obs_space, act_space = env.observation_space, env.action_space
        env.close()
        self.num_states = int(obs_space.n) if isinstance(obs_space, gym.spaces.Discrete) else None
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        self.act_dim = int(act_space.n) if self.discrete else int(np.prod(act_space.shape))
        if self.dataset.discrete_actions != self.discrete:
            raise ValueError(
                f"{self.dataset.path}: the dataset has {'discrete' if self.dataset.discrete_actions else 'continuous'}"
                f" actions but {cfg.env_id}'s are {'discrete' if self.discrete else 'continuous'}"
            )
        best = float(np.abs(self.dataset.returns).max())
        scale = cfg.return_scale or (best if best > 0 else 1.0)
        self.data = prepare_sequences(
            self.dataset,
            num_states=self.num_states,
            act_dim=self.act_dim,
            return_scale=scale,
            normalize_states=cfg.normalize_states,
            max_timestep=cfg.max_ep_len,
        )
        self.state_dim = self.data.states[0].shape[1]
        torch.manual_seed(cfg.seed)
        super().__init__(cfg, self.build_model(cfg), callbacks=callbacks)
        # Windows are drawn from this generator; it is checkpointed, so a resumed run draws the same ones.
        self.rng = np.random.default_rng(cfg.seed)
        self.eval_generator = torch.Generator()

    def log(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        """``Trainer.log`` without ``RLTrainer``'s ``env/*`` counters: offline training takes no env steps."""
        return Trainer.log(self, extra)

    def extra_state_dict(self) -> dict[str, Any]:
        """The window sampler's RNG state, so that a resumed run draws the same windows as an unbroken one."""
        return {"rng": self.rng.bit_generator.state}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def num_items(self, batch: dict[str, torch.Tensor]) -> int:
        """Real (unpadded) steps: the loss is a mean over them, so micro-batches weigh by their steps."""
        return int(batch["mask"].sum().item())

    def build_model(self, cfg: DTConfig) -> nn.Module:
        """The model, built once the data are prepared: its sizes come from the dataset and the spaces."""
        raise NotImplementedError

    def predictor(self) -> Predictor:
        """The ``Predictor`` evaluation calls; each model reads the window differently."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate_targets(
        self, targets: list[float], *, episodes: int | None = None, sample: bool | None = None
    ) -> dict[str, dict[str, float]]:
        """Mean / std (population) return and mean length for each target: ``{target: {...}}``."""
        cfg = self.config
        out: dict[str, dict[str, float]] = {}
        with eval_mode(self.model), torch_threads(cfg.torch_threads):
            for k, target in enumerate(targets):
                self.eval_generator.manual_seed(cfg.eval_seed + k)
                rets, lens = rollout_episodes(
                    cfg.env_id,
                    self.predictor(),
                    self.data,
                    target_return=target,
                    context_length=self.context_length,
                    episodes=episodes or cfg.eval_episodes,
                    seed=cfg.eval_seed,
                    num_states=self.num_states,
                    sample=cfg.eval_sample_actions if sample is None else sample,
                    generator=self.eval_generator,
                    env_kwargs=cfg.env_kwargs(),
                )
                out[f"{target:g}"] = {
                    "target": float(target),
                    "return_mean": float(np.mean(rets)),
                    "return_std": float(np.std(rets)),
                    "length_mean": float(np.mean(lens)),
                }
        return out

    def _batch_to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dev = self.accelerator.device
        return {k: v.to(dev) for k, v in batch.items()}


class DecisionTransformerTrainer(_OfflineTrainer):
    """Trains transformers' ``DecisionTransformerModel`` on K-step windows of an offline dataset."""

    def build_model(self, cfg: DTConfig) -> nn.Module:
        self.context_length = cfg.context_length
        check_context_length(self.dataset, cfg.context_length)
        return build_dt_model(cfg, self.state_dim, self.act_dim, discrete=self.discrete)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """Left-padded windows of K steps (``sample_subsequences``) on the device: states ``(B, K, S)``,
        actions ``(B, K)`` or ``(B, K, A)``, returns_to_go ``(B, K, 1)``, timesteps and mask ``(B, K)``."""
        cfg = self.config
        return self._batch_to_device(
            sample_subsequences(self.data, cfg.per_device_train_batch_size, cfg.context_length, self.rng)
        )

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """``dt_action_loss`` at every real step of the windows (Chen et al. train on all K predictions)."""
        preds = dt_forward(self.model, **batch, discrete=self.discrete, act_dim=self.act_dim)
        return dt_action_loss(preds, batch["actions"], batch["mask"], discrete=self.discrete)

    def predictor(self) -> Predictor:
        model, dev = self.model, self.accelerator.device

        def predict(b: dict[str, torch.Tensor]) -> torch.Tensor:
            b = {k: v.to(dev) for k, v in b.items()}
            preds = dt_forward(model, **b, discrete=self.discrete, act_dim=self.act_dim)
            return preds[:, -1].cpu()  # the newest step (left padding puts it last)

        return predict

    def evaluate(self) -> dict[str, float]:
        """Roll out at each of ``target_returns``: ``eval/target_<R>/return_{mean,std}``, and
        ``eval/return_{mean,std}`` at the highest target (the one the progress bar shows)."""
        res = self.evaluate_targets(self.config.target_returns)
        out: dict[str, float] = {}
        for key, r in res.items():
            out[f"eval/target_{key}/return_mean"] = r["return_mean"]
            out[f"eval/target_{key}/return_std"] = r["return_std"]
        top = max(res.values(), key=lambda r: r["target"])
        out["eval/return_mean"] = top["return_mean"]
        out["eval/return_std"] = top["return_std"]
        return out

    def save_model(self, path: str | Path) -> Path:
        """``save_pretrained`` plus ``dt_meta.json``: what evaluation needs besides the weights."""
        path = Trainer.save_model(self, path)
        if self.accelerator.is_main_process:
            meta = {
                "env_id": self.config.env_id,
                "context_length": self.context_length,
                "discrete": self.discrete,
                "act_dim": self.act_dim,
                "num_states": self.num_states,
                "state_mean": self.data.state_mean.tolist(),
                "state_std": self.data.state_std.tolist(),
                "return_scale": self.data.return_scale,
                "max_timestep": self.data.max_timestep,
                "dataset": self.dataset.path,
            }
            (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return path


class BCTrainer(_OfflineTrainer):
    """Behaviour cloning on the same data: an MLP from the (normalised) state to the action, trained on
    uniformly sampled steps with the same loss (``dt_action_loss`` with K = 1). Config fields ``bc_*`` set its
    size, steps and learning rate (``bc_config``)."""

    context_length = 1

    def build_model(self, cfg: DTConfig) -> nn.Module:
        self._flat_states = torch.from_numpy(np.concatenate(self.data.states))
        self._flat_actions = torch.from_numpy(np.concatenate(self.data.actions))
        return mlp([self.state_dim, *cfg.bc_hidden_sizes, self.act_dim], "relu")

    def next_batch(self) -> dict[str, torch.Tensor]:
        """Single steps drawn uniformly from all episodes: states ``(B, S)``, actions ``(B,)`` or ``(B, A)``."""
        idx = torch.from_numpy(
            self.rng.integers(len(self._flat_actions), size=self.config.per_device_train_batch_size)
        )
        return self._batch_to_device({"states": self._flat_states[idx], "actions": self._flat_actions[idx]})

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """``dt_action_loss`` on windows of one step: DT and BC differ in what they condition on only."""
        preds = self.model(batch["states"]).unsqueeze(1)  # (B, 1, A): a window of one step
        actions = batch["actions"].unsqueeze(1)
        mask = torch.ones(actions.shape[:2], device=preds.device)
        return dt_action_loss(preds, actions, mask, discrete=self.discrete)

    def num_items(self, batch: dict[str, torch.Tensor]) -> int | None:
        """``None``: no padding, so micro-batches weigh the same."""
        return None

    def predictor(self) -> Predictor:
        """The MLP's prediction ``(n, A)`` from each window's newest state alone."""
        model, dev = self.model, self.accelerator.device
        return lambda b: model(b["states"][:, -1].to(dev)).cpu()


def bc_config(cfg: DTConfig) -> DTConfig:
    """The BC baseline's config: ``output_dir/bc``, ``bc_max_steps`` at ``bc_learning_rate``, no warm-up, no
    checkpoints; always rerun from scratch (it takes seconds)."""
    return replace(
        cfg,
        output_dir=str(Path(cfg.output_dir) / "bc"),
        max_steps=cfg.bc_max_steps,
        learning_rate=cfg.bc_learning_rate,
        warmup_steps=0,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        save_steps=0,
        eval_steps=0,
        resume_from_checkpoint=None,
        overwrite_output_dir=True,
        report_to=[],
    )


# --------------------------------------------------------------------------------------------------
# The run: train DT and BC, evaluate, write the outputs
# --------------------------------------------------------------------------------------------------


def plot_return_vs_target(summary: dict[str, Any], path: str | Path) -> Path:
    """The paper's Figure 4: achieved return (mean +- std) against the target return, with the y = x line,
    the BC baseline and the dataset's mean and best returns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rows = sorted(summary["dt"].values(), key=lambda r: r["target"])
    xs = [r["target"] for r in rows]
    ax.errorbar(
        xs,
        [r["return_mean"] for r in rows],
        yerr=[r["return_std"] for r in rows],
        fmt="o-",
        capsize=3,
        label="Decision Transformer",
    )
    ax.plot(xs, xs, "k:", label="target (oracle)")
    ds = summary["dataset"]
    ax.axhline(ds["return_mean"], color="gray", ls="--", label="dataset mean")
    ax.axhline(ds["return_max"], color="gray", ls="-.", label="dataset best")
    if summary.get("bc"):
        ax.axhline(summary["bc"]["return_mean"], color="tab:orange", label="behaviour cloning")
    ax.set_xlabel("target return")
    ax.set_ylabel("achieved return")
    ax.set_title(f"{summary['env_id']} {ds.get('kind', '')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_loss_curve(output_dir: str | Path, title: str) -> Path | None:
    """``loss/action`` (and ``eval/return_mean`` when logged, on a second axis) against trainer steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    if not (output_dir / METRICS_FILE).exists():
        return None
    rows = read_metrics(output_dir)
    pts = [(r["step"], r["loss/action"]) for r in rows if isinstance(r.get("loss/action"), (int, float))]
    if not pts:
        return None
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(*zip(*pts), label="loss/action")
    ax.set_xlabel("trainer steps")
    ax.set_ylabel("action loss")
    ax.grid(alpha=0.3)
    ev = [
        (r["step"], r["eval/return_mean"])
        for r in rows
        if isinstance(r.get("eval/return_mean"), (int, float))
    ]
    if ev:
        ax2 = ax.twinx()
        ax2.plot(*zip(*ev), "o-", color="tab:green", label="eval/return_mean (highest target)")
        ax2.set_ylabel("return")
    ax.set_title(title)
    fig.tight_layout()
    path = output_dir / CURVE_FILE
    fig.savefig(path)
    return path


def run_decision_transformer(cfg: DTConfig) -> dict[str, Any]:
    """Train the Decision Transformer, evaluate it at every target return, train and evaluate the BC
    baseline on the same data, and write ``summary.json`` and the figures. Returns the summary."""
    dt = DecisionTransformerTrainer(cfg)
    stats = dt.dataset.stats()
    main = dt.accelerator.is_main_process
    if main:
        print(f"dataset {dt.dataset.path}: {dataset_summary_line(stats)}")
    above = warn_unreached_targets(cfg.target_returns, stats["return_max"], dt.dataset.path)
    t0 = time.perf_counter()
    dt.train()
    dt_seconds = time.perf_counter() - t0
    out = Path(cfg.output_dir)
    dt.save_model(out / "model")
    t0 = time.perf_counter()
    dt_eval = dt.evaluate_targets(cfg.target_returns)
    eval_seconds = time.perf_counter() - t0
    # Argmax at the highest target as well: on data whose noise is independent of the state (a noisy
    # expert), the argmax of any fitted policy recovers the expert, which sampling does not.
    dt_greedy = (
        next(iter(dt.evaluate_targets([max(cfg.target_returns)], sample=False).values()))
        if dt.discrete and cfg.eval_sample_actions
        else None
    )
    summary: dict[str, Any] = {
        "algorithm": "Decision Transformer",
        "env_id": cfg.env_id,
        "dataset_path": dt.dataset.path,
        "dataset": stats,
        "seed": cfg.seed,
        "steps": dt.state.step,
        "context_length": cfg.context_length,
        "return_scale": dt.data.return_scale,
        "action_selection": "sample" if (cfg.eval_sample_actions and dt.discrete) else "argmax/mean",
        "eval_episodes": cfg.eval_episodes,
        "targets_above_data": above,
        "dt": dt_eval,
        "dt_greedy": dt_greedy,
        "train_seconds": round(dt_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
    }
    if cfg.bc_max_steps:
        bc = BCTrainer(bc_config(cfg), dataset=dt.dataset)
        t0 = time.perf_counter()
        bc.train()
        summary["bc_train_seconds"] = round(time.perf_counter() - t0, 2)
        bc.save_model(Path(bc.config.output_dir) / "model")
        # BC ignores the target; one "target" entry holds its returns.
        summary["bc"] = next(iter(bc.evaluate_targets([0.0]).values()))
        if bc.discrete:
            summary["bc_greedy"] = next(iter(bc.evaluate_targets([0.0], sample=False).values()))
    if main:
        summary["learning_curve"] = str(plot_loss_curve(out, f"Decision Transformer on {cfg.env_id}"))
        summary["return_vs_target"] = str(plot_return_vs_target(summary, out / TARGET_FIGURE))
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        print(format_table(summary))
        print(f"outputs in {out}")
    dt.record_outputs()
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The paper's table row as Markdown: dataset | DT at each target | BC | dataset mean | dataset best."""
    ds = summary["dataset"]
    dt = sorted(summary["dt"].values(), key=lambda r: r["target"])
    # Two decimals for small returns (FrozenLake's are success rates), one otherwise.
    nd = 2 if abs(ds["return_max"]) < 10 else 1
    head = ["dataset", *[f"DT (target {r['target']:g})" for r in dt], "BC", "dataset mean", "dataset best"]
    bc = summary.get("bc")
    cells = [
        f"{summary['env_id']} {ds.get('kind', Path(summary['dataset_path']).stem)}",
        *[f"{r['return_mean']:.{nd}f} ± {r['return_std']:.{nd}f}" for r in dt],
        f"{bc['return_mean']:.{nd}f} ± {bc['return_std']:.{nd}f}" if bc else "-",
        f"{ds['return_mean']:.{nd}f}",
        f"{ds['return_max']:.{nd}f}",
    ]
    return "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n| " + " | ".join(cells) + " |"


__all__ = [
    "BCTrainer",
    "DTConfig",
    "DecisionTransformerTrainer",
    "ReturnConditionedContext",
    "action_inputs",
    "bc_config",
    "build_dt_model",
    "dt_action_loss",
    "dt_forward",
    "format_table",
    "plot_return_vs_target",
    "rollout_episodes",
    "run_decision_transformer",
    "warn_unreached_targets",
]
