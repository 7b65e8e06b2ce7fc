"""A2C on CartPole-v1: synchronous advantage actor-critic with n-step or GAE advantages and an entropy
bonus (align.rl.policy_gradient); its policy loss is align.losses.policy_gradient_loss.

With no arguments it trains with recipes/configs/rl/a2c_cartpole.yaml and evaluates the greedy policy:

    python recipes/a2c_cartpole.py
    python recipes/a2c_cartpole.py --advantage nstep --output_dir outputs/a2c_nstep
    python recipes/a2c_cartpole.py --gae_lambda 0.95 --ent_coef 0.01 --output_dir outputs/a2c_gae
    python recipes/a2c_cartpole.py --env_id Pendulum-v1 --total_timesteps 200000 --output_dir outputs/a2c_pendulum

Outputs in output_dir: metrics.jsonl, config.yaml, checkpoints/, model/, learning_curve.png, summary.json.
"""

from pathlib import Path

from align.errors import run_main
from align.recipe_helpers import parse_recipe_config
from align.rl.common import finish_run
from align.rl.policy_gradient import A2CConfig, A2CTrainer

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rl" / "a2c_cartpole.yaml"


def main(args: list[str] | None = None) -> dict:
    cfg = parse_recipe_config(A2CConfig, args, default_config=DEFAULT_CONFIG)
    return finish_run(A2CTrainer(cfg), "A2C")


if __name__ == "__main__":
    run_main(main, "a2c_cartpole")
