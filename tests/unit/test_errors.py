"""A user's mistake ends with one line naming it and exit status 2 (align.errors.run_main); --debug shows the
traceback. The cases a new user met (issue 15): a data file that is not UTF-8, a model folder that is
missing or empty, an unknown FrozenLake map, an output directory refused only after the model had loaded,
and a failed start whose config.yaml made the rerun refused."""

import os
import runpy
import sys
from pathlib import Path

import pytest

from align.config import ConfigError
from align.errors import (
    DEBUG_ENV,
    EXIT_USER_ERROR,
    DataError,
    ModelPathError,
    UserError,
    call_main,
    run_main,
    user_error_types,
)
from align.trainer import CONFIG_FILE, MANIFEST_FILE, Callback, check_output_dir

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    # setenv first so that teardown restores the variable's absence, also when a test (--debug) set it
    monkeypatch.setenv(DEBUG_ENV, "0")
    monkeypatch.delenv(DEBUG_ENV)


def _load_recipe(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_errors_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_recipe(name: str, args: list[str], monkeypatch) -> int:
    """``python recipes/<name>.py ARGS`` in this process: its exit status."""
    path = RECIPES / f"{name}.py"
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    return exit_info.value.code


# --------------------------------------------------------------------------------------------- run_main


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["prog.py"])

    def main():
        raise ConfigError("learning_rate: expected a float, got 'fast'")

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, "sft")
    assert exit_info.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err == "sft: learning_rate: expected a float, got 'fast'\n"


@pytest.mark.parametrize(
    "error",
    [
        FileExistsError("output_dir 'x' already holds a previous run"),
        FileNotFoundError(2, "No such file or directory", "data/missing.jsonl"),
        PermissionError("output_dir 'x' is not writable"),
        NotADirectoryError("output_dir 'x/y': 'x' is a file"),
        DataError("a.jsonl:3: not a JSON line"),
        ModelPathError("model_name_or_path: m does not exist"),
        UserError("several\nlines"),
    ],
)
def test_user_error_types_are_reported_on_one_line(error, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["prog.py"])

    def main():
        raise error

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, "prog")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("prog: ") and err.count("\n") == 1, err
    if isinstance(error, FileNotFoundError):
        assert err == "prog: data/missing.jsonl: No such file or directory\n"


def test_known_error_classes_of_loaded_modules_are_user_errors():
    from align.checkpoint import CheckpointError
    from align.rl.offline_dataset import OfflineDataError

    types = user_error_types()
    for cls in (ConfigError, CheckpointError, OfflineDataError, DataError, ModelPathError):
        assert issubclass(cls, types), cls
    assert not issubclass(KeyError, types) and not issubclass(ValueError, types)


def test_a_programming_error_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog.py"])

    def main():
        return {}["missing"]

    with pytest.raises(KeyError):
        run_main(main, "prog")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, monkeypatch, capsys):
    argv = ["prog.py", "--lr", "1", "--debug"] if how == "flag" else ["prog.py", "--lr", "1"]
    if how == "env":
        monkeypatch.setenv(DEBUG_ENV, "1")
    monkeypatch.setattr(sys, "argv", argv)
    seen = []

    def main():
        seen.append(list(sys.argv))
        raise ConfigError("lr: bad")

    with pytest.raises(ConfigError, match="lr: bad"):
        run_main(main, "prog")
    assert seen == [["prog.py", "--lr", "1"]]  # --debug is not the recipe's option
    assert capsys.readouterr().err == ""


def test_an_int_is_the_exit_status_and_a_summary_is_success(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog.py"])
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: 3, "prog")
    assert exit_info.value.code == 3
    assert run_main(lambda: {"steps": 2}, "prog") is None
    assert call_main(lambda: (_ for _ in ()).throw(DataError("x")), "prog") == EXIT_USER_ERROR


# ------------------------------------------------------------------------------------- recipes and align


def test_recipe_config_error_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    # Before: sys.exit("tabular_frozenlake: ...") gave exit status 1.
    code = _run_recipe(
        "tabular_frozenlake", ["--gamma", "1.5", "--output_dir", str(tmp_path / "x")], monkeypatch
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err == "tabular_frozenlake: gamma must be in [0.0, 1.0], got 1.5\n"
    assert not (tmp_path / "x").exists()


def test_frozenlake_unknown_map_names_the_option_and_the_maps(tmp_path, monkeypatch, capsys):
    from align.rl.envs import make_env

    with pytest.raises(
        ConfigError, match=r"map_name: FrozenLake has no map '5x5'; choose one of '4x4', '8x8'"
    ):
        make_env("FrozenLake-v1", map_name="5x5")
    code = _run_recipe(
        "tabular_frozenlake", ["--map_name", "5x5", "--output_dir", str(tmp_path / "x")], monkeypatch
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err == "tabular_frozenlake: map_name: FrozenLake has no map '5x5'; choose one of '4x4', '8x8'\n"
    assert make_env("FrozenLake-v1", map_name="8x8").unwrapped.desc.shape == (8, 8)


def test_align_train_passes_the_recipe_exit_status(tmp_path, capsys):
    from align.cli import main as align_main

    argv = ["train", "tabular_frozenlake", "--map_name", "5x5", "--output_dir", str(tmp_path / "x")]
    assert align_main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "tabular_frozenlake: map_name: FrozenLake has no map '5x5'; choose one of '4x4', '8x8'"
    ]
    assert align_main(["train", "no_such_recipe"]) == 2


# ------------------------------------------------------------------------------------------------ data


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    from align.data import read_rows

    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"problem": "1 + 1", "answer": "2"}\n{"problem": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9, byte 17 of the line"):
        read_rows(bad)
    as_json = tmp_path / "latin1.json"
    as_json.write_bytes(b'[{"problem": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"latin1.json:1: not UTF-8 text"):
        read_rows(as_json)


# ------------------------------------------------------------------------------------------- model paths


def test_a_missing_model_folder_is_named(tmp_path):
    from align.models import load_causal_lm, load_tokenizer

    missing = tmp_path / "outputs" / "sft" / "model"
    expected = rf"model_name_or_path: {missing} does not exist \(a local folder\) and is not a hub id"
    with pytest.raises(ModelPathError, match=expected):
        load_tokenizer(str(missing))
    with pytest.raises(ModelPathError, match=expected):
        load_causal_lm(str(missing))


def test_an_empty_model_folder_is_named(tmp_path):
    from align.models import load_tokenizer

    empty = tmp_path / "model"
    empty.mkdir()
    with pytest.raises(
        ModelPathError, match=rf"the folder {empty} holds no model or tokenizer files \(it is empty\)"
    ):
        load_tokenizer(str(empty))
    (empty / "notes.txt").write_text("weights go here")
    with pytest.raises(ModelPathError, match=r"holds no model or tokenizer files \(it holds notes.txt\)"):
        load_tokenizer(str(empty))


def test_recipe_names_a_missing_model_before_loading_anything(tmp_path, monkeypatch, capsys):
    code = _run_recipe(
        "sft",
        ["--model_name_or_path", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "out")],
        monkeypatch,
    )
    assert code == 2
    assert capsys.readouterr().err == (
        f"sft: model_name_or_path: {tmp_path / 'nope'} does not exist (a local folder) and is not a hub id "
        "('name' or 'owner/name')\n"
    )
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ the output directory


def _no_model_load(recipe, monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output directory was checked")

    monkeypatch.setattr(recipe, "load_policy_and_tokenizer", load)


def test_a_read_only_output_dir_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    sft = _load_recipe("sft")
    _no_model_load(sft, monkeypatch)
    out = tmp_path / "readonly"
    out.mkdir()
    real_access = os.access
    # Simulated: the tests may run as root, for whom a chmod-ed folder stays writable.
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == out else real_access(p, mode))
    with pytest.raises(PermissionError, match=rf"output_dir '{out}' is not writable"):
        sft.main(["--output_dir", str(out)])
    with pytest.raises(PermissionError, match=rf"it would be made in '{out}', which is not writable"):
        sft.main(["--output_dir", str(out / "run")])
    assert list(out.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_chmod_read_only_output_dir_is_refused(tmp_path):
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="is not writable"):
            check_output_dir(out, resume=False, overwrite=False, check_only=True)
    finally:
        out.chmod(0o755)


def test_a_previous_run_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    dpo = _load_recipe("dpo")
    _no_model_load(dpo, monkeypatch)
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(FileExistsError, match=r"already holds a previous run \(metrics.jsonl\)"):
        dpo.main(["--output_dir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


def test_output_dir_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "afile" / "out", resume=False, overwrite=False, check_only=True)


def test_check_only_writes_nothing(tmp_path):
    out = tmp_path / "a" / "b"
    check_output_dir(out, resume=False, overwrite=False, check_only=True)
    assert list(tmp_path.iterdir()) == []


class _FailAtStart(Callback):
    def on_train_begin(self, trainer) -> None:
        raise RuntimeError("the first rollout failed")


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_failed_start_does_not_block_the_rerun(tmp_path):
    from tests.integration import tiny_supervised

    out = tmp_path / "run"
    args = ["--output_dir", str(out), "--max_steps", "2", "--disable_progress_bar", "true"]
    trainer = tiny_supervised.TinyTrainer(tiny_supervised.parse_config(tiny_supervised.TinyConfig, args))
    trainer.callbacks.append(_FailAtStart())
    with pytest.raises(RuntimeError, match="the first rollout failed"):
        trainer.train()
    assert {p.name for p in out.iterdir()} <= {CONFIG_FILE, MANIFEST_FILE}  # it trained nothing
    # The rerun, without --overwrite_output_dir, is not refused, and ends as a first run would.
    tiny_supervised.main(args)
    assert (out / "metrics.jsonl").is_file() and (out / "model").is_dir()
    # A run that logged a step is a previous run, as before.
    with pytest.raises(FileExistsError, match="already holds a previous run"):
        tiny_supervised.main(args)


def test_a_lone_config_yaml_of_the_users_is_not_taken_for_a_failed_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / CONFIG_FILE).write_text("learning_rate: 1.0e-5\n")  # not listed in a run's run_files.json
    with pytest.raises(FileExistsError, match=r"already holds a previous run \(config.yaml\)"):
        check_output_dir(out, resume=False, overwrite=False)
