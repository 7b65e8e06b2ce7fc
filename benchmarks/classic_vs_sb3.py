"""align's classic RL against Stable-Baselines3 on CartPole-v1: same environment, step budget, seeds and
evaluation, side by side in one run (each training in its own subprocess, one after the other).

SB3 runs rl-baselines3-zoo's tuned hyperparameters for CartPole-v1 (DLR-RM/rl-baselines3-zoo,
hyperparams/dqn.yml and hyperparams/ppo.yml):

    DQN  n_timesteps 5e4, learning_rate 2.3e-3, batch_size 64, buffer_size 100000, learning_starts 1000,
         gamma 0.99, target_update_interval 10, train_freq 256, gradient_steps 128,
         exploration_fraction 0.16, exploration_final_eps 0.04, policy_kwargs dict(net_arch=[256, 256])
    PPO  n_envs 8, n_timesteps 1e5, n_steps 32, batch_size 256, gae_lambda 0.8, gamma 0.98, n_epochs 20,
         ent_coef 0.0, learning_rate lin_0.001, clip_range lin_0.2

align runs twice on the same budget and seeds:

    align-zoo     the same hyperparameters (recipes/configs/rl/{dqn,ppo}_cartpole_zoo.yaml, whose comments
                  map each name): the implementations compared, same arithmetic per step;
    align         align's own recipe defaults (recipes/configs/rl/{dqn,ppo}_cartpole.yaml): the zoo's
                  settings except DQN's hidden layers [256, 64] (not [256, 256]) with the learning rate
                  annealed to 0, and PPO's 8 epochs per rollout (not 20); less computation for the same
                  environment steps and seeds.

Both libraries get the same number of torch threads (``--threads``, 1 by default: fastest for these
networks on a CPU, for both). Measured per run: training wall-clock and CPU time (``time.process_time``,
less sensitive to other load on the machine), environment steps per second, and the mean and std return of
20 greedy episodes on fresh environments seeded 10000 + i (the same function for both). The summary
prints align / SB3 ratios and checks the target: align's mean return at least SB3's, in at most half its
wall-clock.

    python benchmarks/classic_vs_sb3.py                        # DQN and PPO, seeds 0 1 2 (~15 min, 1 core)
    python benchmarks/classic_vs_sb3.py --algos ppo --seeds 0 1 --variants sb3 align --json results.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs" / "rl"
ALIGN_CONFIG = {
    "align-zoo": {"dqn": CONFIGS / "dqn_cartpole_zoo.yaml", "ppo": CONFIGS / "ppo_cartpole_zoo.yaml"},
    "align": {"dqn": CONFIGS / "dqn_cartpole.yaml", "ppo": CONFIGS / "ppo_cartpole.yaml"},
}
VARIANTS = ("sb3", "align-zoo", "align")
BUDGET = {"dqn": 50_000, "ppo": 100_000}
ENV_ID = "CartPole-v1"
EVAL_EPISODES, EVAL_SEED = 20, 10_000


def _evaluate(act) -> tuple[float, float]:
    import numpy as np

    from align.rl.common import run_greedy_episodes
    from align.rl.envs import make_env

    returns, _ = run_greedy_episodes(make_env(ENV_ID), act, EVAL_EPISODES, EVAL_SEED)
    return float(np.mean(returns)), float(np.std(returns))


def _linear(start: float):
    # rl-baselines3-zoo's lin_<value>: the value times the remaining progress (1 -> 0).
    return lambda progress_remaining: progress_remaining * start


def worker_sb3(algo: str, seed: int, threads: int) -> dict:
    import gymnasium as gym
    import torch
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(threads)
    if algo == "dqn":
        model = DQN(
            "MlpPolicy", gym.make(ENV_ID), learning_rate=2.3e-3, batch_size=64, buffer_size=100_000,
            learning_starts=1000, gamma=0.99, target_update_interval=10, train_freq=256, gradient_steps=128,
            exploration_fraction=0.16, exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]),
            seed=seed, device="cpu", verbose=0,
        )  # fmt: skip
    else:
        model = PPO(
            "MlpPolicy", make_vec_env(ENV_ID, n_envs=8, seed=seed), n_steps=32, batch_size=256, gae_lambda=0.8,
            gamma=0.98, n_epochs=20, ent_coef=0.0, learning_rate=_linear(1e-3), clip_range=_linear(0.2),
            seed=seed, device="cpu", verbose=0,
        )  # fmt: skip
    wall, cpu = time.perf_counter(), time.process_time()
    model.learn(BUDGET[algo])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    mean, std = _evaluate(lambda obs: int(model.predict(obs, deterministic=True)[0]))
    return {
        "env_steps": int(model.num_timesteps),
        "train_seconds": wall,
        "cpu_seconds": cpu,
        "mean": mean,
        "std": std,
    }


def worker_align(algo: str, seed: int, threads: int, variant: str = "align") -> dict:
    import contextlib
    import io

    from align.rl.common import parse_rl_config

    if algo == "dqn":
        from align.rl.dqn import DQNConfig as Config
        from align.rl.dqn import DQNTrainer as Trainer
    else:
        from align.rl.policy_gradient import PPOConfig as Config
        from align.rl.policy_gradient import PPOTrainer as Trainer
    out = tempfile.mkdtemp(prefix=f"align_{algo}_")
    args = ["--config", str(ALIGN_CONFIG[variant][algo]), "--output_dir", out, "--seed", str(seed)]
    args += [
        "--torch_threads",
        str(threads),
        "--disable_progress_bar",
        "true",
        "--total_timesteps",
        str(BUDGET[algo]),
    ]
    cfg = parse_rl_config(Config, args)
    trainer = Trainer(cfg)
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    mean, std = _evaluate(trainer.greedy_action)
    return {
        "env_steps": trainer.num_timesteps,
        "train_seconds": wall,
        "cpu_seconds": cpu,
        "mean": mean,
        "std": std,
    }


def run_one(lib: str, algo: str, seed: int, threads: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        lib,
        "--algos",
        algo,
        "--seeds",
        str(seed),
        "--threads",
        str(threads),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{lib} {algo} seed {seed} failed:\n{res.stderr[-3000:]}")
    row = json.loads(res.stdout.strip().splitlines()[-1])
    return {"lib": lib, "algo": algo, "seed": seed, **row}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", nargs="+", default=["dqn", "ppo"], choices=["dqn", "ppo"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads for both libraries")
    p.add_argument("--json", default=None, help="also write the rows and the summary to this file")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        if a.worker == "sb3":
            row = worker_sb3(a.algos[0], a.seeds[0], a.threads)
        else:
            row = worker_align(a.algos[0], a.seeds[0], a.threads, a.worker)
        print(json.dumps(row))
        return []

    rows: list[dict] = []
    head = f"{'algo':5} {'library':10} {'seed':>4} {'train s':>8} {'cpu s':>7} {'steps/s':>8} {'return':>14}"
    print(head)
    for algo in a.algos:
        for seed in a.seeds:
            for lib in a.variants:
                r = run_one(lib, algo, seed, a.threads)
                r["steps_per_second"] = r["env_steps"] / r["train_seconds"]
                rows.append(r)
                print(
                    f"{algo:5} {lib:10} {seed:>4} {r['train_seconds']:8.1f} {r['cpu_seconds']:7.1f} "
                    f"{r['steps_per_second']:8.0f} {r['mean']:7.1f} +- {r['std']:4.1f}",
                    flush=True,
                )
    summary: dict[str, dict] = {}
    print("\nalign / SB3, means over seeds")
    for algo in a.algos:

        def avg(lib, key, algo=algo):
            vals = [r[key] for r in rows if r["algo"] == algo and r["lib"] == lib]
            return sum(vals) / len(vals)

        if "sb3" not in a.variants:
            continue
        for lib in (v for v in a.variants if v != "sb3"):
            s = {
                "sb3_return": avg("sb3", "mean"),
                "align_return": avg(lib, "mean"),
                "wall_ratio": avg(lib, "train_seconds") / avg("sb3", "train_seconds"),
                "cpu_ratio": avg(lib, "cpu_seconds") / avg("sb3", "cpu_seconds"),
                "steps_per_second_ratio": avg(lib, "steps_per_second") / avg("sb3", "steps_per_second"),
            }
            s["target_met"] = s["align_return"] >= s["sb3_return"] and s["wall_ratio"] <= 0.5
            summary[f"{algo}/{lib}"] = s
            print(
                f"{algo} {lib:10}: return {s['align_return']:.1f} vs {s['sb3_return']:.1f}; wall-clock ratio "
                f"{s['wall_ratio']:.2f}, CPU-time ratio {s['cpu_ratio']:.2f}, steps/s x{s['steps_per_second_ratio']:.2f}; "
                f"target (return >= SB3's, wall-clock <= 0.5 x) {'met' if s['target_met'] else 'NOT met'}"
            )
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
