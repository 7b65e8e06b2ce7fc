"""PPO on CartPole-v1 (or a continuous-action task such as Pendulum-v1): GAE, clipped surrogate, minibatch
epochs (align.rl.policy_gradient). The clipped loss is align.losses.ppo_clip_loss, the one GRPO uses.

With no arguments it trains with recipes/configs/rl/ppo_cartpole.yaml (rl-baselines3-zoo's tuned
CartPole-v1 hyperparameters, 100,000 environment steps) and evaluates the greedy policy over 20 episodes:

    python recipes/ppo_cartpole.py
    python recipes/ppo_cartpole.py --seed 1 --output_dir outputs/ppo_cartpole_s1
    python recipes/ppo_cartpole.py --config recipes/configs/rl/ppo_pendulum.yaml
    python recipes/ppo_cartpole.py --target_kl 0.02 --clip_eps_value 0.2 --ent_coef 0.01 --output_dir outputs/ppo_kl
    python recipes/ppo_cartpole.py --output_dir outputs/ppo_cartpole --resume_from_checkpoint latest

``--total_timesteps`` (environment steps) or ``--max_steps`` (rollout + update iterations of
num_envs * n_steps environment steps) sets the budget. Outputs in output_dir: metrics.jsonl, config.yaml,
checkpoints/, model/ (weights + architecture.json), learning_curve.png, summary.json.
"""

from pathlib import Path

from align.errors import run_main
from align.recipe_helpers import parse_recipe_config
from align.rl.common import finish_run
from align.rl.policy_gradient import PPOConfig, PPOTrainer

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rl" / "ppo_cartpole.yaml"


def main(args: list[str] | None = None) -> dict:
    cfg = parse_recipe_config(PPOConfig, args, default_config=DEFAULT_CONFIG)
    return finish_run(PPOTrainer(cfg), "PPO")


if __name__ == "__main__":
    run_main(main, "ppo_cartpole")
