"""Tabular methods on the Trainer base: the table is a module, so checkpoints, resume and logging are the
ones every align trainer has.

Model-free control (Sutton & Barto ch. 5-6): one trainer step is one episode of ``TabularAgent`` (Q-learning,
SARSA, expected SARSA, first- or every-visit Monte Carlo) with linearly decaying epsilon and step size.
There is no optimizer: ``training_step`` is overridden, the ``QTable`` buffers are the model (saved by
accelerate with the checkpoint and as ``model/model.safetensors``), and the agent's generator and counters
are ``extra_state_dict``.

Model-based dynamic programming (ch. 4), for environments whose model is known (FrozenLake, CliffWalking,
Taxi and the project's MDPs, via ``align.rl.mdp.from_toy_text``): one trainer step is one sweep of value
iteration (``v <- max_a [r + gamma P v]``) or one evaluation-plus-improvement of policy iteration. The run
stops when the values have converged (residual below ``dp_tol``) or the policy is stable, and every step
logs the exact value of the current greedy policy, computed by solving its Bellman equation.
"""

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import gymnasium as gym
import torch

from align.config import ConfigError, check_range
from align.rl.common import RLConfig, RLTrainer
from align.rl.envs import make_env
from align.rl.mdp import TabularMDP, from_toy_text
from align.rl.tabular import (
    QTable,
    TabularAgent,
    as_policy_matrix,
    evaluate_policy,
    greedy,
    linear_schedule,
    policy_evaluation_exact,
    q_from_v,
    uniform_policy,
    value_iteration,
)

DP_METHODS = ("value_iteration", "policy_iteration")
MODEL_FREE_METHODS = ("q_learning", "sarsa", "expected_sarsa", "mc_first_visit", "mc_every_visit")


@dataclass
class TabularConfig(RLConfig):
    """Tabular TD / Monte Carlo control, or dynamic programming, on a Discrete environment."""

    output_dir: str = "outputs/tabular"
    """Where metrics.jsonl, config.yaml, checkpoints/, model/ (the Q table), summary.json and the PNG go."""
    env_id: str = "FrozenLake-v1"
    """A tabular environment: FrozenLake-v1, FrozenLake8x8-v1, CliffWalking-v1, Taxi-v4, align/Maze-v0, ..."""
    map_name: str | None = None
    """FrozenLake only: '4x4' or '8x8' (None: the environment's default)."""
    is_slippery: bool | None = None
    """FrozenLake / CliffWalking only: slippery moves (None: the environment's default)."""
    method: Literal[
        "q_learning",
        "sarsa",
        "expected_sarsa",
        "mc_first_visit",
        "mc_every_visit",
        "value_iteration",
        "policy_iteration",
    ] = "q_learning"
    """Learning rule (one episode per step) or dynamic programming method (one sweep per step)."""
    max_steps: int = 10_000
    """Episodes (model-free) or at most this many sweeps / improvements (dynamic programming)."""
    epsilon_start: float = 1.0
    """Epsilon of the epsilon-greedy behaviour at the first episode."""
    epsilon_end: float = 0.05
    """Epsilon after the linear decay."""
    epsilon_decay_fraction: float = 0.5
    """Fraction of max_steps over which epsilon decays linearly."""
    alpha_start: float = 0.1
    """Step size at the first episode; 0 = sample averages 1 / N(s, a) (ignores alpha_end)."""
    alpha_end: float = 0.01
    """Step size at the last episode (linear decay over max_steps)."""
    exploring_starts: bool = False
    """Start episodes from random states and actions (S&B sec. 5.3; the project's own MDPs only)."""
    max_episode_steps: int = 10_000
    """Cut an episode after this many steps (besides the environment's own time limit)."""
    dp_tol: float = 1e-10
    """Dynamic programming stops when the Bellman residual max_s |v_k+1 - v_k| is below this."""
    eval_episodes: int = 1000
    logging_steps: int = 100

    algorithm: ClassVar[str] = "tabular RL"
    discrete_actions_only: ClassVar[bool] = True

    def env_kwargs(self) -> dict[str, Any]:
        options = {"map_name": self.map_name, "is_slippery": self.is_slippery}
        return {k: v for k, v in options.items() if v is not None}

    def validate(self) -> None:
        for name in ("epsilon_start", "epsilon_end", "epsilon_decay_fraction", "alpha_end"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        check_range("alpha_start", self.alpha_start, 0.0, 1.0)
        if self.alpha_start > 0:
            check_range("alpha_end", self.alpha_end, 0.0, 1.0, low_inclusive=False)
        check_range("max_episode_steps", self.max_episode_steps, 1)
        check_range("dp_tol", self.dp_tol, 0.0, low_inclusive=False)
        super().validate()

    def _check_spaces(self, env: gym.Env) -> None:
        super()._check_spaces(env)
        if not isinstance(env.observation_space, gym.spaces.Discrete):
            raise ConfigError(
                f"env_id: tabular methods need a Discrete observation space, but {self.env_id} has "
                f"{env.observation_space}; use DQN or a policy-gradient method"
            )
        if self.method in DP_METHODS:
            try:
                from_toy_text(env, gamma=self.gamma)
            except ValueError as e:
                raise ConfigError(f"method={self.method!r} needs the environment's model: {e}") from None


def success_probability(mdp: TabularMDP, policy: torch.Tensor, horizon: int) -> float:
    """Exact probability that ``policy`` reaches a goal ('G' cell) within ``horizon`` steps from the start
    distribution: push the state distribution through P_pi (terminal states are absorbing)."""
    goals = mdp.cells("G")
    if not goals:
        return float("nan")
    P_pi = torch.einsum("sa,sat->st", as_policy_matrix(policy, mdp.num_actions), mdp.P)
    d = mdp.initial.clone()
    for _ in range(horizon):
        d = d @ P_pi
    return float(d[goals].sum())


class TabularTrainer(RLTrainer):
    """Drives ``TabularAgent`` one episode per step, or dynamic programming one sweep per step."""

    def __init__(self, config: TabularConfig, *, callbacks=None) -> None:
        cfg = config
        self.env = make_env(cfg.env_id, **cfg.env_kwargs())
        S, A = int(self.env.observation_space.n), int(self.env.action_space.n)
        try:
            self.mdp: TabularMDP | None = from_toy_text(self.env, gamma=cfg.gamma)
        except ValueError:
            self.mdp = None
        table = QTable(S, A)
        super().__init__(cfg, table, callbacks=callbacks)
        self.table: QTable = self.accelerator.unwrap_model(self.model)
        self.dp = cfg.method in DP_METHODS
        self.agent: TabularAgent | None = None
        if self.dp:
            self.policy = uniform_policy(S, A)
            self.converged = False
        else:
            decay = max(int(cfg.epsilon_decay_fraction * cfg.max_steps), 1)
            alpha = (
                None
                if cfg.alpha_start == 0
                else linear_schedule(cfg.alpha_start, cfg.alpha_end, cfg.max_steps)
            )
            self.agent = TabularAgent(
                self.table,
                self.env,
                method=cfg.method,
                gamma=cfg.gamma,
                epsilon=linear_schedule(cfg.epsilon_start, cfg.epsilon_end, decay),
                alpha=alpha,
                seed=cfg.seed,
                max_steps=cfg.max_episode_steps,
                exploring_starts=cfg.exploring_starts,
            )
        self._optimal: torch.Tensor | None = None

    # -- one step --------------------------------------------------------------------------------------
    def training_step(self) -> dict[str, float]:
        if self.dp:
            return self._dp_step()
        metrics = self.agent.step(self.state.step)
        self.num_timesteps, self.episodes = self.agent.env_steps, self.agent.episodes
        return metrics

    def _start_value(self, v: torch.Tensor) -> float:
        return float(self.mdp.initial @ v)

    def _policy_start_value(self, policy: torch.Tensor) -> float:
        try:
            return self._start_value(policy_evaluation_exact(self.mdp, policy))
        except ValueError:  # gamma = 1 and the policy never terminates from some state: no finite value
            return float("nan")

    @torch.no_grad()
    def _dp_step(self) -> dict[str, float]:
        mdp, q = self.mdp, self.table.q
        if self.converged:
            return {}
        if self.config.method == "value_iteration":
            v_old = q.amax(-1)
            q_new = q_from_v(mdp, v_old)
            residual = float((q_new.amax(-1) - v_old).abs().max())
            q.copy_(q_new)
            new_policy = greedy(q_new, atol=1e-12)
            changed = int((new_policy != self.policy).any(-1).sum())
            self.policy = new_policy
            self.converged = residual < self.config.dp_tol
        else:  # policy iteration: evaluate the current policy exactly, then improve it greedily
            if self.state.step == 0:
                new_policy, changed = self.policy, mdp.num_states
            else:
                new_policy = greedy(q, atol=1e-12)
                changed = int((new_policy != self.policy).any(-1).sum())
            v_old = q.amax(-1)
            v = policy_evaluation_exact(mdp, new_policy)
            q.copy_(q_from_v(mdp, v))
            residual = float((q.amax(-1) - v_old).abs().max())
            self.converged = self.state.step > 0 and (changed == 0 or residual <= 1e-12)
            self.policy = new_policy
        if self.converged:
            # Stop the loop after this step: it ends when state.step reaches max_steps.
            self.config.max_steps = self.state.step + 1
        return {
            "dp/residual": residual,
            "dp/policy_changes": float(changed),
            "dp/converged": float(self.converged),
            "value/start": self._start_value(q.amax(-1)),
            "policy/value_start": self._policy_start_value(greedy(q, atol=1e-12)),
        }

    # -- evaluation ------------------------------------------------------------------------------------
    def greedy_action(self, obs: Any) -> int:
        return int(self.table.greedy_policy()[int(obs)].argmax())

    def optimal_values(self) -> torch.Tensor | None:
        """v* by value iteration (exact to ``dp_tol``), when the environment has a model."""
        if self.mdp is None:
            return None
        if self._optimal is None:
            self._optimal = value_iteration(self.mdp, tol=self.config.dp_tol)[0]
        return self._optimal

    def evaluate(self) -> dict[str, float]:
        """Greedy episodes (return mean/std, success rate) and, with a model, exact values of the greedy
        policy: ``eval/value_start`` (v_pi from the start distribution), ``eval/optimal_value_start`` (v*),
        ``eval/success_exact`` (goal within the time limit)."""
        cfg = self.config
        if self._eval_env is None:
            self._eval_env = make_env(cfg.env_id, **cfg.env_kwargs())
        pi = self.table.greedy_policy()
        mean, std, success = evaluate_policy(
            self._eval_env,
            pi,
            episodes=cfg.eval_episodes,
            seed=cfg.eval_seed,
            max_steps=cfg.max_episode_steps,
        )
        out = {"eval/return_mean": mean, "eval/return_std": std, "eval/success_rate": success}
        if self.mdp is not None:
            out["eval/value_start"] = self._policy_start_value(pi)
            out["eval/optimal_value_start"] = self._start_value(self.optimal_values())
            horizon = getattr(self._eval_env.spec, "max_episode_steps", None) or cfg.max_episode_steps
            out["eval/success_exact"] = success_probability(self.mdp, pi, min(horizon, cfg.max_episode_steps))
        return out

    def policy_map(self) -> str:
        """The greedy policy as arrows and max_a Q as numbers (grid worlds), as in the textbook's figures."""
        from align.rl.render import policy_map

        return policy_map(self.mdp, self.table.greedy_policy(), values=self.table.values())

    # -- checkpoint ------------------------------------------------------------------------------------
    def extra_state_dict(self) -> dict[str, Any]:
        if self.dp:
            return {"policy": self.policy.clone(), "converged": self.converged}
        return {"agent": self.agent.state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        if self.dp:
            self.policy, self.converged = state["policy"].clone(), bool(state["converged"])
        else:
            self.agent.load_state_dict(state["agent"])
