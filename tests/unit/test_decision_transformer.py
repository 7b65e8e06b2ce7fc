"""Decision Transformer: returns-to-go, window sampling and padding, action-token alignment, the evaluation's
return-to-go update, the offline datasets, and bad input (align.rl.offline_data, align.rl.decision_transformer).

Expected values are worked by hand in the comments, so a wrong sum, shift or mask fails.
"""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from align.config import ConfigError
from align.rl.decision_transformer import (
    DecisionTransformerTrainer,
    DTConfig,
    ReturnConditionedContext,
    build_dt_model,
    dt_action_loss,
    dt_forward,
    rollout_episodes,
    warn_unreached_targets,
)
from align.rl.envs import make_env
from align.rl.offline_data import (
    check_context_length,
    make_offline_dataset,
    make_windows,
    prepare_sequences,
    returns_to_go,
    sample_starts,
)
from align.rl.offline_dataset import (
    OfflineDataError,
    OfflineDataset,
    load_offline_dataset,
    save_offline_dataset,
)
from tests.support import reset_accelerate_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _episode(obs, actions, rewards):
    n = len(actions)
    return {
        "observations": np.asarray(obs, dtype=np.float32),
        "actions": np.asarray(actions, dtype=np.int64),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "terminals": np.eye(1, n, n - 1, dtype=bool)[0],
        "timeouts": np.zeros(n, dtype=bool),
        "timesteps": np.arange(n),
    }


def _toy_dataset() -> OfflineDataset:
    """Two CartPole-shaped episodes: 3 steps (rewards 1, 0, 2) and 5 steps (rewards 1 each)."""
    ep0 = _episode([[float(t)] * 4 for t in range(3)], [0, 1, 1], [1.0, 0.0, 2.0])
    ep1 = _episode([[10.0 + t] * 4 for t in range(5)], [1, 0, 1, 0, 1], [1.0] * 5)
    return OfflineDataset([ep0, ep1], ["a", "b"])


# --------------------------------------------------------------------------------------------------
# Returns-to-go
# --------------------------------------------------------------------------------------------------


def test_returns_to_go_hand_computed():
    # R_t = sum_{t' >= t} r_t': rewards 1, 0, 2, 3 -> 6, 5, 5, 3.
    assert returns_to_go([1.0, 0.0, 2.0, 3.0]).tolist() == [6.0, 5.0, 5.0, 3.0]
    # gamma 0.5: R_3 = 3, R_2 = 2 + 1.5 = 3.5, R_1 = 0 + 1.75, R_0 = 1 + 0.875.
    assert returns_to_go([1.0, 0.0, 2.0, 3.0], gamma=0.5).tolist() == [1.875, 1.75, 3.5, 3.0]
    assert returns_to_go([-1.0]).tolist() == [-1.0]


# --------------------------------------------------------------------------------------------------
# Windows: sampling, padding, normalisation
# --------------------------------------------------------------------------------------------------


def test_windows_are_left_padded_with_masks_and_scaled_returns():
    data = prepare_sequences(
        _toy_dataset(), num_states=None, act_dim=2, return_scale=2.0, normalize_states=False
    )
    b = make_windows(data, np.array([[0, 0], [1, 3], [1, 0]]), context_length=4)
    assert b["states"].shape == (3, 4, 4) and b["returns_to_go"].shape == (3, 4, 1)
    # Episode 0 from step 0: 3 real steps, one pad in front. R = 3, 2, 2 -> / 2 = 1.5, 1, 1.
    assert b["mask"][0].tolist() == [0, 1, 1, 1]
    assert b["returns_to_go"][0, :, 0].tolist() == [0.0, 1.5, 1.0, 1.0]
    assert b["timesteps"][0].tolist() == [0, 0, 1, 2]
    assert b["actions"][0].tolist() == [0, 0, 1, 1]
    assert b["states"][0, :, 0].tolist() == [0.0, 0.0, 1.0, 2.0]
    # Episode 1 from step 3: only steps 3 and 4 remain. R_3 = 2, R_4 = 1 -> 1.0, 0.5.
    assert b["mask"][1].tolist() == [0, 0, 1, 1]
    assert b["returns_to_go"][1, :, 0].tolist() == [0.0, 0.0, 1.0, 0.5]
    assert b["timesteps"][1].tolist() == [0, 0, 3, 4]
    assert b["states"][1, :, 0].tolist() == [0.0, 0.0, 13.0, 14.0]
    # Episode 1 from step 0: a full window, R = 5, 4, 3, 2 -> 2.5, 2, 1.5, 1.
    assert b["mask"][2].tolist() == [1, 1, 1, 1]
    assert b["returns_to_go"][2, :, 0].tolist() == [2.5, 2.0, 1.5, 1.0]
    assert b["actions"][2].tolist() == [1, 0, 1, 0]


def test_state_normalisation_uses_dataset_statistics():
    ds = OfflineDataset([_episode([[0.0, 5.0], [2.0, 5.0]], [0, 1], [1.0, 1.0])])
    data = prepare_sequences(ds, num_states=None, act_dim=2, return_scale=1.0)
    # Feature 0: mean 1, std 1 -> -1, +1. Feature 1 is constant: std 0 + 1e-6, so it normalises to 0.
    np.testing.assert_allclose(data.states[0][:, 0], [-1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(data.states[0][:, 1], [0.0, 0.0], atol=1e-6)


def test_discrete_states_are_one_hot():
    ep = _episode([3, 0], [0, 1], [0.0, 1.0])
    ep["observations"] = np.array([3, 0])
    data = prepare_sequences(OfflineDataset([ep]), num_states=4, act_dim=4, return_scale=1.0)
    assert data.states[0].tolist() == [[0, 0, 0, 1], [1, 0, 0, 0]]


def test_sampling_weights_episodes_by_length_and_starts_uniformly():
    rng = np.random.default_rng(0)
    picks = sample_starts([1, 3], 40_000, rng)
    frac = (picks[:, 0] == 1).mean()
    assert frac == pytest.approx(0.75, abs=0.01)  # length 3 of 4 steps in all
    assert set(picks[picks[:, 0] == 0, 1].tolist()) == {0}
    starts = picks[picks[:, 0] == 1, 1]
    assert set(starts.tolist()) == {0, 1, 2}
    assert np.bincount(starts) / len(starts) == pytest.approx([1 / 3] * 3, abs=0.015)


# --------------------------------------------------------------------------------------------------
# Model: action-token alignment, padding, loss
# --------------------------------------------------------------------------------------------------


def _tiny_model(state_dim=4, act_dim=2, K=5):
    cfg = DTConfig(hidden_size=16, n_layer=2, n_head=2, context_length=K, dropout=0.0, max_steps=1)
    torch.manual_seed(0)
    return build_dt_model(cfg, state_dim, act_dim, discrete=True).eval()


def _inputs(B=2, K=5, S=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "states": torch.randn(B, K, S, generator=g),
        "actions": torch.randint(0, 2, (B, K), generator=g),
        "returns_to_go": torch.randn(B, K, 1, generator=g),
        "timesteps": torch.arange(K).repeat(B, 1),
        "mask": torch.ones(B, K),
    }


def _preds(model, x):
    with torch.no_grad():
        return dt_forward(model, **x, discrete=True, act_dim=2)


def test_prediction_for_step_t_sees_return_and_state_of_t_but_not_its_action():
    model, x = _tiny_model(), _inputs()
    base = _preds(model, x)
    t = 2

    def changed(key, idx, value):
        y = {k: v.clone() for k, v in x.items()}
        y[key][idx] = value
        return (_preds(model, y) - base).abs().amax(-1)[0]  # (K,) change per position, sample 0

    # a_t and everything later: positions <= t unchanged (a_t enters only after the s_t token).
    d = changed("actions", (0, slice(t, None)), 1 - x["actions"][0, t:])
    assert d[: t + 1].max() == 0.0 and d[t + 1 :].min() > 0
    # R_t and s_t: position t changes, earlier ones do not (causal).
    d = changed("returns_to_go", (0, t), 3.0)
    assert d[:t].max() == 0.0 and d[t] > 1e-8
    d = changed("states", (0, t), 5.0)
    assert d[:t].max() == 0.0 and d[t] > 1e-8
    # a_{t-1} is seen by position t.
    d = changed("actions", (0, t - 1), 1 - x["actions"][0, t - 1])
    assert d[t] > 1e-8 and d[: t - 1].max() == 0.0


def test_left_padding_does_not_change_the_real_steps():
    model = _tiny_model(K=5)
    x = _inputs(B=1, K=3)
    short = _preds(model, x)
    # The same 3 steps left-padded to 5 with garbage in the padded slots, masked out.
    pad = {
        "states": torch.cat([torch.full((1, 2, 4), 7.0), x["states"]], 1),
        "actions": torch.cat([torch.ones(1, 2, dtype=torch.long), x["actions"]], 1),
        "returns_to_go": torch.cat([torch.full((1, 2, 1), -9.0), x["returns_to_go"]], 1),
        "timesteps": torch.cat([torch.full((1, 2), 17), x["timesteps"]], 1),
        "mask": torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]]),
    }
    padded = _preds(model, pad)
    torch.testing.assert_close(padded[:, 2:], short, atol=1e-5, rtol=1e-5)


def test_action_loss_hand_computed():
    # Step 0: logits (0, ln 3), action 1 -> p = 3/4, loss ln(4/3). Step 1: logits (ln 3, 0), action 1 ->
    # p = 1/4, loss ln 4. Step 2 is padding. Token mean: (ln(4/3) + ln 4) / 2; accuracy 1/2.
    logits = torch.tensor([[[0.0, math.log(3)], [math.log(3), 0.0], [50.0, -50.0]]])
    actions = torch.tensor([[1, 1, 1]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = dt_action_loss(logits, actions, mask, discrete=True)
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 2, rel=1e-6)
    assert m["action/accuracy"].item() == pytest.approx(0.5)
    assert m["action/steps"].item() == 2
    # Continuous: squared error averaged over 2 action dims, then over the 1 real step: ((1)^2 + (2)^2) / 2.
    pred = torch.tensor([[[0.0, 0.0], [9.0, 9.0]]])
    target = torch.tensor([[[1.0, -2.0], [0.0, 0.0]]])
    loss, _ = dt_action_loss(pred, target, torch.tensor([[1.0, 0.0]]), discrete=False)
    assert loss.item() == pytest.approx(2.5)


# --------------------------------------------------------------------------------------------------
# Evaluation: the return-to-go update and the K-step window
# --------------------------------------------------------------------------------------------------


def test_context_lowers_return_to_go_by_each_reward_and_keeps_last_k():
    ctx = ReturnConditionedContext(
        3, 1, 500.0, return_scale=500.0, discrete=True, act_dim=2, max_timestep=1000
    )
    ctx.observe(np.array([0.5]))
    w = ctx.inputs()
    assert w["mask"].tolist() == [0, 0, 1]
    assert w["returns_to_go"][:, 0].tolist() == [0.0, 0.0, 1.0]  # 500 / 500
    ctx.record(1, 1.0)  # R_1 = 500 - 1
    ctx.observe(np.array([0.6]))
    w = ctx.inputs()
    np.testing.assert_allclose(w["returns_to_go"][:, 0], [0.0, 1.0, 499 / 500])
    assert w["actions"].tolist() == [0, 1, 0]  # a_0 = 1; the current slot is a placeholder
    for t, r in [(0, 2.0), (1, 3.0), (0, 4.0)]:  # R: 499 -> 497 -> 494 -> 490
        ctx.record(t, r)
        ctx.observe(np.array([t]))
    w = ctx.inputs()
    assert w["mask"].tolist() == [1, 1, 1]
    assert w["timesteps"].tolist() == [2, 3, 4]  # the last K = 3 of steps 0..4
    np.testing.assert_allclose(w["returns_to_go"][:, 0] * 500, [497.0, 494.0, 490.0], rtol=1e-6)
    assert w["actions"].tolist() == [1, 0, 0]


def test_rollout_feeds_the_updated_return_to_go_to_the_model():
    seen = []

    def predict(batch):
        seen.append(batch["returns_to_go"][0, :, 0].clone())
        return torch.tensor([[0.0, 1.0]])  # logits; argmax = push right

    ds = OfflineDataset([_episode([[0.0] * 4, [1.0] * 4], [0, 1], [1.0, 1.0])])
    data = prepare_sequences(ds, num_states=None, act_dim=2, return_scale=100.0)
    rets, lens = rollout_episodes(
        "CartPole-v1",
        predict,
        data,
        target_return=50.0,
        context_length=4,
        episodes=1,
        seed=0,
        num_states=None,
        sample=False,
    )
    # CartPole pays 1 per step: the model sees R = 50, 49, 48, ... (scaled by 1/100), last 4 steps kept.
    assert seen[0].tolist() == pytest.approx([0, 0, 0, 0.5])
    assert seen[1].tolist() == pytest.approx([0, 0, 0.5, 0.49])
    assert seen[5].tolist() == pytest.approx([0.48, 0.47, 0.46, 0.45])
    assert lens[0] == len(seen) and rets[0] == lens[0]


# --------------------------------------------------------------------------------------------------
# Datasets: generation, storage, bad input
# --------------------------------------------------------------------------------------------------


def test_generated_dataset_is_deterministic_and_round_trips(tmp_path):
    a = make_offline_dataset("CartPole-v1", "medium-replay", seed=3, steps=600)
    b = make_offline_dataset("CartPole-v1", "medium-replay", seed=3, steps=600)
    assert [len(e["actions"]) for e in a.episodes] == [len(e["actions"]) for e in b.episodes]
    for x, y in zip(a.episodes, b.episodes):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    for ext in ("parquet", "jsonl"):
        back = load_offline_dataset(save_offline_dataset(a, tmp_path / f"d.{ext}"), make_env("CartPole-v1"))
        np.testing.assert_allclose(back.returns, a.returns)
        np.testing.assert_allclose(back.episodes[1]["observations"], a.episodes[1]["observations"])
        assert back.episodes[0]["timesteps"].tolist() == list(range(len(a.episodes[0]["actions"])))
    stats = json.loads((tmp_path / "d.stats.json").read_text())
    assert stats["return_max"] == a.returns.max() and stats["steps"] >= 600


def test_medium_scores_between_random_and_expert():
    rets = {
        k: make_offline_dataset("CartPole-v1", k, steps=8000).returns.mean()
        for k in ("random", "medium", "expert")
    }
    assert rets["expert"] == 500.0
    assert rets["random"] < 40 and 500 / 4 < rets["medium"] < 500 * 0.6, rets


def test_dataset_without_rewards_is_an_error_naming_file_row_and_field(tmp_path):
    path = tmp_path / "norewards.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{"observations": [[0.0] * 4], "actions": [0], "terminals": [True], "timesteps": [0]}]
        ),
        path,
    )
    with pytest.raises(OfflineDataError, match=r"norewards\.parquet, row 0 .*missing field 'rewards'"):
        load_offline_dataset(path)


def _write_rows(path, rows):
    """Write episode dicts as .jsonl or .parquet (by suffix), the way a user's own dataset file would be."""
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


_GOOD_ROW = {
    "observations": [[0.0] * 4] * 3,
    "actions": [0, 1, 0],
    "rewards": [1.0, 1.0, 1.0],
    "terminals": [False, False, True],
    "timesteps": [0, 1, 2],
}


@pytest.mark.parametrize(
    ("field", "values", "message"),
    [
        # A null inside an observation: numpy would cast it to NaN, and the state normalisation with it
        (
            "observations",
            [[0.0] * 4, [0.0, None, 0.0, 0.0], [0.0] * 4],
            r"'observations' is null at step 1, entry 1; expected a finite number",
        ),
        (
            "observations",
            [[0.0] * 4, [0.0] * 4, [0.0, 0.0, 0.0, math.inf]],
            r"'observations' is inf at step 2, entry 3",
        ),
        ("observations", [[math.nan] * 4, [0.0] * 4, [0.0] * 4], r"'observations' is nan at step 0, entry 0"),
        ("terminals", [False, None, True], r"'terminals' is null at step 1; expected true or false"),
        ("timesteps", [0, None, 2], r"'timesteps' is null at step 1; expected an integer >= 0"),
        ("timesteps", [-1, 0, 1], r"'timesteps' is -1 at step 0; expected an integer >= 0"),
    ],
)
@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_null_or_non_finite_steps_are_an_error_naming_file_row_field_and_step(
    tmp_path, field, values, message, ext
):
    path = _write_rows(tmp_path / f"bad.{ext}", [_GOOD_ROW, {**_GOOD_ROW, field: values}])
    with pytest.raises(OfflineDataError, match=rf"bad\.{ext}, row 1 \(episode 1\): field {message}"):
        load_offline_dataset(path)


def test_null_discrete_observation_is_an_error_not_a_type_error(tmp_path):
    row = {**_GOOD_ROW, "observations": [0, None, 5]}
    path = _write_rows(tmp_path / "lake.jsonl", [row])
    with pytest.raises(OfflineDataError, match=r"lake\.jsonl, row 0 .*'observations' is null at step 1"):
        load_offline_dataset(path)


def test_mismatched_lengths_are_an_error_naming_row_and_field(tmp_path):
    good = {
        "observations": [[0.0] * 4] * 3,
        "actions": [0, 1, 0],
        "rewards": [1, 1, 1],
        "terminals": [False, False, True],
        "timesteps": [0, 1, 2],
    }
    bad = {**good, "actions": [0, 1]}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(
        OfflineDataError, match=r"bad\.jsonl, row 1 .*'actions' has 2 entries but 'observations' has 3"
    ):
        load_offline_dataset(path)


def test_actions_outside_the_action_space_are_an_error(tmp_path):
    row = {
        "observations": [[0.0] * 4],
        "actions": [2],
        "rewards": [1.0],
        "terminals": [True],
        "timesteps": [0],
    }
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(OfflineDataError, match=r"row 0 .*'actions' is 2 at step 0, outside"):
        load_offline_dataset(path, make_env("CartPole-v1"))


def test_target_above_the_data_warns_but_is_allowed():
    with pytest.warns(UserWarning, match=r"\[600\.0\] exceed the best episode return in d \(500\)"):
        assert warn_unreached_targets([100.0, 600.0], 500.0, "d") == [600.0]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_unreached_targets([500.0], 500.0, "d") == []


def test_context_longer_than_every_episode_is_refused(tmp_path):
    ds = _toy_dataset()
    check_context_length(ds, 5)
    with pytest.raises(
        ValueError, match=r"context_length=6 is longer than every episode .*longest has 5 steps"
    ):
        check_context_length(ds, 6)
    reset_accelerate_state()
    cfg = DTConfig(output_dir=str(tmp_path / "o"), context_length=6, hidden_size=8, n_layer=1, max_steps=1)
    with pytest.raises(ValueError, match="at most 5"):
        DecisionTransformerTrainer(cfg, dataset=ds)
    reset_accelerate_state()


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="context_length"):
        DTConfig(context_length=0)
    with pytest.raises(ConfigError, match="target_returns"):
        DTConfig(target_returns=[])
    with pytest.raises(ConfigError, match="n_head"):
        DTConfig(hidden_size=10, n_head=3)
    with pytest.raises(ConfigError, match="dataset must be one of"):
        DTConfig(dataset="med")


def test_a_few_training_steps_lower_the_loss_and_resume_exactly(tmp_path):
    """The trainer end to end on the toy data: the loss falls, and a resumed run repeats the same windows."""
    common = dict(
        context_length=3,
        hidden_size=16,
        n_layer=1,
        dropout=0.0,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        warmup_steps=0,
        disable_progress_bar=True,
        logging_steps=1,
    )
    reset_accelerate_state()
    t = DecisionTransformerTrainer(
        DTConfig(output_dir=str(tmp_path / "a"), max_steps=30, **common), dataset=_toy_dataset()
    )
    t.train()
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss/action"] < 0.5 * rows[0]["loss/action"]
    # Interrupt at step 4 and resume to 6: same metrics as 6 uninterrupted steps.
    reset_accelerate_state()
    full = DecisionTransformerTrainer(
        DTConfig(output_dir=str(tmp_path / "f"), max_steps=6, **common), dataset=_toy_dataset()
    )
    full.train()
    reset_accelerate_state()
    part = DecisionTransformerTrainer(
        DTConfig(output_dir=str(tmp_path / "p"), max_steps=4, save_steps=4, **common), dataset=_toy_dataset()
    )
    part.train()
    reset_accelerate_state()
    resumed = DecisionTransformerTrainer(
        DTConfig(output_dir=str(tmp_path / "p"), max_steps=6, resume_from_checkpoint="latest", **common),
        dataset=_toy_dataset(),
    )
    resumed.train()
    reset_accelerate_state()
    a = [json.loads(x)["loss"] for x in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x)["loss"] for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    assert a == pytest.approx(b, rel=1e-6)
