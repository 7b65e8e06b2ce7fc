"""The monitors catch a gamed reward on the embedded model while the run trains.

A deliberately hackable setup: the only trained reward is boxed_format (a format reward without
correctness), the math verifier is logged beside it at weight 0, and every gold answer is one the model
never writes. GRPO learns the format; correctness stays at 0; `proxy_vs_gold` must fire during the run.
The honest main job fires no monitor (asserted in test_grpo_learning.py).
"""

import json

import pytest

from align.trainer import read_metrics
from tests.support import load_recipe

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerate_state")]


def test_format_without_correctness_fires_proxy_vs_gold(tmp_path, embedded_model_dir):
    recipe = load_recipe("grpo_math")
    data = tmp_path / "never.jsonl"
    rows = [
        {"question": f"What is {a} + {b}?", "answer": "-987654321"}
        for a, b in zip(range(3, 40, 2), range(5, 60, 3))
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "hack"
    recipe.main([
        "--output_dir", str(out), "--dataset_name", str(data), "--eval_dataset_name", str(data), "--eval_split", "train",
        "--eval_limit", "2", "--reward_funcs", "boxed_format", "math", "--reward_weights", "1", "0",
        "--num_generations", "8", "--per_device_train_batch_size", "16", "--max_new_tokens", "48",
        "--max_steps", "12", "--monitor_window", "4", "--disable_progress_bar", "true",
    ])  # fmt: skip
    metrics = read_metrics(out)
    boxed = [r["reward/boxed_format/mean"] for r in metrics]
    print(json.dumps({"boxed_format": boxed, "math": [r["reward/math/mean"] for r in metrics]}))
    assert max(r["reward/math/mean"] for r in metrics) == 0.0  # the gold never moves
    fired = [r["step"] for r in metrics if r.get("monitor/proxy_vs_gold/firing")]
    assert fired, f"proxy_vs_gold never fired; boxed_format went {boxed}"
