"""The SFT, reward-model and DPO recipes end to end on a tiny model: outputs, LoRA, resume, invariances,
two processes, bad input in metrics.jsonl, and a trained reward model driving GRPO."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.chat_data import load_rows
from align.config import load_config, parse_config
from align.trainer import read_metrics
from tests.integration.exactness import launch_two, stable
from tests.support import reset_accelerate_state

ROOT = Path(__file__).resolve().parents[2]


def _load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"align_recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sft_recipe = _load_recipe("sft")
rm_recipe = _load_recipe("reward_model")
dpo_recipe = _load_recipe("dpo")


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """32 training and 8 held-out rows of the shipped SFT and preference data (keeps the runs short)."""
    root = tmp_path_factory.mktemp("data")
    for kind in ("sft", "prefs"):
        (root / kind).mkdir()
        for split, n in (("train", 32), ("test", 8)):
            rows = load_rows(None, split, default=kind, limit=n)
            (root / kind / f"{split}.jsonl").write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
    return root


def common(tmp_path, model_dir, data, name="out", *extra):
    return [
        "--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / name), "--dataset_name", str(data),
        "--max_length", "128", "--disable_progress_bar", "true", "--learning_rate", "1e-3",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", *extra,
    ]  # fmt: skip


def weights(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    assert files, f"no safetensors in {path}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def same_weights(a: Path, b: Path, atol: float = 1e-6) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=atol, rtol=0) for k in wa)


def check_outputs(out: Path, steps: int, lora: bool, cls) -> None:
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all("throughput/tokens_per_second" in r and "data/kept" in r for r in rows)
    load_config(cls, out / "config.yaml")  # the saved config reloads
    model = out / "model"
    assert (model / ("adapter_config.json" if lora else "config.json")).is_file()
    assert (model / "tokenizer_config.json").is_file()
    assert json.loads((out / "summary.json").read_text())["steps"] == steps


# --- each recipe, full and LoRA ----------------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True])
def test_sft_recipe(tmp_path, tiny_model_dir, small_data, lora):
    from align.models import load_causal_lm

    summary = sft_recipe.main(
        common(
            tmp_path, tiny_model_dir, small_data / "sft", "out", "--max_steps", "3", "--use_lora", str(lora)
        )
    )
    check_outputs(tmp_path / "out", 3, lora, sft_recipe.SFTConfig)
    assert summary["eval_loss_after"] < summary["eval_loss_before"]
    assert summary["eval_perplexity_after"] == pytest.approx(
        torch.tensor(summary["eval_loss_after"]).exp().item()
    )
    load_causal_lm(tmp_path / "out" / "model")  # full weights or the adapter on its base


def test_sft_packing_and_merged_lora(tmp_path, tiny_model_dir, small_data):
    summary = sft_recipe.main(
        common(tmp_path, tiny_model_dir, small_data / "sft", "out", "--max_steps", "2", "--packing", "true",
               "--use_lora", "true", "--merge_lora_on_save", "true")
    )  # fmt: skip
    assert summary["steps"] == 2
    model = tmp_path / "out" / "model"
    assert (model / "config.json").is_file() and not (model / "adapter_config.json").exists()
    assert set(weights(model)) == set(weights(Path(tiny_model_dir)))  # plain full weights after the merge


@pytest.mark.parametrize("lora", [False, True])
def test_reward_model_recipe_and_reward_function(tmp_path, tiny_model_dir, small_data, lora):
    from align.rewards.reward_model import make_reward_model_reward

    summary = rm_recipe.main(
        common(tmp_path, tiny_model_dir, small_data / "prefs", "out", "--max_steps", "3", "--use_lora", str(lora),
               "--center_rewards_coefficient", "0.01")
    )  # fmt: skip
    check_outputs(tmp_path / "out", 3, lora, rm_recipe.RewardModelConfig)
    assert 0.0 <= summary["eval_accuracy_after"] <= 1.0
    rows = read_metrics(tmp_path / "out")
    assert {"reward/accuracy", "reward/margin", "loss/reward"} <= set(rows[-1])
    reward = make_reward_model_reward(tmp_path / "out" / "model")
    data = load_rows(small_data / "prefs", "test")
    scores = reward([r["prompt"] for r in data], [r["chosen"] for r in data])
    assert len(scores) == len(data) and all(isinstance(s, float) for s in scores)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--use_lora", "true"],
        ["--precompute_ref_logprobs", "true"],
        ["--loss_type", "ipo", "--use_lora", "true", "--precompute_ref_logprobs", "true"],
    ],
    ids=["full", "lora", "precompute", "ipo_lora_precompute"],
)
def test_dpo_recipe(tmp_path, tiny_model_dir, small_data, extra):
    summary = dpo_recipe.main(
        common(tmp_path, tiny_model_dir, small_data / "prefs", "out", "--max_steps", "3", *extra)
    )
    check_outputs(tmp_path / "out", 3, "--use_lora" in extra, dpo_recipe.DPOConfig)
    rows = read_metrics(tmp_path / "out")
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy"} <= set(rows[-1])
    assert summary["eval_rewards_accuracy"] is not None and summary["eval_pairs"] == 8


# --- exactness: resume, accumulation, processes --------------------------------------------------------


@pytest.mark.parametrize("recipe", ["sft", "dpo"])
def test_resume_equals_uninterrupted(tmp_path, tiny_model_dir, small_data, recipe):
    module, data = (sft_recipe, "sft") if recipe == "sft" else (dpo_recipe, "prefs")
    run = lambda name, *extra: module.main(  # noqa: E731
        common(tmp_path, tiny_model_dir, small_data / data, name, "--save_steps", "3", *extra)
    )
    # 32 rows / batch 4 = 8 batches per epoch: 10 steps cross an epoch boundary after the resume point
    run("full", "--max_steps", "10")
    reset_accelerate_state()
    run("cut", "--max_steps", "3")
    reset_accelerate_state()
    run("cut", "--max_steps", "10", "--resume_from_checkpoint", "latest")
    assert same_weights(tmp_path / "full" / "model", tmp_path / "cut" / "model")
    full_rows, cut_rows = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [r["step"] for r in cut_rows] == list(range(1, 11))
    # every row as the uninterrupted run logged it, but for the wall-clock keys
    assert stable(cut_rows) == stable(full_rows)


def _sft_params(tmp_path, tiny_tokenizer, name, batch, acc):
    from align.trainers.sft import SFTConfig, SFTTrainer
    from tests.support import tiny_causal_lm

    cfg = parse_config(
        SFTConfig,
        ["--output_dir", str(tmp_path / name), "--max_steps", "2", "--learning_rate", "1e-3",
         "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", str(acc),
         "--disable_progress_bar", "true", "--max_grad_norm", "0"],
    )  # fmt: skip
    data = load_rows(None, "train", default="sft", limit=16)
    trainer = SFTTrainer(cfg, tiny_causal_lm(tiny_tokenizer), tiny_tokenizer, data)
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_sft_batch8_acc1_equals_batch2_acc4(tmp_path, tiny_tokenizer, monkeypatch):
    """The token mean spans the whole step (num_items): one big batch and accumulated small ones agree,
    although the examples (and so the micro-batches' token counts) have different lengths. Adam's first
    steps move each weight by about the learning rate (1e-3), so 1e-5 is float rounding, not a difference."""
    from align.trainers.sft import SFTTrainer
    from tests.support import tiny_causal_lm

    a = _sft_params(tmp_path, tiny_tokenizer, "a", 8, 1)
    reset_accelerate_state()
    b = _sft_params(tmp_path, tiny_tokenizer, "b", 2, 4)
    assert _max_diff(a, b) < 1e-5
    assert _max_diff(a, tiny_causal_lm(tiny_tokenizer).state_dict()) > 5e-4  # both did train
    # without the token count, averaging micro-batch means differs: the test above has teeth
    monkeypatch.setattr(SFTTrainer, "num_items", lambda self, batch: None)
    reset_accelerate_state()
    c = _sft_params(tmp_path, tiny_tokenizer, "c", 2, 4)
    assert _max_diff(a, c) > 1e-4


@pytest.mark.parametrize(
    ("recipe", "extra"),
    [("sft", []), ("dpo", ["--precompute_ref_logprobs", "true"])],
    ids=["sft", "dpo_precompute"],
)
def test_two_processes_equal_one(tmp_path, tiny_model_dir, small_data, recipe, extra):
    """accelerate launch with 2 CPU processes (gloo DDP), batch 2 each, ends where 1 process with batch 4 does."""
    module, data = (sft_recipe, "sft") if recipe == "sft" else (dpo_recipe, "prefs")
    base = common(
        tmp_path, tiny_model_dir, small_data / data, "one", "--max_steps", "3", "--max_grad_norm", "0", *extra
    )
    module.main(base)
    two = [a if a != str(tmp_path / "one") else str(tmp_path / "two") for a in base]
    two[two.index("--per_device_train_batch_size") + 1] = "2"
    launch_two(f"recipes/{recipe}.py", two)
    # The all-reduced gradient is the 1-process one (its norm agrees to float precision); the weights agree up
    # to Adam's amplification of rounding in near-zero gradients (bounded by the learning rate, 1e-3).
    norms = [[r["grad_norm"] for r in read_metrics(tmp_path / run)] for run in ("one", "two")]
    assert norms[0] == pytest.approx(norms[1], rel=1e-5)
    assert same_weights(tmp_path / "one" / "model", tmp_path / "two" / "model", atol=2e-4)
    one_eval = json.loads((tmp_path / "one" / "summary.json").read_text())
    two_eval = json.loads((tmp_path / "two" / "summary.json").read_text())
    key = "eval_loss_after" if recipe == "sft" else "eval_rewards_margins"
    assert two_eval[key] == pytest.approx(one_eval[key], abs=1e-4)  # sharded evaluation sums exactly


# --- bad input, and a reward model driving GRPO --------------------------------------------------------


def test_bad_rows_are_counted_in_metrics(tmp_path, tiny_model_dir, small_data):
    good = [json.loads(line) for line in (small_data / "prefs" / "train.jsonl").read_text().splitlines()][:8]
    bad = [
        {**good[0], "chosen": [{"role": "assistant", "content": ""}]},
        {**good[1], "rejected": good[1]["chosen"]},
        {**good[2], "chosen": [{"role": "assistant", "content": "very long " * 200}]},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    summary = dpo_recipe.main(common(tmp_path, tiny_model_dir, path, "out", "--max_steps", "1"))
    row = read_metrics(tmp_path / "out")[-1]
    assert row["data/kept"] == 8
    assert row["data/skipped/empty_completion"] == row["data/skipped/identical_pair"] == 1
    assert row["data/skipped/too_long"] == 1
    assert summary["data/skipped/too_long"] == 1
    (tmp_path / "nocol.jsonl").write_text(json.dumps({"prompt": "x", "answer": "y"}) + "\n")
    reset_accelerate_state()
    with pytest.raises(ValueError, match=r"missing column\(s\) \['chosen', 'rejected'\]"):
        dpo_recipe.main(
            common(tmp_path, tiny_model_dir, tmp_path / "nocol.jsonl", "out2", "--max_steps", "1")
        )


def test_grpo_trains_against_a_trained_reward_model(tmp_path, tiny_model_dir, small_data):
    from align.models import load_causal_lm, load_tokenizer
    from align.rewards.reward_model import make_reward_model_reward
    from align.trainers.grpo import GRPOConfig, GRPOTrainer

    rm_recipe.main(common(tmp_path, tiny_model_dir, small_data / "prefs", "rm", "--max_steps", "2"))
    reset_accelerate_state()
    reward = make_reward_model_reward(tmp_path / "rm" / "model", batch_size=4)
    prompts = load_rows(small_data / "prefs", "train").select_columns(["prompt"])
    cfg = parse_config(
        GRPOConfig,
        ["--output_dir", str(tmp_path / "grpo"), "--max_steps", "1", "--per_device_train_batch_size", "4",
         "--num_generations", "2", "--max_new_tokens", "6", "--disable_progress_bar", "true", "--log_completions", "0"],
    )  # fmt: skip
    trainer = GRPOTrainer(
        cfg, load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir), [reward], prompts
    )
    trainer.train()
    row = read_metrics(tmp_path / "grpo")[-1]
    assert "reward/reward_model/mean" in row and row["reward/reward_model/mean"] == row["reward/mean"]
