"""Sharded training on CPU: GRPO and DPO under FSDP2 (``accelerate_configs/cpu_fsdp2.yaml``, 2 processes over
gloo) end where the same runs under DDP (``accelerate_configs/cpu.yaml``, 2 processes) end, with complete outputs.

DeepSpeed does not run on CPU through accelerate 1.16 (see ``align.trainer._make_accelerator``), so FSDP2 is the
sharded engine these tests exercise. The DDP side is itself checked against one process in
test_grpo_recipes.py / test_pref_recipes.py.
"""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from align.trainer import read_metrics
from tests.integration.exactness import launch_two
from tests.support import save_tiny_model

FSDP = "accelerate_configs/cpu_fsdp2.yaml"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def _weights(run: Path) -> dict:
    return load_file(run / "model" / "model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()  # the sharded save drops tied copies as the DDP save does
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _check_outputs(run: Path, steps: int) -> list[dict]:
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model/model.safetensors", "model/config.json",
                 "model/tokenizer.json"):  # fmt: skip
        assert (run / name).is_file(), name
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    return rows


def test_fsdp2_on_cpu_is_sharded(tmp_path):
    """The config really shards: accelerate alone would run it as DDP on CPU (it enables FSDP for GPU-like
    devices only), and the reference model is a whole, unsharded copy (FSDP2 refuses deepcopy)."""
    res = launch_two("tests/integration/sharded_probe.py", [str(tmp_path / "probe")], config=FSDP)
    assert "PROBE FSDP sharded=True ref=LlamaForCausalLM" in res.stdout


def test_grpo_fsdp2_equals_ddp(tmp_path, tiny_dir):
    """GRPO (beta 0.04: the reference model's KL), 3 optimizer steps on one rollout (num_iterations 3), global
    batch 2 prompts x 4 completions per process. Same samples (the first pass is the same weights), the same
    gradient up to float rounding (FSDP reduce-scatters what DDP all-reduces and clips over shards): grad norms
    agree to 1e-5 relative, the weights to 1e-5 absolute (measured 2.5e-6; Adam amplifies rounding in near-zero
    gradients by up to the learning rate, 3e-4) while training moves them by about 9e-4. One rollout only: a
    second rollout from weights that differ in the 7th digit may draw a different token where a uniform lands
    on a boundary, and the runs then part (seen: 5e-4 after a second rollout)."""
    args = lambda name: ["--model_name_or_path", tiny_dir, "--output_dir", str(tmp_path / name),  # noqa: E731
                         "--num_generations", "4", "--gradient_accumulation_steps", "2", "--max_new_tokens", "12",
                         "--disable_progress_bar", "true", "--eval_limit", "2", "--reward_funcs", "length:80",
                         "--skip_zero_std_groups", "false", "--num_iterations", "3", "--per_device_train_batch_size",
                         "4", "--max_steps", "3", "--warmup_steps", "0", "--learning_rate", "3e-4",
                         "--max_grad_norm", "0", "--beta", "0.04", "--log_completions", "8"]  # fmt: skip
    launch_two("recipes/grpo_math.py", args("fsdp"), config=FSDP)
    launch_two("recipes/grpo_math.py", args("ddp"))
    fsdp, ddp = _check_outputs(tmp_path / "fsdp", 3), _check_outputs(tmp_path / "ddp", 3)
    assert (tmp_path / "fsdp" / "completions.jsonl").read_text() == (
        tmp_path / "ddp" / "completions.jsonl"
    ).read_text()
    assert [r["grad_norm"] for r in fsdp] == pytest.approx([r["grad_norm"] for r in ddp], rel=1e-5)
    assert [r["kl"] for r in fsdp] == pytest.approx(
        [r["kl"] for r in ddp], rel=1e-4, abs=1e-9
    )  # the reference
    assert fsdp[0]["reward/mean"] == ddp[0]["reward/mean"]
    w = _weights(tmp_path / "fsdp")
    assert _max_diff(w, _weights(tmp_path / "ddp")) < 1e-5
    assert _max_diff(w, load_file(Path(tiny_dir) / "model.safetensors")) > 5e-4  # it did train


def test_dpo_fsdp2_equals_ddp(tmp_path, tiny_model_dir, small_prefs):
    """DPO with its frozen reference (an unsharded copy under FSDP2), 3 steps, batch 2 per process, lr 1e-3.
    Grad norms agree to 1e-5 relative; the weights to 2e-4 absolute, the bound the DDP-vs-one-process test
    uses at this learning rate (measured 3e-5: Adam's amplification of rounding in near-zero gradients), while
    training moves them by about 3e-3. The held-out margins (evaluated on shards) agree too."""
    args = lambda name: ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / name),  # noqa: E731
                         "--dataset_name", str(small_prefs), "--max_length", "128", "--disable_progress_bar", "true",
                         "--learning_rate", "1e-3", "--per_device_train_batch_size", "2",
                         "--per_device_eval_batch_size", "8", "--max_steps", "3", "--max_grad_norm", "0"]  # fmt: skip
    launch_two("recipes/dpo.py", args("fsdp"), config=FSDP)
    launch_two("recipes/dpo.py", args("ddp"))
    fsdp, ddp = _check_outputs(tmp_path / "fsdp", 3), _check_outputs(tmp_path / "ddp", 3)
    assert [r["grad_norm"] for r in fsdp] == pytest.approx([r["grad_norm"] for r in ddp], rel=1e-5)
    assert [r["loss"] for r in fsdp] == pytest.approx([r["loss"] for r in ddp], rel=1e-5)
    w = _weights(tmp_path / "fsdp")
    assert _max_diff(w, _weights(tmp_path / "ddp")) < 2e-4
    assert _max_diff(w, load_file(Path(tiny_model_dir) / "model.safetensors")) > 1e-3  # it did train
    s_fsdp, s_ddp = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("fsdp", "ddp"))
    assert s_fsdp["eval_rewards_margins"] == pytest.approx(s_ddp["eval_rewards_margins"], abs=1e-4)


@pytest.fixture(scope="module")
def small_prefs(tmp_path_factory):
    """32 training and 8 held-out rows of the shipped preference data."""
    from align.chat_data import load_rows

    root = tmp_path_factory.mktemp("prefs")
    for split, n in (("train", 32), ("test", 8)):
        rows = load_rows(None, split, default="prefs", limit=n)
        (root / f"{split}.jsonl").write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
    return root
