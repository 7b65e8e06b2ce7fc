"""Learning check for the Decision Transformer (run by CI; sized for one CPU core, about 1.5 minutes).

recipes/decision_transformer.py with its default config (recipes/configs/rl/dt_cartpole.yaml): CartPole-v1
medium-replay (50,000 steps generated from seed 0: mean return 85, best 500), a 2-layer 64-wide GPT-2 with
K = 10, 2,000 steps; behaviour cloning (MLP) on the same data. 20 evaluation episodes per target, actions
sampled from the predicted distribution for both models (the paper's discrete-action evaluation).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import decision_transformer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerate_state")]


def test_decision_transformer_beats_data_and_bc_and_follows_the_target(tmp_path):
    s = decision_transformer.main(
        [
            "--output_dir",
            str(tmp_path / "dt"),
            "--data_dir",
            str(tmp_path / "data"),
            "--disable_progress_bar",
            "true",
        ]
    )
    ds = s["dataset"]
    assert ds["kind"] == "medium-replay" and ds["return_max"] == 500.0 and 60 < ds["return_mean"] < 110
    rows = sorted(s["dt"].values(), key=lambda r: r["target"])
    targets = [r["target"] for r in rows]
    means = [r["return_mean"] for r in rows]
    top = rows[-1]
    # Conditioned on the best return in the data, DT beats the data's mean return by far, and BC.
    assert top["target"] == 500.0
    assert top["return_mean"] > 2 * ds["return_mean"], s
    assert top["return_mean"] >= s["bc"]["return_mean"], s
    # The achieved return rises with the target (Spearman rank correlation, and the spread between ends).
    rank_t, rank_m = np.argsort(np.argsort(targets)), np.argsort(np.argsort(means))
    assert np.corrcoef(rank_t, rank_m)[0, 1] >= 0.9, means
    assert means[-1] - means[0] >= 100, means
    for f in ("metrics.jsonl", "config.yaml", "summary.json", "learning_curve.png", "return_vs_target.png"):
        assert (tmp_path / "dt" / f).is_file(), f
    assert (tmp_path / "dt" / "model" / "config.json").is_file() and (
        tmp_path / "dt" / "bc" / "model"
    ).is_dir()
