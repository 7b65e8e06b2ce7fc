"""Classic-RL trainers (align.rl.dqn, align.rl.policy_gradient, align.rl.tabular_trainer, align.rl.common):
hand-computed losses and targets, the shared advantage functions on real rollouts, environment checkpoints,
config errors. Tiny budgets: the whole file runs in seconds."""

import math

import numpy as np
import pytest
import torch

from align.advantages import discounted_returns, gae
from align.config import ConfigError
from align.rl.common import (
    ActorCritic,
    EpisodeTracker,
    env_state_dict,
    gaussian_logprob_entropy,
    load_env_state_dict,
    parse_rl_config,
)
from align.rl.dqn import DQNConfig, DQNTrainer, ReplayBuffer, dqn_loss
from align.rl.envs import make_env, make_vec_env
from align.rl.mdp import from_toy_text
from align.rl.policy_gradient import (
    A2CConfig,
    A2CTrainer,
    PPOConfig,
    PPOTrainer,
    ReinforceConfig,
    ReinforceTrainer,
    nstep_advantages,
)
from align.rl.tabular import policy_iteration, value_iteration
from align.rl.tabular_trainer import TabularConfig, TabularTrainer, success_probability
from tests.support import reset_accelerate_state

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _common(tmp_path, name="run"):
    return {"output_dir": str(tmp_path / name), "disable_progress_bar": True, "logging_steps": 1}


# ------------------------------------------------------------------------------------------- DQN


def test_dqn_loss_targets_by_hand():
    q_values = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]], requires_grad=True)
    actions = torch.tensor([1, 0, 0])
    rewards = torch.tensor([1.0, 0.0, 2.0])
    terminated = torch.tensor([0.0, 1.0, 0.0])
    next_q_target = torch.tensor([[4.0, 10.0], [7.0, 7.0], [1.0, 0.0]])
    # DQN: max_a' Q_target(s', a'): 10, (terminal), 1 -> targets 1 + 0.5 * 10 = 6, 0, 2 + 0.5 * 1 = 2.5
    loss, metrics = dqn_loss(q_values, actions, rewards, terminated, next_q_target, gamma=0.5, loss="mse")
    q = torch.tensor([2.0, 0.5, 3.0])
    targets = torch.tensor([6.0, 0.0, 2.5])
    assert float(loss.detach()) == pytest.approx(float(((q - targets) ** 2).mean()))
    assert float(metrics["q/mean"]) == pytest.approx(float(q.mean()))
    # Huber: |4| -> 3.5, |0.5| -> 0.125, |0.5| -> 0.125
    huber, _ = dqn_loss(q_values, actions, rewards, terminated, next_q_target, gamma=0.5)
    assert float(huber.detach()) == pytest.approx((3.5 + 0.125 + 0.125) / 3)
    # Double DQN: the online network picks a' = argmax Q(s', .) = 0, 1, 1; the target network values it.
    next_q_online = torch.tensor([[9.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    dd, _ = dqn_loss(
        q_values,
        actions,
        rewards,
        terminated,
        next_q_target,
        gamma=0.5,
        next_q_online=next_q_online,
        loss="mse",
    )
    dd_targets = torch.tensor([1.0 + 0.5 * 4.0, 0.0, 2.0 + 0.5 * 0.0])
    assert float(dd.detach()) == pytest.approx(float(((q - dd_targets) ** 2).mean()))
    # Targets are constants: the gradient flows only through Q(s, a).
    dd.backward()
    expected = torch.zeros(3, 2)
    expected[torch.arange(3), actions] = 2 * (q - dd_targets) / 3
    assert torch.allclose(q_values.grad, expected)


def test_replay_buffer_ring_and_state_roundtrip():
    buf = ReplayBuffer(3, (2,))
    for i in range(5):
        buf.add(np.array([i, i], np.float32), i % 2, float(i), np.array([i + 1, i + 1], np.float32), i == 4)
    assert len(buf) == 3 and buf.pos == 2
    assert buf.rewards.tolist() == [3.0, 4.0, 2.0]  # 3 and 4 overwrote 0 and 1
    batch = buf.sample(np.array([1, 1]))
    assert batch["obs"].tolist() == [[4.0, 4.0]] * 2 and batch["terminated"].tolist() == [1.0, 1.0]
    other = ReplayBuffer(3, (2,))
    other.load_state_dict(buf.state_dict())
    for name in ("obs", "next_obs", "actions", "rewards", "terminated"):
        assert np.array_equal(getattr(other, name), getattr(buf, name))
    assert (other.pos, other.size) == (buf.pos, buf.size)
    with pytest.raises(ValueError, match="buffer_size"):
        ReplayBuffer(4, (2,)).load_state_dict(buf.state_dict())


def _dqn(tmp_path, **kw):
    args = dict(total_timesteps=400, learning_starts=100, train_freq=50, gradient_steps=2, buffer_size=1000)
    args.update(kw)
    return DQNTrainer(DQNConfig(**_common(tmp_path), **args))


def test_dqn_epsilon_schedule_and_target_updates(tmp_path):
    tr = _dqn(
        tmp_path, exploration_fraction=0.5, exploration_final_eps=0.1, target_update_interval=100, tau=0.5
    )
    # SB3's linear schedule: 1.0 -> 0.1 over the first 0.5 * 400 = 200 steps, then constant.
    assert [tr.epsilon(t) for t in (0, 100, 200, 400)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    target0 = [p.clone() for p in tr.target_net.parameters()]
    with torch.no_grad():
        for p in tr.q_net.parameters():
            p.add_(1.0)
    assert not tr.update_target(0, 99)  # no multiple of 100 crossed
    assert tr.update_target(150, 350)  # 200 and 300 crossed: two Polyak updates with tau 0.5
    for t0, t, p in zip(target0, tr.target_net.parameters(), tr.q_net.parameters()):
        assert torch.allclose(t, t0 + 0.75 * (p - t0), atol=1e-6)


def test_dqn_training_step_learns_from_replay(tmp_path):
    tr = _dqn(tmp_path, hidden_sizes=[16], per_device_train_batch_size=8)
    # The first plan collects rounds of 50 steps until learning_starts=100 is passed, then plans
    # gradient_steps=2 optimizer steps; the base loop takes one per trainer step.
    first = tr.training_step()
    assert "loss" in first and first["epsilon"] == tr.epsilon(100) and tr.num_timesteps == 150
    assert len(tr._pending) == 1 and len(tr.buffer) == 150
    second = tr.training_step()  # the planned step: no new environment steps
    assert tr.num_timesteps == 150 and "epsilon" not in second and math.isfinite(second["loss"])
    out = tr.training_step()  # a new round of 50 steps
    assert tr.num_timesteps == 200 and math.isfinite(out["loss"]) and len(tr.buffer) == 200
    ev = tr.evaluate()
    assert set(ev) == {"eval/return_mean", "eval/return_std", "eval/length_mean"}
    assert tr.evaluate() == ev  # greedy, fixed seeds


# ------------------------------------------------------------------------------ policy gradient


def test_gaussian_and_categorical_logprobs_match_torch_distributions():
    torch.manual_seed(0)
    mean, log_std, actions = torch.randn(5, 3), torch.randn(3), torch.randn(5, 3)
    logp, ent = gaussian_logprob_entropy(mean, log_std, actions)
    ref = torch.distributions.Normal(mean, log_std.exp())
    assert torch.allclose(logp, ref.log_prob(actions).sum(-1), atol=1e-5)
    assert torch.allclose(ent, ref.entropy().sum(-1), atol=1e-5)
    space = make_env("CartPole-v1").observation_space
    policy = ActorCritic(space, 2, discrete=True)
    obs = torch.randn(6, 4)
    params, values = policy(obs)
    acts = torch.tensor([0, 1, 1, 0, 1, 0])
    logp, ent = policy.logprob_entropy(params, acts)
    cat = torch.distributions.Categorical(logits=params)
    assert torch.allclose(logp, cat.log_prob(acts), atol=1e-6)
    assert torch.allclose(ent, cat.entropy(), atol=1e-6)
    assert values.shape == (6,) and policy.mode(params).tolist() == params.argmax(-1).tolist()


def _short_time_limit(trainer, steps):
    for env in trainer.envs.envs:  # the TimeLimit wrapper is the outermost layer
        env._max_episode_steps = steps


def test_gae_lambda_one_equals_discounted_returns_minus_values_on_a_real_rollout(tmp_path):
    """A CartPole rollout with terminations, time-limit truncations (limit 12) and a cut at the rollout end:
    GAE(lambda = 1) == bootstrapped reward-to-go from discounted_returns minus V."""
    tr = PPOTrainer(PPOConfig(**_common(tmp_path), num_envs=4, n_steps=40, max_steps=1))
    _short_time_limit(tr, 12)
    tr._obs, _ = tr.envs.reset(seed=3)
    r = tr.collect_rollout(40)
    assert r["truncated"].any() and r["terminated"].any()
    adv_gae, ret_gae = gae(
        r["rewards"], r["values"], gamma=0.97, lam=1.0, next_values=r["next_values"],
        terminated=r["terminated"], truncated=r["truncated"],
    )  # fmt: skip
    adv_n, ret_n = nstep_advantages(
        r["rewards"], r["values"], r["next_values"], r["terminated"], r["truncated"], gamma=0.97
    )
    assert torch.allclose(adv_gae, adv_n, atol=1e-4) and torch.allclose(ret_gae, ret_n, atol=1e-4)
    # and by hand for one environment: sum of discounted rewards up to the episode end, plus the bootstrap
    i = int(torch.nonzero(r["truncated"].any(1))[0])
    t_end = int(torch.nonzero(r["truncated"][i])[0])
    t0 = max([0] + [t + 1 for t in range(t_end) if r["terminated"][i, t] or r["truncated"][i, t]])
    g = sum(0.97**k * float(r["rewards"][i, t0 + k]) for k in range(t_end - t0 + 1))
    g += 0.97 ** (t_end - t0 + 1) * float(r["next_values"][i, t_end])
    assert float(ret_gae[i, t0]) == pytest.approx(g, rel=1e-4)


def test_rollout_next_values_use_final_observation_at_truncation(tmp_path):
    tr = PPOTrainer(PPOConfig(**_common(tmp_path), num_envs=2, n_steps=30, max_steps=1))
    _short_time_limit(tr, 10)
    tr._obs, _ = tr.envs.reset(seed=0)
    r = tr.collect_rollout(30)
    for i, t in torch.nonzero(r["truncated"] & ~r["terminated"]).tolist():
        # the next observation in the rollout is the next episode's first one, not the final one
        if t + 1 < 30:
            assert r["next_values"][i, t] != r["values"][i, t + 1]
    cont = ~(r["truncated"] | r["terminated"])[:, :-1]
    assert torch.equal(r["next_values"][:, :-1][cont], r["values"][:, 1:][cont])
    assert tr.num_timesteps == 60


def test_ppo_first_minibatch_has_ratio_one_and_step_runs(tmp_path):
    tr = PPOTrainer(
        PPOConfig(**_common(tmp_path), num_envs=2, n_steps=16, per_device_train_batch_size=8, num_epochs=2,
                  max_steps=2, clip_eps_value=0.2, target_kl=10.0, ent_coef=0.01)
    )  # fmt: skip
    plan = tr.plan_updates()
    assert len(plan) == 2 * 4  # epochs x minibatches of 8 of the 32 transitions
    batch, weight = plan[0].micro_batches[0]
    _, m = tr.compute_loss(batch)
    assert float(m["clip/ratio_mean"]) == pytest.approx(1.0, abs=1e-5)
    assert float(m["kl/old_approx"]) == pytest.approx(0.0, abs=1e-6) and float(m["clip/fraction"]) == 0
    tr._pending.extend(plan)
    out = tr.training_step()
    assert out["train/skipped_update"] == 0 and len(tr._pending) == 7
    for key in ("loss/policy", "loss/value", "entropy", "clip/fraction", "kl/old_approx", "grad_norm"):
        assert math.isfinite(out[key]), key


def test_ppo_target_kl_stops_epochs_early(tmp_path):
    tr = PPOTrainer(
        PPOConfig(**_common(tmp_path), num_envs=2, n_steps=32, per_device_train_batch_size=16, num_epochs=50,
                  max_steps=1, learning_rate=0.05, target_kl=1e-4)
    )  # fmt: skip
    skipped = [tr.training_step()["train/skipped_update"] for _ in range(200)]  # one rollout's plan
    first = skipped.index(1.0)
    # the stop comes within the plan, and every later step of the rollout takes no update
    assert 0 < first < 200 and all(s == 1.0 for s in skipped[first:]) and not tr._pending


def test_reinforce_episodes_mask_and_returns(tmp_path):
    tr = ReinforceTrainer(ReinforceConfig(**_common(tmp_path), num_envs=3, max_steps=1, baseline="none"))
    ep = tr.collect_episodes()
    returns, lengths = ep["episodes"]
    assert ep["mask"].sum(1).tolist() == lengths and ep["T"] == max(lengths)
    assert ep["rewards"].sum(1).tolist() == pytest.approx(returns)
    # every row is one episode: the mask is a prefix, and the episode terminates at its last step
    for i, n in enumerate(lengths):
        assert ep["mask"][i, :n].all() and not ep["mask"][i, n:].any() and ep["terminated"][i, n - 1]
    g = discounted_returns(ep["rewards"], gamma=0.9, dones=ep["terminated"], mask=ep["mask"])
    n0 = lengths[0]
    assert float(g[0, 0]) == pytest.approx(sum(0.9**k for k in range(n0)), rel=1e-5)  # reward 1 per step
    assert tr.num_timesteps == sum(lengths) and tr.episodes == 3


@pytest.mark.parametrize("baseline", ["none", "mean", "value"])
def test_reinforce_baselines_train(tmp_path, baseline):
    tr = ReinforceTrainer(ReinforceConfig(**_common(tmp_path), num_envs=2, max_steps=2, baseline=baseline))
    batch = tr.episode_batch()
    assert float(batch["advantages"].mean()) == pytest.approx(0.0, abs=1e-5)  # whitened
    logs = tr.train()
    assert "episode/return" in logs and ("loss/value" in logs) == (baseline == "value")


@pytest.mark.parametrize(
    "trainer_cls,config_cls", [(A2CTrainer, A2CConfig), (ReinforceTrainer, ReinforceConfig)]
)
def test_continuous_actions_gaussian_policy(tmp_path, trainer_cls, config_cls):
    kw = {"max_steps": 1, "num_envs": 2}
    if config_cls is A2CConfig:
        kw["n_steps"] = 8
    tr = trainer_cls(config_cls(**_common(tmp_path), env_id="Pendulum-v1", **kw))
    assert not tr.discrete and tr.policy.log_std is not None
    if config_cls is A2CConfig:
        r = tr.collect_rollout(8)
        assert r["actions"].shape == (2, 8, 1)
    logs = tr.train()
    assert math.isfinite(logs["loss"])
    a = tr.greedy_action(tr.envs.single_observation_space.sample())
    assert a.shape == (1,) and -2.0 <= float(a[0]) <= 2.0


def test_a2c_nstep_and_gae_lambda_one_give_the_same_update(tmp_path):
    params = {}
    for advantage in ("gae", "nstep"):
        reset_accelerate_state()
        tr = A2CTrainer(
            A2CConfig(
                **_common(tmp_path, advantage), n_steps=5, max_steps=3, advantage=advantage, gae_lambda=1.0
            )
        )
        tr.train()
        params[advantage] = torch.cat([p.detach().flatten() for p in tr.policy.parameters()])
    assert torch.allclose(params["gae"], params["nstep"], atol=1e-5)


# ------------------------------------------------------------------------ environment checkpoints


@pytest.mark.parametrize("env_id,kwargs", [("CartPole-v1", {}), ("Pendulum-v1", {}), ("FrozenLake-v1", {})])
def test_env_state_dict_replays_the_same_future(env_id, kwargs):
    env = make_env(env_id, **kwargs)
    env.reset(seed=1)
    actions = [env.action_space.sample() for _ in range(30)]
    for a in actions[:5]:
        env.step(a)
    state = env_state_dict(env)

    def play():
        out = []
        for a in actions[5:]:
            obs, r, term, trunc, _ = env.step(a)
            out.append((np.asarray(obs).tolist(), r, term, trunc))
            if term or trunc:
                out.append(np.asarray(env.reset()[0]).tolist())
        return out

    first = play()
    load_env_state_dict(env, state)
    assert play() == first


def test_vector_env_state_dict_roundtrip():
    envs = make_vec_env("CartPole-v1", 3, seed=0)
    actions = np.random.default_rng(0).integers(0, 2, (40, 3))
    for a in actions[:10]:
        envs.step(a)
    state = env_state_dict(envs)
    first = [envs.step(a)[0].tolist() for a in actions[10:]]
    load_env_state_dict(envs, state)
    assert [envs.step(a)[0].tolist() for a in actions[10:]] == first
    with pytest.raises(ValueError, match="3 environments"):
        load_env_state_dict(make_vec_env("CartPole-v1", 2, seed=0), state)


def test_episode_tracker():
    tr = EpisodeTracker(2)
    assert tr.step(np.array([1.0, 2.0]), np.array([False, False])) == ([], [])
    assert tr.step(np.array([1.0, 2.0]), np.array([False, True])) == ([4.0], [2])
    assert tr.step(np.array([1.0, 2.0]), np.array([True, False])) == ([3.0], [3])


# ------------------------------------------------------------------------------------- tabular


def test_value_iteration_trainer_matches_value_iteration_and_stops(tmp_path):
    tr = TabularTrainer(
        TabularConfig(**_common(tmp_path), method="value_iteration", max_steps=5000, is_slippery=True)
    )
    tr.train()
    v, _, pi, info = value_iteration(tr.mdp, tol=tr.config.dp_tol)
    assert tr.state.step == info["iterations"] < 5000  # one sweep per step, stopped at convergence
    assert torch.allclose(tr.table.values(), v, atol=1e-12)
    assert torch.equal(tr.table.greedy_policy(), pi)
    ev = tr.evaluate()
    assert ev["eval/value_start"] == pytest.approx(0.54203, abs=1e-5)
    assert ev["eval/success_exact"] == pytest.approx(0.7402, abs=1e-4)


def test_policy_iteration_trainer_matches_policy_iteration(tmp_path):
    tr = TabularTrainer(
        TabularConfig(**_common(tmp_path), method="policy_iteration", max_steps=100, map_name="8x8")
    )
    tr.train()
    v, pi, info = policy_iteration(tr.mdp)
    assert torch.allclose(tr.table.values(), v, atol=1e-10)
    assert tr.state.step <= info["iterations"] + 1
    assert "H" in tr.policy_map() and "G" in tr.policy_map()


def test_tabular_trainer_q_learning_steps_and_success_probability(tmp_path):
    tr = TabularTrainer(TabularConfig(**_common(tmp_path), max_steps=50, eval_episodes=20))
    logs = tr.train()
    assert tr.agent.episodes == 50 and tr.num_timesteps == tr.agent.env_steps
    assert {"episode/return", "epsilon", "alpha", "env/steps"} <= set(logs)
    mdp = from_toy_text(make_env("FrozenLake-v1"), gamma=0.99)
    _, _, pi, _ = value_iteration(mdp)
    assert success_probability(mdp, pi, 100) == pytest.approx(0.7402, abs=1e-4)
    assert success_probability(mdp, pi, 0) == 0.0


# ------------------------------------------------------------------------------ config and errors


def test_unknown_env_id_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"env_id: unknown environment id 'CartPol-v1'.*CartPole-v1"):
        PPOConfig(env_id="CartPol-v1", max_steps=1)


@pytest.mark.parametrize("cls", [DQNConfig, TabularConfig])
def test_continuous_env_rejected_by_discrete_only_algorithms(cls):
    with pytest.raises(ConfigError, match=r"env_id: .* needs a discrete action space, but Pendulum-v1"):
        cls(env_id="Pendulum-v1", max_steps=1)


def test_tabular_needs_discrete_observations():
    with pytest.raises(ConfigError, match="env_id: tabular methods need a Discrete observation space"):
        TabularConfig(env_id="CartPole-v1", max_steps=1)


@pytest.mark.parametrize("cls", [DQNConfig, PPOConfig, A2CConfig, ReinforceConfig, TabularConfig])
@pytest.mark.parametrize("gamma", [-0.1, 1.5])
def test_gamma_outside_unit_interval_names_the_option(cls, gamma):
    with pytest.raises(ConfigError, match=r"gamma must be in \[0.0, 1.0\]"):
        cls(gamma=gamma, max_steps=1)


def test_budget_max_steps_and_total_timesteps():
    # max_steps counts optimizer steps: ceil(100 / 32) = 4 rollouts x 10 epochs x 1 minibatch of 64
    assert PPOConfig(num_envs=4, n_steps=8, total_timesteps=100).max_steps == 40
    # DQN: learning_starts=1000 is 250 rounds of train_freq=4 steps without an update, then 1 per round
    assert DQNConfig(train_freq=4, max_steps=10).total_timesteps == (10 + 250) * 4
    assert DQNConfig(train_freq=4, gradient_steps=2, learning_starts=8, total_timesteps=40).max_steps == 16
    with pytest.raises(ConfigError, match="disagree"):
        DQNConfig(train_freq=4, max_steps=10, total_timesteps=100)
    with pytest.raises(ConfigError, match="set max_steps"):
        ReinforceConfig(total_timesteps=100)
    with pytest.raises(ConfigError, match="set max_steps .* or total_timesteps"):
        DQNConfig()
    # on the command line, the unit given wins over the other one from the YAML file
    cfg = parse_rl_config(DQNConfig, ["--total_timesteps", "4000", "--max_steps", "0"])
    assert cfg.max_steps == 1000 - 250
    cfg = parse_rl_config(DQNConfig, ["--max_steps", "7", "--total_timesteps", "4000"][:2])
    assert cfg.max_steps == 7 and cfg.total_timesteps == (7 + 250) * 4


def test_recipe_yaml_budget_overridden_from_the_command_line(tmp_path):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("total_timesteps: 50000\ntrain_freq: 256\n")
    cfg = parse_rl_config(DQNConfig, ["--max_steps", "3"], default_config=yaml_path)
    assert cfg.max_steps == 3 and cfg.total_timesteps == (3 + 1000 // 256) * 256
    cfg = parse_rl_config(DQNConfig, ["--total_timesteps", "1000"], default_config=yaml_path)
    assert cfg.max_steps == 4 - 1000 // 256


def test_other_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="tau must be in"):
        DQNConfig(tau=0.0, max_steps=1)
    with pytest.raises(ConfigError, match="baseline must be one of"):
        ReinforceConfig(baseline="critic", max_steps=1)
    with pytest.raises(ConfigError, match="gae_lambda must be in"):
        PPOConfig(gae_lambda=1.2, max_steps=1)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps must be 1 for PPO"):
        PPOConfig(gradient_accumulation_steps=2, max_steps=1)
    with pytest.raises(ConfigError, match="method must be one of"):
        TabularConfig(method="td0", max_steps=1)
    with pytest.raises(ConfigError, match="map_name: Taxi-v4 does not take these options"):
        TabularConfig(env_id="Taxi-v4", map_name="8x8", max_steps=1)
