"""Tabular RL on FrozenLake: Q-learning (or SARSA, expected SARSA, Monte Carlo) one episode per trainer step,
or value / policy iteration one sweep per step; prints the greedy policy and its values as a map of arrows
and numbers, next to the optimal ones from value iteration.

With no arguments: Q-learning on FrozenLake 4x4 slippery (gamma 0.99, 12,000 episodes), whose
greedy policy reaches the optimal success rate, 0.740 within the 100-step time limit:

    python recipes/tabular_frozenlake.py
    python recipes/tabular_frozenlake.py --method sarsa --output_dir outputs/sarsa_frozenlake
    python recipes/tabular_frozenlake.py --method value_iteration --logging_steps 1 --output_dir outputs/vi
    python recipes/tabular_frozenlake.py --map_name 8x8 --max_steps 50000 --output_dir outputs/fl8
    python recipes/tabular_frozenlake.py --env_id CliffWalking-v1 --gamma 1.0 --method sarsa \\
        --epsilon_start 0.1 --epsilon_end 0.1 --alpha_start 0.5 --alpha_end 0.5 --max_steps 500 --output_dir outputs/cliff

Outputs in output_dir: metrics.jsonl, config.yaml, checkpoints/, model/ (the Q table as safetensors),
learning_curve.png, summary.json (greedy return and success rate, exact start values of the greedy and
the optimal policy, exact success probability).
"""

from pathlib import Path

from align.errors import run_main
from align.recipe_helpers import parse_recipe_config
from align.rl.common import finish_run
from align.rl.render import policy_map
from align.rl.tabular import value_iteration
from align.rl.tabular_trainer import TabularConfig, TabularTrainer

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rl" / "tabular_frozenlake.yaml"


def main(args: list[str] | None = None) -> dict:
    cfg = parse_recipe_config(TabularConfig, args, default_config=DEFAULT_CONFIG)
    trainer = TabularTrainer(cfg)
    summary = finish_run(trainer, cfg.method)
    if trainer.accelerator.is_main_process:
        print(f"\n{cfg.method} on {cfg.env_id}: greedy policy and max_a Q(s, a)")
        print(trainer.policy_map())
        if trainer.mdp is not None:
            v_star, _, pi_star, _ = value_iteration(trainer.mdp, tol=cfg.dp_tol)
            print(f"\noptimal (value iteration, gamma {cfg.gamma}): policy and v*")
            print(policy_map(trainer.mdp, pi_star, values=v_star))
            ev = summary["eval"]
            greedy_v = ev["eval/value_start"]
            greedy_v = (
                "undefined (gamma 1, and from some state it never ends)"
                if greedy_v != greedy_v
                else f"{greedy_v:.4f}"
            )
            print(
                f"\nstart value: greedy {greedy_v}, optimal {ev['eval/optimal_value_start']:.4f}; "
                f"success rate: {ev['eval/success_rate']:.3f} sampled over {cfg.eval_episodes} episodes, "
                f"{ev['eval/success_exact']:.4f} exact"
            )
    return summary


if __name__ == "__main__":
    run_main(main, "tabular_frozenlake")
