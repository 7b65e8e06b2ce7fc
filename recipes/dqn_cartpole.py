"""DQN on CartPole-v1: replay buffer, target network, epsilon-greedy exploration (align.rl.dqn).

With no arguments it trains with recipes/configs/rl/dqn_cartpole.yaml (50,000 environment steps) and
evaluates the greedy policy over 20 episodes:

    python recipes/dqn_cartpole.py
    python recipes/dqn_cartpole.py --seed 1 --output_dir outputs/dqn_cartpole_s1
    python recipes/dqn_cartpole.py --config recipes/configs/rl/dqn_cartpole_zoo.yaml --output_dir outputs/dqn_zoo
    python recipes/dqn_cartpole.py --double_q true --td_loss mse --tau 0.005 --target_update_interval 1 \\
        --output_dir outputs/dqn_polyak
    python recipes/dqn_cartpole.py --output_dir outputs/dqn_cartpole --resume_from_checkpoint latest

``--total_timesteps`` (environment steps) or ``--max_steps`` (trainer steps of ``train_freq`` environment
steps each) sets the budget. Outputs in output_dir: metrics.jsonl, config.yaml, checkpoints/, model/
(weights + architecture.json, reload with ``align.rl.common.load_model``), learning_curve.png, summary.json.
"""

from pathlib import Path

from align.errors import run_main
from align.recipe_helpers import parse_recipe_config
from align.rl.common import finish_run
from align.rl.dqn import DQNConfig, DQNTrainer

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rl" / "dqn_cartpole.yaml"


def main(args: list[str] | None = None) -> dict:
    cfg = parse_recipe_config(DQNConfig, args, default_config=DEFAULT_CONFIG)
    return finish_run(DQNTrainer(cfg), "DQN")


if __name__ == "__main__":
    run_main(main, "dqn_cartpole")
