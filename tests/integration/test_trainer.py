"""The Trainer base on a tiny supervised problem: invariances, distributed parity, resume, guards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from align.trainer import Callback, NonFiniteError, read_metrics
from tests.integration import tiny_supervised

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each in-process run here starts clean


def _run(tmp: Path, name: str, *extra: str, callbacks=None) -> tuple[dict, list[dict]]:
    out = tmp / name
    args = ["--output_dir", str(out), "--learning_rate", "0.05", "--disable_progress_bar", "true", *extra]
    if callbacks is None:
        params = tiny_supervised.main(args)
    else:
        config = tiny_supervised.parse_config(tiny_supervised.TinyConfig, args)
        trainer = tiny_supervised.TinyTrainer(config)
        trainer.callbacks.extend(callbacks)
        trainer.train()
        params = {k: v.flatten().tolist() for k, v in trainer.model.state_dict().items()}
    return params, read_metrics(out)


def _close(a: dict, b: dict, tol: float = 1e-6) -> bool:
    return all(torch.allclose(torch.tensor(a[k]), torch.tensor(b[k]), atol=tol, rtol=0) for k in a)


def _losses(rows: list[dict]) -> list[float]:
    return [r["loss"] for r in rows]


def test_loss_decreases_and_files_written(tmp_path):
    params, rows = _run(tmp_path, "a", "--max_steps", "30")
    assert len(rows) == 30 and rows[0]["step"] == 1 and rows[-1]["step"] == 30
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    assert (tmp_path / "a" / "config.yaml").exists()
    assert (tmp_path / "a" / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("token_loss", ["false", "true"])
def test_batch8_acc1_equals_batch2_acc4(tmp_path, token_loss):
    a, _ = _run(
        tmp_path, "a", "--max_steps", "8", "--per_device_train_batch_size", "8", "--token_loss", token_loss
    )
    b, _ = _run(
        tmp_path,
        "b",
        "--max_steps",
        "8",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "4",
        "--token_loss",
        token_loss,
    )
    assert _close(a, b), (a, b)


def test_token_loss_needs_item_weighting(tmp_path):
    """Without num_items, averaging micro-batch token means is not the step's token mean: the test above would
    fail. Check that the variable-length data really makes the two differ."""
    a, _ = _run(
        tmp_path, "a", "--max_steps", "8", "--per_device_train_batch_size", "8", "--token_loss", "true"
    )
    orig = tiny_supervised.TinyTrainer.num_items
    tiny_supervised.TinyTrainer.num_items = lambda self, batch: None
    try:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        b, _ = _run(
            tmp_path, "b", "--max_steps", "8", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "4", "--token_loss", "true",
        )  # fmt: skip
    finally:
        tiny_supervised.TinyTrainer.num_items = orig
    assert not _close(a, b, tol=1e-5)


class _Interrupt(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, metrics):
        if trainer.state.step == self.at:
            raise KeyboardInterrupt


def test_resume_equals_uninterrupted(tmp_path):
    common = [
        "--max_steps",
        "12",
        "--save_steps",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--logging_steps",
        "1",
    ]
    full, full_rows = _run(tmp_path, "full", *common, "--dataset_size", "20", "--token_loss", "true")
    with pytest.raises(KeyboardInterrupt):
        _run(
            tmp_path,
            "cut",
            *common,
            "--dataset_size",
            "20",
            "--token_loss",
            "true",
            callbacks=[_Interrupt(7)],
        )
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    rows_before = read_metrics(tmp_path / "cut")
    assert rows_before[-1]["step"] == 6  # step 7 raised before it was logged
    resumed, rows = _run(
        tmp_path,
        "cut",
        *common,
        "--dataset_size",
        "20",
        "--token_loss",
        "true",
        "--resume_from_checkpoint",
        "latest",
    )
    assert _close(full, resumed, tol=1e-7)
    assert [r["step"] for r in rows] == list(range(1, 13))
    # Epochs of 20 rows / batch 8 end mid-step, so this also checks the data order across epochs on resume.
    assert _losses(rows) == pytest.approx(_losses(full_rows), abs=1e-7)
    assert [r["lr"] for r in rows] == [r["lr"] for r in full_rows]


def test_existing_output_dir_is_refused(tmp_path):
    _run(tmp_path, "a", "--max_steps", "2")
    (tmp_path / "a" / "my_notes.txt").write_text("keep me")
    AcceleratorState._reset_state(True)
    with pytest.raises(FileExistsError, match="resume_from_checkpoint"):
        _run(tmp_path, "a", "--max_steps", "2")
    AcceleratorState._reset_state(True)
    _run(tmp_path, "a", "--max_steps", "3", "--overwrite_output_dir", "true")
    assert (tmp_path / "a" / "my_notes.txt").read_text() == "keep me"
    assert len(read_metrics(tmp_path / "a")) == 3


def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
    with pytest.raises(NonFiniteError, match=r"step 5: 3 optimizer steps in a row"):
        _run(
            tmp_path,
            "a",
            "--max_steps",
            "10",
            "--inject_nan_at_step",
            "3",
            "--max_consecutive_nonfinite",
            "3",
        )
    rows = read_metrics(tmp_path / "a")
    assert [r["train/nonfinite_steps"] for r in rows] == [0, 0, 1, 2]


def test_nonfinite_step_leaves_parameters_unchanged(tmp_path):
    a, _ = _run(tmp_path, "a", "--max_steps", "2")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    b, rows = _run(
        tmp_path, "b", "--max_steps", "4", "--inject_nan_at_step", "3", "--max_consecutive_nonfinite", "5"
    )
    assert _close(a, b, tol=0)
    assert rows[-1]["train/nonfinite_steps"] == 2


def test_warmup_schedule(tmp_path):
    _, rows = _run(tmp_path, "a", "--max_steps", "6", "--warmup_steps", "4", "--lr_scheduler_type", "linear")
    # get_last_lr after step k of linear warm-up over 4 steps then linear decay to 0 at step 6.
    expected = [0.05 * 1 / 4, 0.05 * 2 / 4, 0.05 * 3 / 4, 0.05, 0.05 * 1 / 2, 0.0]
    assert [r["lr"] for r in rows] == pytest.approx(expected)


@pytest.mark.parametrize("token_loss", ["false", "true"])
def test_two_processes_equal_one(tmp_path, token_loss):
    """accelerate launch with 2 CPU processes (gloo DDP) ends with the 1-process parameters, same global batch."""
    common = [
        "--max_steps",
        "6",
        "--learning_rate",
        "0.05",
        "--disable_progress_bar",
        "true",
        "--token_loss",
        token_loss,
    ]
    one, _ = _run(
        tmp_path, "one", *common[:-2], "--per_device_train_batch_size", "8", "--token_loss", token_loss
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate_configs/cpu.yaml"),
        "--main_process_port", "0", str(ROOT / "tests/integration/tiny_supervised.py"),
        "--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4", *common,
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "params.json").read_text())
    rows = read_metrics(tmp_path / "two")
    assert len(rows) == 6
    assert _close(one, two, tol=1e-5), (one, two)


# --- checkpoints that load without running code, and damaged ones -------------------------------------


class _Payload:
    """Unpickling this creates the file ``path``: proof that a loader ran code from a checkpoint."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _saved_run(tmp_path: Path) -> Path:
    _run(tmp_path, "run", "--max_steps", "4", "--save_steps", "2", "--save_total_limit", "0")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return tmp_path / "run"


def _resume(out: Path):
    return _run(out.parent, out.name, "--max_steps", "6", "--resume_from_checkpoint", "latest")


def test_resume_never_unpickles_a_planted_payload(tmp_path):
    """Every file of every checkpoint replaced by a pickle whose loading would create a file, plus
    accelerate's custom-state file name: resume refuses each (naming it) and the payload never runs."""
    import pickle

    from align.checkpoint import CheckpointError

    out = _saved_run(tmp_path)
    ran = tmp_path / "payload_ran"
    for ckpt in sorted((out / "checkpoints").iterdir()):
        for f in ckpt.iterdir():
            if f.name != "COMPLETE":
                f.write_bytes(pickle.dumps(_Payload(str(ran))))
        (ckpt / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Payload(str(ran))))
    with pytest.raises(CheckpointError, match=r"step-2.*(unreadable|not loadable|Error)"):
        _resume(out)
    assert not ran.exists()


def test_latest_skips_incomplete_and_falls_back_from_damaged(tmp_path, capsys):
    """A kill mid-write leaves a folder without COMPLETE (never 'latest'); a truncated file in the newest
    complete checkpoint is named, and resume falls back to the previous complete one, saying so."""
    from align.trainer import list_checkpoints

    out = _saved_run(tmp_path)
    half = out / "checkpoints" / "step-6"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    assert [p.name for p in list_checkpoints(out)] == ["step-2", "step-4"]
    model = out / "checkpoints" / "step-4" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    _, rows = _resume(out)
    assert "checkpoints/step-4/model.safetensors" in capsys.readouterr().out
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # steps 3-4 logged again from step 2, once each
