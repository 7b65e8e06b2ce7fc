"""recipes/ppo_rlhf.py end to end on tiny models: PPO against a saved reward model (full and LoRA, shared and
separate value model), resume (exactly, from a checkpoint in the middle of an iteration's plan), two processes
against one, and the staged pipeline SFT -> reward model -> PPO -> DPO with the frontier."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from align.chat_data import load_rows
from align.config import ConfigError, load_config
from align.trainer import read_metrics
from align.trainers.ppo import PPOConfig
from tests.integration.exactness import Interrupt, launch_two, read_jsonl, stable
from tests.support import save_tiny_model

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
    from tests.support import reset_accelerate_state

    reset_accelerate_state()
    ppo_recipe.main([*args, "--resume_from_checkpoint", str(tmp_path / "out" / "checkpoints" / "step-2"),
                     "--overwrite_output_dir", "true"])  # fmt: skip
    resumed = [r for r in read_metrics(tmp_path / "out") if r["step"] > 2]
    # beta after step 2 was restored from the checkpoint, so step 3's beta continues the controller
    assert resumed[0]["step"] == 3
    assert resumed[0]["beta"] == pytest.approx(betas[1], rel=1e-6)


def _weights(run):
    """The policy's and the shared value head's final parameters."""
    from safetensors.torch import load_file

    model = run / "model"
    return {**load_file(model / "model.safetensors"), **load_file(model / "value_head.safetensors")}


def _exact_args(tiny, out, *extra):
    """PPO with two epochs over each rollout (2 optimizer steps per iteration), full fine-tuning and the shared,
    zero-initialised value head: a LoRA adapter or a fresh score head would be initialised from the process's
    global random state before the trainer seeds it, so two runs in one process would not start alike."""
    return [
        "--model_name_or_path", str(tiny["policy"]), "--output_dir", str(out), "--dataset_name", str(tiny["data"]),
        "--reward_funcs", f"reward_model:{tiny['rm']}", "--gradient_accumulation_steps", "2", "--num_ppo_epochs", "2",
        "--max_new_tokens", "6", "--disable_progress_bar", "true", "--value_model", "shared", "--adaptive_kl", "true",
        "--kl_horizon", "10", "--eval_split", "none", *extra,
    ]  # fmt: skip


def test_ppo_resume_equals_uninterrupted(tmp_path, tiny):
    """Killed after step 5 and resumed from the checkpoint of step 3, a run ends where an uninterrupted one does.

    Two PPO epochs over each rollout of 4 completions are two optimizer steps, so step 3 is the first of the
    second iteration's two and the checkpoint holds the pending step 4 (its micro-batches with old log-probs,
    values, advantages and returns). The resumed run must take that step, then sample the third rollout as the
    uninterrupted run did, with the adaptive KL coefficient restored, log every step and every sample once, and
    end with the same policy and value head."""
    from align.checkpoint import list_checkpoints, load_state
    from align.trainers.ppo import PPOMicroBatch
    from tests.support import reset_accelerate_state

    def run(name, *extra, callbacks=None):
        reset_accelerate_state()
        args = _exact_args(tiny, tmp_path / name, "--rollout_batch_size", "4", "--per_device_train_batch_size", "2",
                           "--learning_rate", "1e-3", "--max_steps", "6", "--save_steps", "3", "--log_completions", "4",
                           *extra)  # fmt: skip
        return ppo_recipe.main(args, callbacks=callbacks)

    run("full")
    with pytest.raises(KeyboardInterrupt):
        run("cut", callbacks=[Interrupt(5)])
    cut = tmp_path / "cut"
    assert [c.name for c in list_checkpoints(cut / "checkpoints")] == ["step-3"]
    state = load_state(cut / "checkpoints" / "step-3" / "rank0", {"PPOMicroBatch": PPOMicroBatch})
    assert len(state["pending"]) == 1  # the checkpoint falls inside the second iteration's plan
    run("cut", "--resume_from_checkpoint", "latest")

    full_rows, cut_rows = read_metrics(tmp_path / "full"), read_metrics(cut)
    assert [r["step"] for r in cut_rows] == list(range(1, 7))
    assert stable(cut_rows) == stable(full_rows)
    assert full_rows[-1]["rollout/count"] == 3 and len({r["beta"] for r in full_rows}) == 3  # beta moved
    samples = read_jsonl(cut / "completions.jsonl")
    assert [r["step"] for r in samples] == [1] * 4 + [3] * 4 + [5] * 4  # each rollout's samples once
    assert samples == read_jsonl(tmp_path / "full" / "completions.jsonl")
    full_w, cut_w = _weights(tmp_path / "full"), _weights(cut)
    assert full_w.keys() == cut_w.keys() and all(torch.equal(full_w[k], cut_w[k]) for k in full_w)
    assert float(full_w["weight"].abs().max()) > 0  # the value head (zero at the start) trained


@pytest.mark.parametrize("whiten", ["false", "true"], ids=["raw_advantages", "whitened_advantages"])
def test_ppo_two_processes_equal_one(tmp_path, tiny, whiten):
    """accelerate launch with 2 CPU processes (gloo DDP), 4 completions each per rollout, samples, updates and
    ends where 1 process with 8 completions does.

    Completion i of the global batch draws its tokens from its own stream keyed by (seed, rollout, i), and the
    data order is the same, so rank 0 samples exactly the first half of the 1-process rollout; the KL controller
    sees every process's KL. With one minibatch per epoch the loss is the token mean over every process's
    completions, so the all-reduced gradient is the 1-process one: its norm agrees to float precision (the
    layouts pad prompts differently and sum in another order). The weights agree up to Adam's amplification of
    that rounding in near-zero gradients, which scales with the learning rate (about 1.4e-6 after 4 steps at
    3e-4): hence 3e-4 and atol 1e-5, while the weights move by about 1e-3."""
    args = lambda name, batch: _exact_args(  # noqa: E731
        tiny, tmp_path / name, "--rollout_batch_size", str(2 * batch), "--per_device_train_batch_size", str(batch),
        "--max_steps", "4", "--learning_rate", "3e-4", "--max_grad_norm", "0", "--log_completions", "8",
        "--whiten_advantages", whiten,
    )  # fmt: skip
    ppo_recipe.main(args("one", 4))
    launch_two("recipes/ppo_rlhf.py", args("two", 2))
    one_rows, two_rows = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in two_rows] == [1, 2, 3, 4]
    assert [r["grad_norm"] for r in two_rows] == pytest.approx([r["grad_norm"] for r in one_rows], rel=1e-5)
    assert [r["beta"] for r in two_rows] == pytest.approx([r["beta"] for r in one_rows], rel=1e-6)
    # completions.jsonl holds the main process's samples: rank 0's 4 are the first 4 of the 1-process 8
    one = read_jsonl(tmp_path / "one" / "completions.jsonl")
    two = read_jsonl(tmp_path / "two" / "completions.jsonl")
    assert [r["step"] for r in one] == [1] * 8 + [3] * 8 and [r["step"] for r in two] == [1] * 4 + [3] * 4
    assert [r["completion"] for r in two] == [r["completion"] for r in one[:4] + one[8:12]]
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
    assert float(w1["weight"].abs().max()) > 5e-4  # both did train (the value head starts at zero)


def test_bad_pipeline_file_is_refused(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"stages": ["sft", "ppo", "rlhf"]}))
    with pytest.raises(ConfigError, match="unknown stages"):
        ppo_recipe.main(["--pipeline", str(bad)])
    bad.write_text(yaml.safe_dump({"stages": ["ppo"], "ppoo": {}}))
    with pytest.raises(ConfigError, match=r"unknown keys \['ppoo'\]"):
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
    with pytest.raises(FileExistsError, match="already holds a previous run of the dpo stage"):
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
