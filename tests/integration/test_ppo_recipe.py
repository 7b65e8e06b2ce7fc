"""recipes/ppo_rlhf.py end to end on tiny models: PPO against a saved reward model (full and LoRA, shared and
separate value model), resume, and the staged pipeline SFT -> reward model -> PPO -> DPO with the frontier."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from align.chat_data import load_rows
from align.config import load_config
from align.testing import save_tiny_model
from align.trainer import read_metrics
from align.trainers.ppo import PPOConfig

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"align_recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ppo_recipe = _load_recipe("ppo_rlhf")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # One thread for this module's tests, restored after them: later tests must not inherit it.
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("tiny")
    torch.set_num_threads(1)
    policy = save_tiny_model(root / "policy")
    rm = save_tiny_model(root / "rm", kind="sequence_classifier", seed=5)
    data = root / "prefs"
    data.mkdir()
    for split, n in (("train", 16), ("test", 4)):
        rows = load_rows(None, split, default="prefs", limit=n)
        (data / f"{split}.jsonl").write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
    yield {"policy": policy, "rm": rm, "data": data}
    torch.set_num_threads(threads)


def _args(tmp_path, tiny, *extra):
    return [
        "--model_name_or_path", str(tiny["policy"]), "--output_dir", str(tmp_path / "out"),
        "--dataset_name", str(tiny["data"]), "--reward_funcs", f"reward_model:{tiny['rm']}",
        "--max_steps", "4", "--rollout_batch_size", "4", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2", "--num_ppo_epochs", "2", "--max_new_tokens", "6",
        "--disable_progress_bar", "true", "--learning_rate", "1e-3", "--eval_limit", "4", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "lora,value_model", [(False, "shared"), (True, "separate")], ids=["full-shared", "lora-separate"]
)
def test_ppo_recipe_outputs(tmp_path, tiny, lora, value_model):
    summary = ppo_recipe.main(
        _args(
            tmp_path,
            tiny,
            "--use_lora",
            str(lora).lower(),
            "--value_model",
            value_model,
            "--adaptive_kl",
            "true",
        )
    )
    out = tmp_path / "out"
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert "score/mean" in rows[0] and "beta" in rows[0]
    load_config(PPOConfig, out / "config.yaml")
    assert (out / "model" / ("adapter_config.json" if lora else "config.json")).is_file()
    if value_model == "separate":
        assert (out / "value_model" / ("adapter_config.json" if lora else "config.json")).is_file()
    else:
        assert (out / "model" / "value_head.safetensors").is_file()
    assert (out / "reward_kl.png").is_file()
    assert (out / "completions.jsonl").is_file()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["steps"] == 4 and saved == summary
    assert saved["heldout_score_before"] is not None and saved["heldout_kl_after"] is not None


def test_ppo_recipe_resume_restores_beta(tmp_path, tiny):
    args = _args(tmp_path, tiny, "--value_model", "shared", "--adaptive_kl", "true", "--kl_horizon", "10",
                 "--save_steps", "2", "--eval_split", "none")  # fmt: skip
    ppo_recipe.main(args)
    betas = [r["beta/current"] for r in read_metrics(tmp_path / "out")]
    from align.testing import reset_accelerate_state

    reset_accelerate_state()
    ppo_recipe.main([*args, "--resume_from_checkpoint", str(tmp_path / "out" / "checkpoints" / "step-2"),
                     "--overwrite_output_dir", "true"])  # fmt: skip
    resumed = [r for r in read_metrics(tmp_path / "out") if r["step"] > 2]
    # beta after step 2 was restored from the checkpoint, so step 3's beta continues the controller
    assert resumed[0]["step"] == 3
    assert resumed[0]["beta"] == pytest.approx(betas[1], rel=1e-6)


def test_bad_pipeline_file_is_refused(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"stages": ["sft", "ppo", "rlhf"]}))
    with pytest.raises(SystemExit, match="unknown stages"):
        ppo_recipe.main(["--pipeline", str(bad)])
    bad.write_text(yaml.safe_dump({"stages": ["ppo"], "ppoo": {}}))
    with pytest.raises(SystemExit, match=r"unknown keys \['ppoo'\]"):
        ppo_recipe.main(["--pipeline", str(bad)])


def test_pipeline_runs_all_stages_and_plots_the_frontier(tmp_path, tiny):
    common = {"disable_progress_bar": True, "learning_rate": 1e-3, "dataset_name": str(tiny["data"])}
    spec = {
        "output_dir": str(tmp_path / "pipe"),
        "model_name_or_path": str(tiny["policy"]),
        "stages": ["sft", "reward_model", "ppo", "dpo"],
        "frontier": {"dataset_name": str(tiny["data"]), "limit": 2, "every": 2, "max_new_tokens": 6},
        "sft": {**common, "dataset_name": None, "max_steps": 2, "per_device_train_batch_size": 2, "use_lora": True,
                "max_length": 160, "eval_limit": 2},
        "reward_model": {**common, "max_steps": 2, "per_device_train_batch_size": 2, "max_length": 160,
                         "eval_limit": 2},
        "ppo": {**common, "max_steps": 2, "rollout_batch_size": 2, "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1, "num_ppo_epochs": 1, "max_new_tokens": 6, "use_lora": True,
                "value_model": "shared", "eval_split": "none"},
        "dpo": {**common, "max_steps": 2, "per_device_train_batch_size": 2, "use_lora": True, "max_length": 160,
                "eval_limit": 2},
    }  # fmt: skip
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    results = ppo_recipe.main(["--pipeline", str(path)])
    out = tmp_path / "pipe"
    assert set(results) == {"sft", "reward_model", "ppo", "dpo"}
    for stage in ("sft", "reward_model", "ppo", "dpo"):
        assert (out / stage / "model").is_dir(), stage
    # PPO started from the SFT model and scored with the trained reward model
    ppo_cfg = yaml.safe_load((out / "ppo" / "config.yaml").read_text())
    assert ppo_cfg["model_name_or_path"] == str(out / "sft" / "model")
    assert ppo_cfg["reward_funcs"] == [f"reward_model:{out / 'reward_model' / 'model'}"]
    points = [json.loads(line) for line in (out / "frontier.jsonl").read_text().splitlines()]
    assert {p["method"] for p in points} == {"ppo", "dpo"}
    assert [p["step"] for p in points if p["method"] == "ppo"] == [0, 2]
    # at step 0 both policies are the reference: KL exactly 0
    assert all(abs(p["kl"]) < 1e-5 for p in points if p["step"] == 0)
    assert (out / "frontier.png").is_file()

    # A second run of one stage: refused while its output is there (nothing changes), then with overwrite it
    # starts from the earlier SFT model and replaces only its own frontier points.
    before = (out / "frontier.jsonl").read_text()
    spec["stages"] = ["dpo"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit, match="already holds a previous run of the dpo stage"):
        ppo_recipe.main(["--pipeline", str(path)])
    assert (out / "frontier.jsonl").read_text() == before
    spec["dpo"]["overwrite_output_dir"] = True
    path.write_text(yaml.safe_dump(spec))
    ppo_recipe.main(["--pipeline", str(path)])
    dpo_cfg = yaml.safe_load((out / "dpo" / "config.yaml").read_text())
    assert dpo_cfg["model_name_or_path"] == str(out / "sft" / "model")
    again = [json.loads(line) for line in (out / "frontier.jsonl").read_text().splitlines()]
    assert [p for p in again if p["method"] == "ppo"] == [p for p in points if p["method"] == "ppo"]
    assert [p["step"] for p in again if p["method"] == "dpo"] == [0, 2]
