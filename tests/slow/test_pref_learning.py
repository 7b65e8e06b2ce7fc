"""Learning checks on the embedded SmolLM2-135M-Instruct (CPU, LoRA, a few dozen steps at most).

- SFT lowers the held-out loss of the project's instruction data (data/sft).
- The Bradley-Terry reward model reaches held-out pair accuracy well above chance (data/prefs).
- DPO makes the implicit reward margin positive on most held-out pairs, and the policy's greedy answers
  move toward the chosen behaviour (the share that passes data/make_prefs.py's property check rises).

Each test prints its numbers (run with ``-s``); sized to fit CI: about a minute each on an idle 2-core CPU.
"""

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from align.chat_data import load_rows
from align.config import parse_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerate_state")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from align.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="module")
def make_prefs():
    spec = importlib.util.spec_from_file_location("make_prefs", ROOT / "data" / "make_prefs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(name: str, numbers: dict) -> None:
    """Print the numbers; with ALIGN_SLOW_RESULTS=path also append them there as a JSON line."""
    line = json.dumps({"test": name, **numbers})
    print(f"\n[learning] {line}")
    path = os.environ.get("ALIGN_SLOW_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def flags(tmp_path, steps: int, batch: int, lr: float, *extra: str) -> list[str]:
    return [
        "--output_dir", str(tmp_path / "out"), "--max_steps", str(steps), "--per_device_train_batch_size", str(batch),
        "--learning_rate", str(lr), "--use_lora", "true", "--dtype", "float32", "--max_length", "128",
        "--disable_progress_bar", "true", "--per_device_eval_batch_size", "16", "--seed", "0", *extra,
    ]  # fmt: skip


def test_sft_lowers_heldout_loss(tmp_path, tokenizer):
    from align.models import apply_lora, load_causal_lm
    from align.trainers.sft import SFTConfig, SFTTrainer

    t0 = time.perf_counter()
    cfg = parse_config(SFTConfig, flags(tmp_path, 8, 8, 3e-4, "--eval_limit", "32"))
    model = apply_lora(load_causal_lm(None, dtype="float32"), **cfg.lora_kwargs())
    train = load_rows(None, "train", default="sft", limit=64)
    trainer = SFTTrainer(cfg, model, tokenizer, train, eval_dataset=load_rows(None, "test", default="sft"))
    before = trainer.evaluate()["eval/loss"]
    trainer.train()
    after = trainer.evaluate()["eval/loss"]
    report("sft", {"eval_loss_before": before, "eval_loss_after": after, "steps": 8, "batch": 8,
                   "heldout_rows": 32, "seconds": time.perf_counter() - t0})  # fmt: skip
    assert after < 0.8 * before


def test_reward_model_accuracy_well_above_chance(tmp_path, tokenizer):
    from align.models import apply_lora, load_sequence_classifier
    from align.trainers.reward_model import RewardModelConfig, RewardModelTrainer

    t0 = time.perf_counter()
    cfg = parse_config(RewardModelConfig, flags(tmp_path, 16, 4, 5e-4, "--eval_limit", "64"))
    model = load_sequence_classifier(None, dtype="float32", pad_token_id=tokenizer.pad_token_id)
    model = apply_lora(model, task_type="SEQ_CLS", **cfg.lora_kwargs())
    train = load_rows(None, "train", default="prefs", limit=64)
    trainer = RewardModelTrainer(
        cfg, model, tokenizer, train, eval_dataset=load_rows(None, "test", default="prefs")
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    report("reward_model", {
        "eval_accuracy_before": before["eval/accuracy"], "eval_accuracy_after": after["eval/accuracy"],
        "eval_margin_after": after["eval/margin"], "steps": 16, "pairs_per_step": 4, "heldout_pairs": 64,
        "seconds": time.perf_counter() - t0,
    })  # fmt: skip
    assert after["eval/accuracy"] >= 0.85
    assert after["eval/margin"] > 1.0


def test_dpo_raises_preference_accuracy_and_moves_greedy_answers(tmp_path, tokenizer, make_prefs):
    from align.generation import SamplingParams, make_generator
    from align.models import apply_lora, load_causal_lm
    from align.trainers.dpo import DPOConfig, DPOTrainer

    t0 = time.perf_counter()
    cfg = parse_config(
        DPOConfig, flags(tmp_path, 12, 4, 2e-4, "--eval_limit", "32", "--precompute_ref_logprobs", "true")
    )
    model = apply_lora(load_causal_lm(None, dtype="float32"), **cfg.lora_kwargs())
    heldout = load_rows(None, "test", default="prefs")
    # Greedy answers to held-out prompts, before and after. JSON prompts are left out of the probe: the
    # embedded model already answers them as asked, so there is nothing to move.
    probe = [r for r in heldout if r["kind"] != "json"][:16]
    generator = make_generator("hf", model, tokenizer)
    params = SamplingParams(max_new_tokens=32, temperature=0, return_logprobs=False)

    def property_rate() -> tuple[float, list[str]]:
        texts = generator.generate([r["prompt"] for r in probe], params).completion_texts
        ok = [make_prefs.check(r["kind"], r["answer"], t) for r, t in zip(probe, texts)]
        return sum(ok) / len(ok), texts

    def mean_words(texts: list[str]) -> float:
        counts = [len(t.split()) for r, t in zip(probe, texts) if r["kind"] == "word_limit"]
        return sum(counts) / max(len(counts), 1)

    rate_before, texts_before = property_rate()
    train = load_rows(None, "train", default="prefs", limit=48)
    trainer = DPOTrainer(cfg, model, tokenizer, train, eval_dataset=heldout)
    trainer.train()
    after = trainer.evaluate()
    generator.sync_weights(trainer.model)
    rate_after, texts_after = property_rate()
    report("dpo", {
        "eval_rewards_accuracy": after["eval/rewards/accuracy"], "eval_rewards_margins": after["eval/rewards/margins"],
        "eval_rewards_chosen": after["eval/rewards/chosen"], "eval_rewards_rejected": after["eval/rewards/rejected"],
        "greedy_property_rate_before": rate_before, "greedy_property_rate_after": rate_after,
        "word_limit_mean_words_before": mean_words(texts_before), "word_limit_mean_words_after": mean_words(texts_after),
        "steps": 12, "pairs_per_step": 4, "heldout_pairs": 32, "probe_prompts": len(probe),
        "examples": [{"kind": r["kind"], "before": b[:80], "after": a[:80]}
                     for r, b, a in zip(probe, texts_before, texts_after) if b != a][:4],
        "seconds": time.perf_counter() - t0,
    })  # fmt: skip
    # Before training every margin is 0 (the policy is the reference), so accuracy starts at 0.
    assert after["eval/rewards/accuracy"] >= 0.7
    assert after["eval/rewards/margins"] > 0
    assert rate_after > rate_before
