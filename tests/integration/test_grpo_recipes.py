"""The GRPO recipes run end to end on a tiny model: outputs, resume (exactly, from a checkpoint in the middle
of a rollout's plan), two processes against one, and the rubric report."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align import checkpoint as ckpt
from align.config import ConfigError
from align.trainer import read_metrics
from tests.integration.exactness import Interrupt, launch_two, read_jsonl, stable
from tests.support import load_recipe, reset_accelerate_state, save_tiny_model

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


SMALL = ["--num_generations", "4", "--per_device_train_batch_size", "8", "--max_new_tokens", "12",
         "--disable_progress_bar", "true"]  # fmt: skip


def _load(name):
    return load_recipe(name)


def test_grpo_math_recipe_outputs_and_resume(tmp_path, tiny_dir):
    recipe = _load("grpo_math")
    out = tmp_path / "run"
    args = ["--model_name_or_path", tiny_dir, "--output_dir", str(out), "--eval_limit", "4", *SMALL]
    # skip_zero_std_groups off: the tiny model earns no reward, and the loss metrics (entropy, clip) come
    # only from rows that run with a weight.
    args += ["--skip_zero_std_groups", "false"]
    summary = recipe.main([*args, "--max_steps", "2", "--save_steps", "1"])
    for name in (
        "metrics.jsonl",
        "config.yaml",
        "completions.jsonl",
        "summary.json",
        "model/model.safetensors",
    ):
        assert (out / name).exists(), name
    assert summary["steps"] == 2 and 0.0 <= summary["heldout_accuracy_after"] <= 1.0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward/mean", "reward/math/mean", "completions/mean_length", "entropy", "clip/fraction",
                "reward/zero_std_group_fraction", "throughput/completion_tokens_per_second", "time/step_seconds"):  # fmt: skip
        assert key in rows[0], key
    # An existing run is not overwritten...
    reset_accelerate_state()
    with pytest.raises(FileExistsError):
        recipe.main([*args, "--max_steps", "3"])
    # ...but resumes.
    reset_accelerate_state()
    recipe.main([*args, "--max_steps", "3", "--resume_from_checkpoint", "latest"])
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


def test_grpo_math_recipe_lora(tmp_path, tiny_dir):
    recipe = _load("grpo_math")
    out = tmp_path / "lora"
    recipe.main(["--model_name_or_path", tiny_dir, "--output_dir", str(out), "--eval_limit", "2", "--max_steps", "1",
                 "--use_lora", "true", "--lora_r", "4", "--beta", "0.04", *SMALL])  # fmt: skip
    assert (out / "model" / "adapter_model.safetensors").exists()
    assert "kl" in read_metrics(out)[0]


def test_grpo_math_recipe_bad_config_exits_with_message(tmp_path):
    recipe = _load("grpo_math")
    with pytest.raises(ConfigError, match="num_generations must be >= 2"):
        recipe.main(["--output_dir", str(tmp_path / "x"), "--num_generations", "1"])


def test_grpo_rubric_recipe_reports_criteria(tmp_path, tiny_dir):
    recipe = _load("grpo_rubric")
    out = tmp_path / "rubric"
    result = recipe.main(["--model_name_or_path", tiny_dir, "--output_dir", str(out), "--max_steps", "1",
                          "--score_limit", "3", *SMALL])  # fmt: skip
    saved = json.loads((out / "rubric_scores.json").read_text())
    assert set(saved["before"]) == {"boxed", "correct", "concise", "shows_step", "clear", "total"}
    assert result["after"].keys() == result["before"].keys()
    assert any(k.startswith("reward/math_explainer/") for k in read_metrics(out)[0])


# --- exactness: resume, process count, padding ------------------------------------------------------------


def _weights(model_dir):
    return load_file(Path(model_dir) / "model.safetensors")


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _interrupt_at(monkeypatch, step):
    """The next GRPO recipe run stops at the end of optimizer step ``step`` (the recipe takes no callbacks)."""
    from align.trainers.grpo import GRPOTrainer

    init = GRPOTrainer.__init__

    def with_interrupt(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.callbacks.append(Interrupt(step))

    monkeypatch.setattr(GRPOTrainer, "__init__", with_interrupt)


# A reward that varies with the sampled text: the tiny model's 12-token completions are 60-100 characters
# long, so an 80-character budget gives nearly every group some spread and the policy loss a gradient.
EXACT = ["--num_generations", "4", "--gradient_accumulation_steps", "2", "--max_new_tokens", "12",
         "--disable_progress_bar", "true", "--eval_limit", "2", "--reward_funcs", "length:80",
         "--skip_zero_std_groups", "false", "--num_iterations", "2"]  # fmt: skip


def test_grpo_resume_equals_uninterrupted(tmp_path, tiny_dir, monkeypatch):
    """Killed after step 5 and resumed from the checkpoint of step 3, a run ends where an uninterrupted one does.

    num_iterations 2: each rollout is planned as two optimizer steps, so step 3 is the first of the second
    rollout's two and the checkpoint holds the pending step 4 (its micro-batches and old log-probs). The
    resumed run must take that step, then sample the third rollout as the uninterrupted run did (same data
    position, same sampling seed), log every step and every sample once, and end with the same parameters."""
    from align.trainers.grpo import MicroBatch

    recipe = _load("grpo_math")
    args = lambda name: ["--model_name_or_path", tiny_dir, "--output_dir", str(tmp_path / name), *EXACT,  # noqa: E731
                         "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--log_completions", "8",
                         "--max_steps", "6", "--save_steps", "3"]  # fmt: skip
    recipe.main(args("full"))
    reset_accelerate_state()
    with monkeypatch.context() as m:
        _interrupt_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            recipe.main(args("cut"))
    cut = tmp_path / "cut"
    assert [c.name for c in ckpt.list_checkpoints(cut / "checkpoints")] == ["step-3"]
    pending = ckpt.load_state(cut / "checkpoints" / "step-3" / "rank0", {"MicroBatch": MicroBatch})["pending"]
    assert len(pending) == 1  # the checkpoint falls inside the second rollout's plan
    reset_accelerate_state()
    recipe.main([*args("cut"), "--resume_from_checkpoint", "latest"])

    full_rows, cut_rows = read_metrics(tmp_path / "full"), read_metrics(cut)
    assert [r["step"] for r in cut_rows] == list(range(1, 7))
    assert stable(cut_rows) == stable(full_rows)
    assert full_rows[-1]["rollout/count"] == 3
    assert full_rows[3]["clip/fraction"] > 0  # the pending step's old log-probs matter
    samples = read_jsonl(cut / "completions.jsonl")
    assert [r["step"] for r in samples] == [1] * 8 + [3] * 8 + [5] * 8  # each rollout's samples once
    assert samples == read_jsonl(tmp_path / "full" / "completions.jsonl")
    assert len({r["reward"] for r in samples}) > 1
    full_w, cut_w = _weights(tmp_path / "full" / "model"), _weights(cut / "model")
    assert full_w.keys() == cut_w.keys() and all(torch.equal(full_w[k], cut_w[k]) for k in full_w)
    assert _max_diff(full_w, _weights(tiny_dir)) > 1e-4  # and it did train


def test_grpo_two_processes_equal_one(tmp_path, tiny_dir):
    """accelerate launch with 2 CPU processes (gloo DDP), 2 prompts x 4 completions each per rollout, samples,
    updates and ends where 1 process with 4 prompts x 4 completions does.

    Completion i of the global batch draws its tokens from its own stream keyed by (seed, rollout, i), and the
    data order is the same, so rank 0 samples exactly the first half of the 1-process rollout. The loss is
    normalised over every process's tokens, so the all-reduced gradient is the 1-process one: its norm agrees to
    float precision (the two layouts pad prompts to different lengths and sum in a different order). The weights
    agree up to Adam's amplification of that rounding in near-zero gradients, which scales with the learning
    rate (about 7e-6 after 4 steps at 1e-3, 2e-6 at 3e-4): hence 3e-4 and atol 1e-5, while the weights move by
    about 1e-3."""
    recipe = _load("grpo_math")
    args = lambda name, batch: ["--model_name_or_path", tiny_dir, "--output_dir", str(tmp_path / name), *EXACT,  # noqa: E731
                                "--per_device_train_batch_size", str(batch), "--max_steps", "4", "--warmup_steps", "0",
                                "--learning_rate", "3e-4", "--max_grad_norm", "0", "--log_completions", "16"]  # fmt: skip
    recipe.main(args("one", 8))
    launch_two("recipes/grpo_math.py", args("two", 4))
    one_rows, two_rows = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in two_rows] == [1, 2, 3, 4]
    assert [r["grad_norm"] for r in two_rows] == pytest.approx([r["grad_norm"] for r in one_rows], rel=1e-5)
    assert [r.get("reward/mean") for r in two_rows] == pytest.approx([r.get("reward/mean") for r in one_rows])
    # completions.jsonl holds the main process's samples: rank 0's 8 are the first 8 of the 1-process 16
    one = read_jsonl(tmp_path / "one" / "completions.jsonl")
    two = read_jsonl(tmp_path / "two" / "completions.jsonl")
    assert [r["step"] for r in one] == [1] * 16 + [3] * 16 and [r["step"] for r in two] == [1] * 8 + [3] * 8
    assert [r["completion"] for r in two] == [r["completion"] for r in one[:8] + one[16:24]]
    w1 = _weights(tmp_path / "one" / "model")
    assert _max_diff(w1, _weights(tmp_path / "two" / "model")) < 1e-5
    assert _max_diff(w1, _weights(tiny_dir)) > 5e-4  # both did train


def _length_reward(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


def test_zero_weight_micro_batch_changes_nothing(tmp_path, tiny_tokenizer):
    """A zero-weight micro-batch (the padding that keeps DDP ranks in step when a process holds fewer kept
    rows) changes neither the update nor the logged metrics: the base weighs each micro-batch's metrics by its
    weight, so the step's entropy is the entropy of the weighted micro-batch alone, not the mean of the two."""
    from datasets import Dataset

    from align.config import parse_config
    from align.trainer import UpdateStep
    from align.trainers.grpo import GRPOConfig, GRPOTrainer
    from tests.support import tiny_causal_lm

    prompts = Dataset.from_list([{"prompt": f"What is {i} + {i}?"} for i in range(8)])

    def trainer(name):
        reset_accelerate_state()
        cfg = parse_config(
            GRPOConfig,
            ["--output_dir", str(tmp_path / name), "--num_generations", "4", "--per_device_train_batch_size", "4",
             "--gradient_accumulation_steps", "2", "--max_new_tokens", "8", "--disable_progress_bar", "true",
             "--learning_rate", "1e-3", "--warmup_steps", "0", "--skip_zero_std_groups", "false"],
        )  # fmt: skip
        return GRPOTrainer(cfg, tiny_causal_lm(tiny_tokenizer), tiny_tokenizer, [_length_reward], prompts)

    padded = trainer("padded")
    (mb_a, _), (mb_b, _) = padded.plan_updates()[0].micro_batches
    with torch.no_grad():
        loss_a, metrics_a = padded.compute_loss(mb_a)
        _, metrics_b = padded.compute_loss(mb_b)
    entropy_a, entropy_b = float(metrics_a["entropy"]), float(metrics_b["entropy"])
    assert abs(entropy_a - entropy_b) > 1e-6  # an unweighted mean of the two would show
    out = padded.optimizer_step(UpdateStep([(mb_a, 3.0), (mb_b, 0.0)]))
    assert out["entropy"] == pytest.approx(entropy_a, rel=1e-12, abs=0)
    assert out["loss"] == pytest.approx(float(loss_a), rel=1e-12, abs=1e-15)
    alone = trainer("alone")
    out_alone = alone.optimizer_step(UpdateStep([(mb_a, 3.0)]))
    assert out["grad_norm"] == out_alone["grad_norm"] > 0
    assert out == out_alone
    for p, q in zip(padded.model.parameters(), alone.model.parameters()):
        assert torch.equal(p, q)


def test_overwrite_removes_every_file_of_the_previous_run(tmp_path, tiny_dir):
    """--overwrite_output_dir removes what the previous run wrote (its completions, checkpoints, model,
    summary) and nothing of the user's; the new run's completions.jsonl holds only its own samples."""
    recipe = _load("grpo_math")
    out = tmp_path / "run"
    args = ["--model_name_or_path", tiny_dir, "--output_dir", str(out), "--eval_limit", "2", *SMALL,
            "--log_completions", "3", "--save_steps", "1"]  # fmt: skip
    recipe.main([*args, "--max_steps", "2"])
    assert [r["step"] for r in read_jsonl(out / "completions.jsonl")] == [1] * 3 + [2] * 3
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "step-1" / "stale").write_text("")  # anything inside a run folder goes too
    reset_accelerate_state()
    recipe.main([*args, "--max_steps", "1", "--overwrite_output_dir", "true"])
    assert [r["step"] for r in read_jsonl(out / "completions.jsonl")] == [1] * 3
    assert [r["step"] for r in read_metrics(out)] == [1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]
    assert not (out / "checkpoints" / "step-1" / "stale").exists()
    assert (out / "notes.txt").read_text() == "mine"
    manifest = json.loads((out / "run_files.json").read_text())
    assert {"completions.jsonl", "model", "summary.json", "checkpoints"} <= set(manifest)
    assert "notes.txt" not in manifest


def test_grpo_math_recipe_stops_when_no_completion_gets_a_reward(tmp_path, tiny_dir, capsys, monkeypatch):
    """Every gold answer unparsable: before, each completion was rewarded 0 and the run trained to the end
    with zero gradient and exit 0."""
    from align.errors import DEBUG_ENV, call_main

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    data = tmp_path / "bad.jsonl"
    data.write_text(
        "".join(f'{{"question": "What is {i} + {i}?", "answer": "\\\\frac{{"}}\n' for i in range(8))
    )
    recipe = _load("grpo_math")
    args = ["--model_name_or_path", tiny_dir, "--output_dir", str(tmp_path / "out"), "--dataset_name", str(data),
            "--eval_steps", "0", "--max_steps", "3", *SMALL]  # fmt: skip
    assert call_main(lambda: recipe.main(args), "grpo_math") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("grpo_math: rollout 1: no completion got a reward (math: 8 of 8 None")
