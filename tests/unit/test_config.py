"""Config parsing: YAML + CLI overrides, errors that name the key, field and range; saved config reloads."""

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
    cfg = parse_config(GRPOConfig, ["--config", str(path), "--num_iterations", "2", "--output_dir", str(tmp_path)])
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
