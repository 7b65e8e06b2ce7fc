"""The "ppo" source of the offline datasets (align.rl.offline_agents): a tiny PPO run (8,000 environment steps,
a snapshot every 2 updates, about 2 s) and small datasets made from it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from align.config import ConfigError
from align.rl import offline_agents
from align.rl.decision_transformer import DTConfig
from align.rl.offline_agents import (
    PPO_HYPERPARAMETERS,
    ensure_ppo_agent,
    make_ppo_dataset,
    policy_update,
)
from align.rl.offline_data import (
    dataset_file_name,
    ensure_offline_dataset,
    make_offline_dataset,
)
from align.rl.offline_dataset import (
    DATASET_KINDS,
    REQUIRED_FIELDS,
    load_offline_dataset,
)
from tests.support import reset_accelerate_state

ROOT = Path(__file__).resolve().parents[2]
BUDGET = {"total_timesteps": 8000, "snapshot_every": 2}
STEPS = 1000


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder holding the tiny PPO run (trained once for the module)."""
    path = tmp_path_factory.mktemp("offline_rl")
    reset_accelerate_state()
    ensure_ppo_agent("CartPole-v1", seed=0, cache_dir=path, **BUDGET)
    reset_accelerate_state()
    return path


@pytest.fixture(scope="module")
def datasets(cache):
    return {
        k: make_ppo_dataset("CartPole-v1", k, steps=STEPS, cache_dir=cache, **BUDGET) for k in DATASET_KINDS
    }


def test_datasets_have_the_documented_fields(datasets):
    for kind, ds in datasets.items():
        assert ds.meta["source"] == "ppo" and ds.meta["kind"] == kind
        assert len(ds.policies) == len(ds.episodes) > 0
        for ep in ds.episodes:
            assert set(REQUIRED_FIELDS) | {"timeouts"} <= set(ep)
            n = len(ep["rewards"])
            assert ep["observations"].shape == (n, 4) and ep["observations"].dtype == np.float32
            assert ep["actions"].shape == (n,) and set(np.unique(ep["actions"])) <= {0, 1}
            np.testing.assert_array_equal(ep["timesteps"], np.arange(n))
            # An episode ends once: in a terminal state or cut by the time limit, at its last step.
            ends = ep["terminals"] | ep["timeouts"]
            assert ends[-1] and not ends[:-1].any() and not (ep["terminals"] & ep["timeouts"]).any()
        if kind != "medium-replay":  # played parts: whole episodes, at least STEPS steps per part
            parts = 2 if kind == "medium-expert" else 1
            assert ds.stats()["steps"] >= parts * STEPS
    final = f"ppo@u{datasets['expert'].meta['expert_snapshot']['update']}"
    medium = f"ppo@u{datasets['medium'].meta['medium_snapshot']['update']}"
    assert set(datasets["random"].policies) == {"random"}
    assert set(datasets["expert"].policies) == {final}
    assert set(datasets["medium"].policies) == {medium} and medium != final
    me = datasets["medium-expert"].policies
    assert set(me) == {medium, final} and me == sorted(me, key=lambda p: p == final)  # medium part first


def test_medium_replay_is_the_training_run_up_to_the_medium_snapshot(cache, datasets):
    run = ensure_ppo_agent("CartPole-v1", seed=0, cache_dir=cache, **BUDGET)
    mr = datasets["medium-replay"]
    cutoff = mr.meta["medium_snapshot"]["update"]
    assert 0 < cutoff < run.total_updates  # a partly trained snapshot, with training after it
    updates = [policy_update(p) for p in mr.policies]
    assert all(p.startswith("ppo-train@u") for p in mr.policies)
    assert updates == sorted(updates) and max(updates) <= cutoff  # training order, none after medium
    # Exactly the run's replay from its start up to the medium snapshot: a prefix, not a selection.
    all_updates = [policy_update(p) for p in run.replay.policies]
    n = sum(u <= cutoff for u in all_updates)
    assert len(mr.episodes) == n < len(run.replay.episodes)
    for a, b in zip(mr.episodes, run.replay.episodes[:n]):
        np.testing.assert_array_equal(a["observations"], b["observations"])
    # The medium snapshot is the non-final one closest to MEDIUM_FRACTION of the final one's mean return.
    target = offline_agents.MEDIUM_FRACTION * run.snapshots[-1]["return_mean"]
    gaps = [abs(s["return_mean"] - target) for s in run.snapshots[:-1]]
    assert run.snapshots[int(np.argmin(gaps))]["update"] == cutoff
    assert mr.meta["medium_snapshot"]["progress"] == pytest.approx(cutoff / run.total_updates, abs=1e-4)
    # Every update's rollout (8 envs x 32 steps) is in the replay, minus the episodes still open at the end.
    assert run.replay.lengths.sum() <= run.info["env_steps"]
    assert run.replay.lengths.sum() > run.info["env_steps"] - 8 * 500


def test_the_run_is_reproducible_from_its_seed(cache, tmp_path):
    a = ensure_ppo_agent("CartPole-v1", seed=0, cache_dir=cache, **BUDGET)
    reset_accelerate_state()
    b = ensure_ppo_agent("CartPole-v1", seed=0, cache_dir=tmp_path, **BUDGET)
    reset_accelerate_state()
    assert [s["return_mean"] for s in a.snapshots] == [s["return_mean"] for s in b.snapshots]
    for sa, sb in zip(a.snapshots, b.snapshots):
        for k in sa["state_dict"]:
            assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    assert a.replay.policies == b.replay.policies
    again = make_ppo_dataset("CartPole-v1", "medium", steps=STEPS, cache_dir=cache, **BUDGET)
    assert (
        again.returns.tolist()
        == make_ppo_dataset(
            "CartPole-v1", "medium", steps=STEPS, cache_dir=tmp_path, **BUDGET
        ).returns.tolist()
    )


def test_ensure_offline_dataset_with_source_ppo_writes_its_stats(cache, monkeypatch):
    # The API trains with the default budget; the module's defaults are read at call time.
    monkeypatch.setattr(offline_agents, "DEFAULT_PPO_TIMESTEPS", BUDGET["total_timesteps"])
    monkeypatch.setattr(offline_agents, "DEFAULT_SNAPSHOT_EVERY", BUDGET["snapshot_every"])
    path = ensure_offline_dataset("CartPole-v1", "medium-replay", steps=STEPS, cache_dir=cache, source="ppo")
    assert path.name == dataset_file_name("CartPole-v1", "medium-replay", 0, STEPS, "ppo")
    assert path.name != dataset_file_name("CartPole-v1", "medium-replay", 0, STEPS)  # never the controller's
    stats = json.loads(path.with_name(path.name.replace(".parquet", ".stats.json")).read_text())
    assert stats["source"] == "ppo" and stats["kind"] == "medium-replay"
    assert set(stats["medium_snapshot"]) == {"update", "env_steps", "progress", "return_mean"}
    assert load_offline_dataset(path).policies[0].startswith("ppo-train@u")


def test_unknown_source_or_environment_is_an_error_naming_the_option():
    with pytest.raises(ValueError, match=r"source: unknown data source 'sac'.*'controller', 'ppo'"):
        make_offline_dataset("CartPole-v1", "medium", source="sac")
    with pytest.raises(ValueError, match="source: unknown data source"):
        ensure_offline_dataset("CartPole-v1", "medium", source="sac")
    with pytest.raises(ConfigError, match="data_source must be one of"):
        DTConfig(data_source="sac")
    with pytest.raises(ValueError, match="env_id: the 'ppo' data source .* not FrozenLake-v1"):
        make_offline_dataset("FrozenLake-v1", "medium", source="ppo")


def test_hyperparameters_are_the_ppo_cartpole_recipe_s():
    recipe = yaml.safe_load((ROOT / "recipes" / "configs" / "rl" / "ppo_cartpole.yaml").read_text())
    assert {k: recipe[k] for k in PPO_HYPERPARAMETERS} == PPO_HYPERPARAMETERS
    assert recipe["total_timesteps"] == offline_agents.DEFAULT_PPO_TIMESTEPS
