"""REINFORCE on CartPole-v1: Monte Carlo policy gradient with reward-to-go and a baseline (a learned value,
the batch mean, or none), align.losses.policy_gradient_loss over align.advantages.discounted_returns.

With no arguments it trains with recipes/configs/rl/reinforce_cartpole.yaml (one trainer step = 8 complete
episodes) and evaluates the greedy policy over 20 episodes:

    python recipes/reinforce_cartpole.py
    python recipes/reinforce_cartpole.py --baseline mean --output_dir outputs/reinforce_mean
    python recipes/reinforce_cartpole.py --baseline none --normalize_advantage false --output_dir outputs/reinforce_plain
    python recipes/reinforce_cartpole.py --max_steps 400 --seed 1 --output_dir outputs/reinforce_s1

``--max_steps`` counts iterations of ``num_envs`` complete episodes (episodes have no fixed length, so
``total_timesteps`` does not apply). Outputs in output_dir: metrics.jsonl, config.yaml, checkpoints/,
model/, learning_curve.png, summary.json.
"""

from pathlib import Path

from align.errors import run_main
from align.recipe_helpers import parse_recipe_config
from align.rl.common import finish_run
from align.rl.policy_gradient import ReinforceConfig, ReinforceTrainer

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rl" / "reinforce_cartpole.yaml"


def main(args: list[str] | None = None) -> dict:
    cfg = parse_recipe_config(ReinforceConfig, args, default_config=DEFAULT_CONFIG)
    return finish_run(ReinforceTrainer(cfg), "REINFORCE")


if __name__ == "__main__":
    run_main(main, "reinforce_cartpole")
