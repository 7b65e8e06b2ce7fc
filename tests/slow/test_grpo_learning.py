"""Learning check: GRPO raises the embedded model's held-out accuracy on the generated arithmetic.

This is the main job exactly as `accelerate launch recipes/grpo_math.py` runs it (the defaults in
GRPOConfig / recipes/configs/grpo/smollm2_cpu.yaml: 30 steps of 4 prompts x 8 completions at
temperature 0.7, 64 new tokens, lr 2e-5, beta 0), on CPU, one thread (tests/slow/conftest.py), seed 42:
0.10 -> 0.33 when measured on 2026-12-07 (before per-completion sampling streams: 0.28, and 0.22 with seed 1). Held-out accuracy is greedy on the first 100 test problems.
"""

import json

import pytest

from align.trainer import read_metrics
from tests.support import load_recipe

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerate_state")]


def test_grpo_raises_heldout_accuracy(tmp_path, embedded_model_dir):
    recipe = load_recipe("grpo_math")
    out = tmp_path / "grpo"
    summary = recipe.main(["--output_dir", str(out), "--disable_progress_bar", "true"])
    print(json.dumps(summary))
    before, after = summary["heldout_accuracy_before"], summary["heldout_accuracy_after"]
    assert after >= before + 0.10, summary
    rows = read_metrics(out)
    first = sum(r["reward/mean"] for r in rows[:10]) / 10
    last = sum(r["reward/mean"] for r in rows[-10:]) / 10
    assert last > first, (first, last)
    # The honest main job fires no monitor (tests/slow/test_monitor_learning.py shows one firing).
    fired = {k: v for k, v in rows[-1].items() if k.startswith("monitor/") and k.endswith("/fired") and v}
    assert not fired, fired
