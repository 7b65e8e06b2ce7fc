"""`python recipes/<name>.py --help` exits 0 and documents every field of the recipe's config, for every
recipe: the help is the first thing a new user runs, and a `%` in one field's docstring once crashed it.

Each recipe runs in-process as `__main__` (as `python recipes/<name>.py --help` would), with
`align.config._attach_help` watched to learn which config class it parsed and its field docstrings. Parsing comes before any model
is loaded in every recipe, so this stays fast.
"""

import dataclasses
import re
import runpy
import sys
from pathlib import Path

import pytest

import align.config
from align.config import field_docs

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.py"))


def _squash(text: str) -> str:
    """Text without whitespace: argparse re-wraps help (and may break a line at a hyphen)."""
    return re.sub(r"\s+", "", text)


def test_every_recipe_is_walked():
    assert {"grpo_math", "sft", "dpo", "reward_model", "ppo_rlhf", "grpo_rubric", "eval"} <= {
        p.stem for p in RECIPES
    }


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_help_exits_0_and_documents_every_field(path, monkeypatch, capsys):
    parsed: list[tuple[type, dict[str, str]]] = []
    attach = align.config._attach_help

    def watch(cls: type) -> None:
        # The docstrings are read now: a config class defined in the recipe (grpo_rubric's) has no
        # source to read once runpy has put the real __main__ back.
        parsed.append((cls, field_docs(cls)))
        attach(cls)

    monkeypatch.setattr(align.config, "_attach_help", watch)
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), f"{path.name} --help exited {exit_info.value.code}: {err}"
    assert parsed, f"{path.name} --help did not parse a config"
    cls, docs = parsed[0]
    text = _squash(out)
    for f in dataclasses.fields(cls):
        assert f"--{f.name}" in out, f"{path.name} --help does not list --{f.name}"
        assert f.name in docs, f"{cls.__name__}.{f.name} has no docstring (its --help text)"
        assert _squash(docs[f.name]) in text, f"{path.name} --help lacks the help of --{f.name}"


def test_percent_in_a_docstring_reaches_help_as_written(capsys):
    @dataclasses.dataclass
    class PercentConfig(align.config.TrainConfig):
        clip_fraction: float = 0.2
        """Clip about 20% of the tokens (%(default)s is not a format here)."""

    with pytest.raises(SystemExit) as exit_info:
        align.config.parse_config(PercentConfig, ["--help"])
    assert exit_info.value.code == 0
    assert "Clip about 20% of the tokens (%(default)s is not a format here)." in " ".join(
        capsys.readouterr().out.split()
    )
