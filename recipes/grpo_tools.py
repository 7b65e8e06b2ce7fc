"""GRPO with a tool: math problems the model may solve with a calculator, over several turns.

The environment (`align/MathTools-v0`) gives a problem; the model may call `calculate` in the Hermes
format (`<tool_call>{"name": "calculate", "arguments": {"expression": "..."}}</tool_call>`), gets the result
as a tool message, and ends with a boxed answer scored by the math verifier. The ids trained on are the
ids sampled; the tool's messages are attended to and masked out of the loss. With no arguments it trains
the embedded SmolLM2-135M-Instruct on CPU and prints held-out accuracy (`align/MathToolsTest-v0`), tool
calls and tool errors per episode, before and after:

    python recipes/grpo_tools.py
    python recipes/grpo_tools.py --max_steps 40 --eval_episodes 64

Outputs in output_dir: metrics.jsonl, config.yaml, completions.jsonl (episodes), summary.json, model/.
"""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from align.errors import run_main
from align.recipe_helpers import parse_recipe_config

_spec = importlib.util.spec_from_file_location("grpo_env_recipe", Path(__file__).with_name("grpo_env.py"))
grpo_env = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grpo_env)


@dataclass
class GRPOToolsConfig(grpo_env.GRPOEnvConfig):
    """GRPO over math episodes with a calculator tool."""

    output_dir: str = "outputs/grpo_tools"
    """Where metrics.jsonl, config.yaml, completions.jsonl, checkpoints/ and the final model go."""
    env_id: str | None = "align/MathTools-v0"
    """The tool environment (training problems)."""
    eval_env_id: str | None = "align/MathToolsTest-v0"
    """Held-out problems (the test split of data/math)."""
    max_turns: int = 3
    """Most assistant messages per episode: tool calls, then the answer."""
    max_new_tokens: int = 64
    """Most tokens per message."""
    max_episode_tokens: int = 512
    """Most tokens after the first prompt."""
    temperature: float = 0.7
    """Sampling temperature (as the math job: at 1.0 the small model's groups rarely differ)."""
    learning_rate: float = 2e-5
    eval_episodes: int = 32
    """Held-out problems per evaluation."""


def main(args: list[str] | None = None) -> dict:
    return grpo_env.run(parse_recipe_config(GRPOToolsConfig, args))


if __name__ == "__main__":
    run_main(main, "grpo_tools")
