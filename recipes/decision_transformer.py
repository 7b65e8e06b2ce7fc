"""Decision Transformer (Chen et al. 2021) on an offline dataset the project makes, with its baselines:
behaviour cloning on the same data, and the dataset's mean and best episode return (align.rl.decision_transformer).

With no arguments it trains on CartPole-v1 medium-replay (generated on first use into
$ALIGN_CACHE_DIR/offline_rl) with recipes/configs/rl/dt_cartpole.yaml, then rolls out
conditioned on each target return and prints the table row (dataset | DT per target | BC | mean | best):

    python recipes/decision_transformer.py
    python recipes/decision_transformer.py --dataset medium --output_dir outputs/dt_cartpole_medium
    python recipes/decision_transformer.py --data_source ppo --output_dir outputs/dt_cartpole_ppo_mr
    python recipes/decision_transformer.py --config recipes/configs/rl/dt_frozenlake.yaml
    python recipes/decision_transformer.py --dataset_path my_episodes.parquet --target_returns 100 300 500
    python recipes/decision_transformer.py --output_dir outputs/dt_cartpole --resume_from_checkpoint latest

``--data_source ppo`` takes the data from the project's PPO agent instead of the noisy controller: its
partly-trained snapshot (medium) and its own training episodes up to that snapshot (medium-replay); the
first use of a seed trains it (then cached). Make or inspect the datasets themselves with
``python data/make_offline_rl.py``. Outputs in output_dir:
metrics.jsonl, config.yaml, checkpoints/, model/ (transformers DecisionTransformerModel + dt_meta.json),
bc/ (the baseline's metrics and model), learning_curve.png, return_vs_target.png (the paper's Figure 4),
summary.json.
"""

from pathlib import Path

from align.errors import run_main
from align.recipe_helpers import parse_recipe_config
from align.rl.decision_transformer import DTConfig, run_decision_transformer

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rl" / "dt_cartpole.yaml"


def main(args: list[str] | None = None) -> dict:
    cfg = parse_recipe_config(DTConfig, args, default_config=DEFAULT_CONFIG)
    return run_decision_transformer(cfg)


if __name__ == "__main__":
    run_main(main, "decision_transformer")
