"""align.monitors: each monitor on a constructed run that fires it and one that does not; one warning then a
count; state round trip; the Trainer.log hook, and a resumed run logging the same monitor values."""

import json
import logging
from pathlib import Path

import pytest

from align import monitors as M
from align.config import ConfigError, TrainConfig
from align.trainer import Callback, read_metrics
from tests import support as testing
from tests.integration import tiny_supervised


def _feed(monitor: M.Monitor, rows: list[dict]) -> list[dict]:
    return [monitor.update(step, row) for step, row in enumerate(rows, 1)]


def _fired(outs: list[dict], name: str) -> float:
    return max((o.get(f"monitor/{name}/fired", 0.0) for o in outs), default=0.0)


# --- repeated_ngram_rate


def test_repeated_ngram_rate_by_hand():
    assert M.repeated_ngram_rate(["one two three four five six"]) == 0.0
    # 4-grams of "a b c d a b c d": abcd bcda cdab dabc abcd -> 5, 4 distinct: 1 - 4/5
    assert M.repeated_ngram_rate(["a b c d a b c d"]) == pytest.approx(0.2)
    # texts shorter than n have no n-grams and are left out of the mean
    assert M.repeated_ngram_rate(["a b c d a b c d", "short"]) == pytest.approx(0.2)
    assert M.repeated_ngram_rate(["x y z w", "a b c d a b c d"]) == pytest.approx(0.1)
    assert M.repeated_ngram_rate([]) == 0.0 and M.repeated_ngram_rate(["hi"]) == 0.0
    assert M.repeated_ngram_rate(["The answer is 4. " * 20]) > 0.9
    assert M.repeated_ngram_rate(["a a a"], n=1) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="n must be"):
        M.repeated_ngram_rate(["a"], n=0)


# --- each monitor: fires / does not


def test_length_change_explodes_collapses_or_not():
    def rows(a, b):
        return [{"completions/mean_length": a}] * 3 + [{"completions/mean_length": b}] * 3

    explode = _feed(M.LengthChangeMonitor(change=1.0, window=3), rows(100, 250))
    assert explode[-1]["monitor/length_change/ratio"] == pytest.approx(2.5)
    assert explode[-1]["monitor/length_change/firing"] == 1.0
    assert "monitor/length_change/ratio" not in explode[4]  # one window only: no ratio yet
    collapse = _feed(M.LengthChangeMonitor(change=1.0, window=3), rows(100, 40))
    assert collapse[-1]["monitor/length_change/firing"] == 1.0
    calm = _feed(M.LengthChangeMonitor(change=1.0, window=3), rows(100, 150))
    assert calm[-1]["monitor/length_change/ratio"] == pytest.approx(1.5)
    assert _fired(calm, "length_change") == 0.0
    assert _feed(M.LengthChangeMonitor(), [{"loss": 1.0}]) == [{}]  # no input, no keys


def test_clipped_ratio():
    def rows(*values):
        return [{"completions/clipped_ratio": v} for v in values]

    growing = _feed(M.ClippedMonitor(0.2, window=3), rows(0.1, 0.1, 0.1, 0.5, 0.6, 0.7))
    assert growing[-1] == {
        "monitor/clipped/ratio": pytest.approx(0.6),
        "monitor/clipped/firing": 1.0,
        "monitor/clipped/fired": 3.0,  # rows 4-6: the last window's mean above 0.2 and the first's (0.1)
    }
    assert "firing" in str(growing[1]) and growing[1]["monitor/clipped/firing"] == 0.0  # no first window yet
    # The main job: an untrained model rambles past the limit and learns to stop. Not a firing.
    learning = _feed(M.ClippedMonitor(0.2, window=3), rows(0.66, 0.6, 0.5, 0.4, 0.3, 0.25, 0.1))
    assert _fired(learning, "clipped") == 0.0
    calm = _feed(M.ClippedMonitor(0.2, window=3), rows(0.1, 0.1, 0.1, 0.1, 0.1))
    assert _fired(calm, "clipped") == 0.0
    ppo = _feed(
        M.ClippedMonitor(0.2, window=1),
        [{"completions/eos_fraction": 0.9}, {"completions/eos_fraction": 0.4}],
    )
    assert ppo[-1]["monitor/clipped/ratio"] == pytest.approx(0.6) and ppo[-1]["monitor/clipped/firing"] == 1.0


def _eval_run(final_eval: float) -> list[dict]:
    return [
        {"reward/mean": 0.2},
        {"reward/mean": 0.2, "eval/accuracy": 0.3},
        {"reward/mean": 0.5},
        {"reward/mean": 0.5, "eval/accuracy": final_eval},
    ]


def test_reward_rising_while_eval_flat():
    outs = _feed(M.RewardVsEvalMonitor(rise=0.1, flat=0.0), _eval_run(0.3))
    assert outs[0] == {} and outs[2] == {}  # only evaluation rows report
    assert outs[1] == {"monitor/reward_vs_eval/firing": 0.0, "monitor/reward_vs_eval/fired": 0.0}
    assert outs[3]["monitor/reward_vs_eval/reward_change"] == pytest.approx(0.3)
    assert outs[3]["monitor/reward_vs_eval/eval_change"] == pytest.approx(0.0)
    assert outs[3]["monitor/reward_vs_eval/firing"] == 1.0
    honest = _feed(M.RewardVsEvalMonitor(rise=0.1, flat=0.0), _eval_run(0.4))
    assert _fired(honest, "reward_vs_eval") == 0.0
    # environment runs: env/return against eval/success_rate
    env = [
        {"env/return": 0.0, "eval/success_rate": 0.5},
        {"env/return": 1.0, "eval/success_rate": 0.4},
    ]
    assert _feed(M.RewardVsEvalMonitor(), env)[-1]["monitor/reward_vs_eval/firing"] == 1.0


def _proxy_monitor(**kw) -> M.ProxyGoldMonitor:
    cfg = TrainConfig()
    return M.ProxyGoldMonitor(
        "proxy_vs_gold",
        cfg.monitor_proxy_rewards,
        cfg.monitor_gold_rewards,
        exclude=cfg.monitor_reward_models,
        window=2,
        **kw,
    )


def test_format_rising_while_correctness_flat():
    def row(fmt, math):
        return {
            "reward/boxed_format/mean": fmt,
            "reward/boxed_format/std": 0.4,  # a statistic, never a proxy
            "reward/math/mean": math,
            "reward/math/none_frac": 0.0,
            "reward/mean": fmt + math,
        }

    hacked = _feed(_proxy_monitor(), [row(0.1, 0.2)] * 2 + [row(0.6, 0.2)] * 2)
    last = hacked[-1]
    assert last["monitor/proxy_vs_gold/boxed_format"] == pytest.approx(0.5)
    assert last["monitor/proxy_vs_gold/gold"] == pytest.approx(0.0)
    assert last["monitor/proxy_vs_gold/firing"] == 1.0
    assert not any("std" in k or "none_frac" in k or k.endswith("/math") for k in last)
    learning = _feed(_proxy_monitor(), [row(0.1, 0.2)] * 2 + [row(0.6, 0.4)] * 2)
    assert learning[-1]["monitor/proxy_vs_gold/gold"] == pytest.approx(0.2)
    assert _fired(learning, "proxy_vs_gold") == 0.0
    # only the gold, no proxy: nothing to watch
    assert _feed(_proxy_monitor(), [{"reward/math/mean": 0.5}]) == [{}]


def test_rubric_criterion_rising_while_verifier_criterion_flat():
    def row(boxed, correct):
        return {
            "reward/rub/boxed": boxed,
            "reward/rub/correct": correct,
            "reward/rub/flagged": 3.0,  # a count, never a proxy
            "reward/rub/clear/judge_mass": 0.9,
        }

    outs = _feed(_proxy_monitor(), [row(0.0, 0.3)] * 2 + [row(0.8, 0.25)] * 2)
    assert outs[-1]["monitor/proxy_vs_gold/rub/boxed"] == pytest.approx(0.8)
    assert "monitor/proxy_vs_gold/rub/flagged" not in outs[-1]
    assert outs[-1]["monitor/proxy_vs_gold/firing"] == 1.0
    calm = _feed(_proxy_monitor(), [row(0.0, 0.3)] * 2 + [row(0.05, 0.3)] * 2)
    assert _fired(calm, "proxy_vs_gold") == 0.0


def test_reward_model_rising_while_gold_flat():
    def monitors():
        return M.Monitors.from_config(TrainConfig(monitor_window=2), verbose=False)

    def row(score, gold):
        return {"reward/reward_model/mean": score, "reward/math/mean": gold}

    ms = monitors()
    hacked = [ms.update(s, r) for s, r in enumerate([row(0.0, 0.3)] * 2 + [row(1.5, 0.3)] * 2, 1)]
    assert hacked[-1]["monitor/reward_model_vs_gold/reward_model"] == pytest.approx(1.5)
    assert hacked[-1]["monitor/reward_model_vs_gold/firing"] == 1.0
    # the reward model is its own monitor's proxy, not a format proxy
    assert not any(k.startswith("monitor/proxy_vs_gold") for k in hacked[-1])
    ms = monitors()
    honest = [ms.update(s, r) for s, r in enumerate([row(0.0, 0.3)] * 2 + [row(1.5, 0.5)] * 2, 1)]
    assert _fired(honest, "reward_model_vs_gold") == 0.0
    ms = monitors()  # a rise smaller than monitor_rm_rise (0.5 logits) is noise
    small = [ms.update(s, r) for s, r in enumerate([row(0.0, 0.3)] * 2 + [row(0.3, 0.3)] * 2, 1)]
    assert _fired(small, "reward_model_vs_gold") == 0.0


def test_repetition():
    hot = _feed(M.RepetitionMonitor(0.3, window=2), [{"completions/repeated_ngram_rate": 0.6}] * 3)
    assert (
        hot[-1]["monitor/repetition/rate"] == pytest.approx(0.6) and hot[-1]["monitor/repetition/fired"] == 3
    )
    calm = _feed(M.RepetitionMonitor(0.3, window=2), [{"completions/repeated_ngram_rate": 0.05}] * 3)
    assert _fired(calm, "repetition") == 0.0


def test_entropy_collapse_fraction_and_floor():
    def rows(*xs):
        return [{"entropy": x} for x in xs]

    collapse = _feed(M.EntropyCollapseMonitor(0.1, 0.01, window=2), rows(1.0, 1.0, 0.05, 0.05))
    assert collapse[-1]["monitor/entropy_collapse/fraction"] == pytest.approx(0.05)
    assert collapse[-1]["monitor/entropy_collapse/firing"] == 1.0
    healthy = _feed(M.EntropyCollapseMonitor(0.1, 0.01, window=2), rows(1.0, 1.0, 0.5, 0.4))
    assert _fired(healthy, "entropy_collapse") == 0.0
    floor = _feed(M.EntropyCollapseMonitor(0.0, 0.01, window=2), rows(0.005))
    assert floor[0]["monitor/entropy_collapse/firing"] == 1.0


def test_kl_spike():
    def rows(*xs):
        return [{"kl": x} for x in xs]

    spike = _feed(M.KLSpikeMonitor(5.0, 0.01, window=3), rows(0.02, 0.02, 0.03, 0.2))
    assert spike[-1]["monitor/kl_spike/ratio"] == pytest.approx(10.0)
    assert spike[-1]["monitor/kl_spike/firing"] == 1.0
    assert "monitor/kl_spike/ratio" not in spike[2]  # a full window of history first
    steady = _feed(M.KLSpikeMonitor(5.0, 0.01, window=3), rows(0.02, 0.02, 0.03, 0.04, 0.05))
    assert _fired(steady, "kl_spike") == 0.0
    tiny = _feed(M.KLSpikeMonitor(5.0, 0.01, window=3), rows(1e-4, 1e-4, 1e-4, 5e-3))  # x50, under the floor
    assert tiny[-1]["monitor/kl_spike/ratio"] == pytest.approx(50.0)
    assert _fired(tiny, "kl_spike") == 0.0


def test_zero_variance_groups_staying_high(caplog):
    rows = [{"reward/zero_std_group_fraction": 0.9}] * 3
    with caplog.at_level(logging.WARNING, logger="align.monitors"):
        outs = _feed(M.ZeroVarianceMonitor(0.75, window=3), rows)
    assert [o["monitor/zero_variance/firing"] for o in outs] == [0.0, 0.0, 1.0]  # a full window high
    (record,) = caplog.records
    assert "num_generations" in record.getMessage() and "temperature" in record.getMessage()
    calm = _feed(M.ZeroVarianceMonitor(0.75, window=3), [{"reward/zero_std_group_fraction": 0.5}] * 5)
    assert _fired(calm, "zero_variance") == 0.0


def test_judge_injection_flagged_fraction():
    hot = _feed(M.FlaggedMonitor(0.05), [{"completions/count": 16.0, "reward/rub/flagged": 4.0}])
    assert hot[0]["monitor/judge_injection/fraction"] == pytest.approx(0.25)
    assert hot[0]["monitor/judge_injection/firing"] == 1.0
    clean = _feed(M.FlaggedMonitor(0.05), [{"completions/count": 16.0}, {"completions/count": 16.0}])
    assert clean[0]["monitor/judge_injection/fraction"] == 0.0 and _fired(clean, "judge_injection") == 0.0
    assert _feed(M.FlaggedMonitor(0.05), [{"reward/rub/flagged": 4.0}]) == [{}]  # no completion count


# --- warning once, then a count; the set; state


def test_warns_once_then_counts(caplog):
    rows = [{"completions/clipped_ratio": v} for v in (0.1, 0.1, 0.9, 0.9, 0.9, 0.9)]
    with caplog.at_level(logging.WARNING, logger="align.monitors"):
        outs = _feed(M.ClippedMonitor(0.2, window=2), rows)
    assert [o["monitor/clipped/fired"] for o in outs] == [0.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "monitor clipped fired at step 3" in msg and "max_new_tokens" in msg and "\n" not in msg
    caplog.clear()
    quiet = M.ClippedMonitor(0.2)
    quiet.verbose = False
    with caplog.at_level(logging.WARNING, logger="align.monitors"):
        _feed(quiet, rows)
    assert not caplog.records


def test_from_config_and_switch():
    ms = M.Monitors.from_config(TrainConfig())
    names = [m.name for m in ms.monitors]
    assert len(names) == len(set(names)) == 10
    assert len(M.Monitors.from_config(TrainConfig(monitors=False))) == 0
    with pytest.raises(ConfigError, match="monitor_window"):
        TrainConfig(monitor_window=0)
    with pytest.raises(ConfigError, match="monitor_clipped_ratio"):
        TrainConfig(monitor_clipped_ratio=1.5)


def _busy_rows(n: int) -> list[dict]:
    """Every monitor's inputs, drifting so that several fire."""
    rows = []
    for s in range(1, n + 1):
        row = {
            "completions/mean_length": 50.0 + 20 * s,
            "completions/clipped_ratio": 0.05 * s,
            "completions/repeated_ngram_rate": 0.04 * s,
            "completions/count": 8.0,
            "entropy": 1.0 / s,
            "kl": 0.02 if s % 7 else 0.5,
            "reward/zero_std_group_fraction": 0.1 * (s % 10),
            "reward/mean": 0.1 * s,
            "reward/boxed_format/mean": 0.1 * s,
            "reward/math/mean": 0.3,
            "reward/reward_model/mean": 0.5 * s,
        }
        if s % 5 == 0:
            row["eval/accuracy"] = 0.4
            row["reward/rub/flagged"] = 2.0
        rows.append(row)
    return rows


def test_state_round_trip_gives_the_same_values():
    cfg = TrainConfig(monitor_window=3)
    rows = _busy_rows(20)
    full = M.Monitors.from_config(cfg, verbose=False)
    expected = [full.update(s, r) for s, r in enumerate(rows, 1)]
    assert sum(_fired([expected[-1]], m.name) > 0 for m in full.monitors) >= 6, expected[-1]
    first = M.Monitors.from_config(cfg, verbose=False)
    for s, r in enumerate(rows[:9], 1):
        first.update(s, r)
    state = json.loads(json.dumps(first.state_dict()))  # plain JSON, as the checkpoint stores it
    resumed = M.Monitors.from_config(cfg, verbose=False)
    resumed.load_state_dict(state)
    assert [resumed.update(s, r) for s, r in enumerate(rows[9:], 10)] == expected[9:]


# --- the hook in Trainer.log


class _Rollout(Callback):
    """Adds rollout-like metrics to each step (a function of the step, so a resumed run adds the same)."""

    def __init__(self, interrupt_at: int = 0) -> None:
        self.interrupt_at = interrupt_at

    def on_step_end(self, trainer, metrics):
        s = trainer.state.step
        if s == self.interrupt_at:
            raise KeyboardInterrupt
        metrics["completions/mean_length"] = 20.0 if s <= 6 else 60.0
        metrics["completions/clipped_ratio"] = 0.1 if s <= 2 else 0.5
        metrics["kl"] = 0.02 if s != 10 else 0.4
        metrics["entropy"] = 1.0 if s <= 4 else 0.05


def _tiny_run(out: Path, *extra: str, interrupt_at: int = 0) -> list[dict]:
    args = ["--output_dir", str(out), "--disable_progress_bar", "true", "--max_steps", "12"]
    args += ["--save_steps", "4", "--monitor_window", "2", *extra]
    config = tiny_supervised.parse_config(tiny_supervised.TinyConfig, args)
    trainer = tiny_supervised.TinyTrainer(config)
    trainer.callbacks.append(_Rollout(interrupt_at))
    trainer.train()
    return read_metrics(out)


def _monitor_keys(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k.startswith("monitor/")} for r in rows]


def test_trainer_logs_monitors_and_resume_keeps_them(tmp_path, caplog):
    testing.reset_accelerate_state()
    try:
        with caplog.at_level(logging.WARNING, logger="align.monitors"):
            full = _tiny_run(tmp_path / "full")
        assert full[-1]["monitor/clipped/fired"] == 10.0  # steps 3-12: above 0.2 and the first window's 0.1
        assert full[-1]["monitor/length_change/fired"] >= 1.0
        assert full[9]["monitor/kl_spike/firing"] == 1.0  # step 10
        assert full[-1]["monitor/entropy_collapse/firing"] == 1.0
        warned = sorted(r.getMessage().split()[1] for r in caplog.records)
        assert warned == ["clipped", "entropy_collapse", "kl_spike", "length_change"]  # once each

        testing.reset_accelerate_state()
        with pytest.raises(KeyboardInterrupt):
            _tiny_run(tmp_path / "cut", interrupt_at=7)
        testing.reset_accelerate_state()
        resumed = _tiny_run(tmp_path / "cut", "--resume_from_checkpoint", "latest")
        assert [r["step"] for r in resumed] == list(range(1, 13))
        assert _monitor_keys(resumed) == _monitor_keys(full)

        testing.reset_accelerate_state()
        off = _tiny_run(tmp_path / "off", "--monitors", "false")
        assert not any(k.startswith("monitor/") for r in off for k in r)
    finally:
        testing.reset_accelerate_state()
