"""Config parsing: YAML + CLI overrides, errors that name the key, field and range; saved config reloads."""

import re
from dataclasses import dataclass

import pytest
import yaml

from align.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    check_range,
    field_docs,
    load_config,
    parse_config,
    save_config,
)


@dataclass
class DemoConfig(ModelConfig, TrainConfig):
    beta: float = 0.04
    """KL coefficient."""
    num_generations: int = 4
    """Completions per prompt (G)."""

    def validate(self) -> None:
        super().validate()
        check_range("beta", self.beta, 0.0)
        check_range("num_generations", self.num_generations, 2)


def _yaml(tmp_path, data) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_defaults_and_docs():
    cfg = parse_config(DemoConfig, [])
    assert cfg.beta == 0.04 and cfg.model_name_or_path is None and cfg.lora_target_modules == ["all-linear"]
    docs = field_docs(DemoConfig)
    assert docs["beta"] == "KL coefficient."
    assert "Peak learning rate" in docs["learning_rate"]
    assert "LoRA rank" in docs["lora_r"]


def test_yaml_then_cli_override(tmp_path):
    path = _yaml(
        tmp_path, {"learning_rate": 3e-6, "beta": 0.1, "use_lora": True, "report_to": ["tensorboard"]}
    )
    cfg = parse_config(DemoConfig, ["--config", path, "--learning_rate", "1e-6"])
    assert cfg.learning_rate == 1e-6  # CLI wins
    assert cfg.beta == 0.1 and cfg.use_lora is True and cfg.report_to == ["tensorboard"]


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    path = _yaml(tmp_path, {"learning_rat": 1e-5})
    with pytest.raises(ConfigError, match=r"c\.yaml.*'learning_rat'.*did you mean 'learning_rate'"):
        parse_config(DemoConfig, ["--config", path])


def test_unknown_cli_flag_is_an_error():
    with pytest.raises(ConfigError, match="--no_such_flag"):
        parse_config(DemoConfig, ["--no_such_flag", "1"])


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--learning_rate", "-1"], r"learning_rate must be in \[0.0, inf\), got -1.0"),
        (["--num_generations", "1"], r"num_generations must be in \[2, inf\), got 1"),
        (["--gradient_accumulation_steps", "0"], r"gradient_accumulation_steps must be in \[1, inf\)"),
        (["--lora_dropout", "1.0"], r"lora_dropout must be in \[0.0, 1.0\)"),
        (["--dtype", "float8"], r"dtype must be one of"),
        (["--lr_scheduler_type", "nope"], r"lr_scheduler_type must be one of"),
    ],
)
def test_invalid_values_name_field_and_range(args, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_config(DemoConfig, args)


def test_invalid_value_in_yaml(tmp_path):
    path = _yaml(tmp_path, {"beta": -0.5})
    with pytest.raises(ConfigError, match=r"beta must be in \[0.0, inf\)"):
        parse_config(DemoConfig, ["--config", path])


def test_missing_or_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(DemoConfig, ["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        parse_config(DemoConfig, ["--config", str(bad)])


def test_saved_config_reloads_equal(tmp_path):
    cfg = parse_config(DemoConfig, ["--beta", "0.2", "--lora_target_modules", "q_proj", "v_proj"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(DemoConfig, path)
    assert again == cfg
    assert again.lora_kwargs()["target_modules"] == ["q_proj", "v_proj"]
    assert cfg.lora_kwargs()["r"] == 16


def test_trl_names_are_accepted_for_the_llm_pipelines(tmp_path):
    """A TRL user's GRPO config (beta, epsilon, epsilon_high, num_iterations) and PPO flags (cliprange, lam,
    num_ppo_epochs) set align's one name per concept; giving both spellings of a field is an error."""
    from align.trainers.grpo import GRPOConfig

    path = tmp_path / "trl.yaml"
    path.write_text("beta: 0.04\nepsilon: 0.3\nepsilon_high: 0.28\n")
    cfg = parse_config(
        GRPOConfig, ["--config", str(path), "--num_iterations", "2", "--output_dir", str(tmp_path)]
    )
    assert (cfg.kl_coef, cfg.clip_eps, cfg.clip_eps_high, cfg.num_epochs) == (0.04, 0.3, 0.28, 2)
    assert "beta" not in {f for f in vars(cfg)}  # saved and logged under align's names only
    with pytest.raises(ConfigError, match=r"--beta and --kl_coef set the same field \(kl_coef\)"):
        parse_config(GRPOConfig, ["--beta", "0.1", "--kl_coef", "0.2"])
    path.write_text("beta: 0.04\nkl_coef: 0.1\n")
    with pytest.raises(ConfigError, match=r"'beta' and 'kl_coef' are the same field"):
        parse_config(GRPOConfig, ["--config", str(path)])
    path.write_text("betta: 0.04\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'betta' \(did you mean 'beta'\?\)"):
        parse_config(GRPOConfig, ["--config", str(path)])


# --------------------------------------------------------------------------------------------------
# Types: every value is converted to its field's declared type, from YAML, the command line or Python.
# --------------------------------------------------------------------------------------------------


def _yaml_text(tmp_path, text: str) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_steps: 1.5", "max_steps: expected int, got 1.5"),  # once trained 2 steps
        ("num_generations: 2.0", "num_generations: expected int, got 2.0"),  # once a traceback
        ("learning_rate: [1.0e-5]", "learning_rate: expected float, got [1e-05]"),  # once a traceback
        ("temperature: .inf", "temperature: expected finite float, got inf"),  # once failed at generation
        ("temperature: .nan", "temperature: expected finite float, got nan"),
        ("use_lora: 1", "use_lora: expected bool, got 1"),
        ("dataset_split: 7", "dataset_split: expected str, got 7"),
        ("dataset_name: 7", "dataset_name: expected str or None, got 7"),
        ("lora_target_modules: [q_proj, 3]", "lora_target_modules: expected list of str, got ['q_proj', 3]"),
        ("generation_batch_size: 2.5", "generation_batch_size: expected int or None, got 2.5"),
        (
            "mixed_precision: fp8",
            "mixed_precision must be one of ['auto', 'no', 'bf16', 'fp16'], got 'fp8'",
        ),
    ],
)
def test_yaml_values_are_checked_against_the_field_type(tmp_path, text, message):
    from align.trainers.grpo import GRPOConfig

    path = _yaml_text(tmp_path, text)
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{message} (config file {path})')}$"):
        parse_config(GRPOConfig, ["--config", path, "--output_dir", str(tmp_path / "out")])


def test_yaml_values_are_converted_to_the_field_type(tmp_path):
    from align.trainers.grpo import GRPOConfig

    path = _yaml_text(
        tmp_path,
        "reward_funcs: boxed_format\n"  # a scalar for a list field: a one-element list, not 12 letters
        "learning_rate: 1e-5\n"  # PyYAML reads this as the string '1e-5'
        "kl_coef: 0\n"  # an int for a float field
        "generation_batch_size: null\n"
        "report_to: none\n",
    )
    cfg = parse_config(GRPOConfig, ["--config", path, "--output_dir", str(tmp_path / "out")])
    assert cfg.reward_funcs == ["boxed_format"]
    assert cfg.learning_rate == 1e-5 and isinstance(cfg.learning_rate, float)
    assert cfg.kl_coef == 0.0 and isinstance(cfg.kl_coef, float)
    assert cfg.generation_batch_size is None and cfg.report_to == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max_steps", "1.5"], r"max_steps: expected int, got '1.5' \(--max_steps\)"),
        (["--num_generations=2.0"], r"num_generations: expected int, got '2.0' \(--num_generations\)"),
        (["--learning_rate", "inf"], r"learning_rate: expected finite float, got 'inf' \(--learning_rate\)"),
        (["--use_lora", "maybe"], r"use_lora: expected bool, got 'maybe' \(--use_lora\)"),
        (["--mixed_precision", "fp8"], r"mixed_precision must be one of .*, got 'fp8' \(--mixed_precision\)"),
    ],
)
def test_cli_values_are_checked_against_the_field_type(args, message):
    with pytest.raises(ConfigError, match=rf"^{message}$"):
        parse_config(DemoConfig, args)


def test_cli_values_are_converted_and_errors_name_the_flag_as_given(tmp_path):
    from align.trainers.grpo import GRPOConfig

    cfg = parse_config(DemoConfig, ["--use_lora", "false", "--report_to", "tensorboard", "--max_steps", "3"])
    assert cfg.use_lora is False and cfg.report_to == ["tensorboard"] and cfg.max_steps == 3
    assert parse_config(DemoConfig, ["--use_lora"]).use_lora is True
    with pytest.raises(ConfigError, match=r"^kl_coef: expected float, got 'x' \(--beta\)$"):
        parse_config(GRPOConfig, ["--beta", "x"])  # TRL's name for kl_coef
    path = _yaml_text(tmp_path, "max_steps: 1.5\n")  # the file is checked even where a flag overrides it
    with pytest.raises(ConfigError, match=r"^max_steps: expected int, got 1\.5 \(config file"):
        parse_config(DemoConfig, ["--config", path, "--max_steps", "2"])


def test_python_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"^max_steps: expected int, got 1\.5$"):
        DemoConfig(max_steps=1.5)
    with pytest.raises(ConfigError, match=r"^max_steps: expected int, got '5'$"):
        DemoConfig(max_steps="5")  # strings are read as numbers only from YAML and the command line
    with pytest.raises(ConfigError, match=r"^adam_epsilon: expected finite float, got nan$"):
        DemoConfig(adam_epsilon=float("nan"))
    with pytest.raises(ConfigError, match=r"^seed: expected int, got True$"):
        DemoConfig(seed=True)
    cfg = DemoConfig(learning_rate=1, lora_target_modules="q_proj", report_to=("wandb",))
    assert isinstance(cfg.learning_rate, float) and cfg.lora_target_modules == ["q_proj"]
    assert cfg.report_to == ["wandb"]


def test_a_config_may_allow_a_non_finite_float():
    @dataclass
    class StopConfig(TrainConfig):
        NONFINITE_FIELDS = ("target_return",)
        target_return: float = float("inf")
        """Stop once the mean return reaches this; inf = never stop early."""
        margin: float = 0.0
        """Another float, which must stay finite."""

    assert StopConfig().target_return == float("inf")
    assert parse_config(StopConfig, ["--target_return", "5"]).target_return == 5.0
    with pytest.raises(ConfigError, match=r"^margin: expected finite float, got -inf$"):
        StopConfig(margin=float("-inf"))
