"""Learning check: PPO-RLHF raises the reward-model score of the embedded model on held-out prompts while the
KL to the reference stays under the adaptive controller's target.

Stage 1 trains a Bradley-Terry reward model (LoRA, 16 steps x 4 pairs of data/prefs, merged on save); stage 2
runs PPO (LoRA policy, value head on the policy, reference = adapter disabled) against it on the training
prompts of data/prefs. Held-out: the first 24 test prompts, 2 samples each at temperature 1, the same seed
before and after. Run with ``-s`` for the numbers; about 4 minutes on an idle 2-core CPU.
"""

import json
import os
import time

import pytest
import torch
from datasets import Dataset

from align.chat_data import load_rows
from align.config import parse_config
from align.eval.reward_kl import reward_kl_evaluator
from align.trainer import read_metrics
from tests.support import reset_accelerate_state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerate_state")]

KL_TARGET = 6.0


def report(numbers: dict) -> None:
    line = json.dumps({"test": "ppo_rlhf", **numbers})
    print(f"\n[learning] {line}")
    path = os.environ.get("ALIGN_SLOW_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def test_ppo_raises_heldout_reward_under_kl_target(tmp_path, embedded_model_dir):
    from align.models import apply_lora, load_causal_lm, load_sequence_classifier, load_tokenizer
    from align.rewards.reward_model import make_reward_model_reward
    from align.trainers.common import save_final_model
    from align.trainers.ppo import PPOConfig, PPOTrainer
    from align.trainers.reward_model import RewardModelConfig, RewardModelTrainer

    t0 = time.perf_counter()
    tokenizer = load_tokenizer(None)
    common = ["--dtype", "float32", "--use_lora", "true", "--disable_progress_bar", "true", "--seed", "0"]
    rm_cfg = parse_config(RewardModelConfig, [
        "--output_dir", str(tmp_path / "rm"), "--max_steps", "16", "--per_device_train_batch_size", "4",
        "--learning_rate", "5e-4", "--max_length", "128", "--eval_limit", "32", *common,
    ])  # fmt: skip
    rm = load_sequence_classifier(None, dtype="float32", pad_token_id=tokenizer.pad_token_id)
    rm = apply_lora(rm, task_type="SEQ_CLS", **rm_cfg.lora_kwargs())
    rm_trainer = RewardModelTrainer(
        rm_cfg, rm, tokenizer, load_rows(None, "train", default="prefs", limit=64),
        eval_dataset=load_rows(None, "test", default="prefs"),
    )  # fmt: skip
    rm_trainer.train()
    rm_accuracy = rm_trainer.evaluate()["eval/accuracy"]
    save_final_model(rm_trainer, tmp_path / "rm" / "model", merge_lora=True)
    t_rm = time.perf_counter() - t0
    del rm_trainer, rm
    reset_accelerate_state()

    cfg = parse_config(PPOConfig, [
        "--output_dir", str(tmp_path / "ppo"), "--reward_funcs", "reward_model", "--value_model", "shared",
        "--rollout_batch_size", "16", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
        "--num_ppo_epochs", "2", "--max_new_tokens", "40", "--learning_rate", "5e-4", "--max_steps", "14",
        "--kl_coef", "0.1", "--adaptive_kl", "true", "--kl_target", str(KL_TARGET), "--kl_horizon", "64",
        "--missing_eos_penalty", "1.0", "--eval_limit", "24", "--eval_samples", "2", *common,
    ])  # fmt: skip
    policy = apply_lora(load_causal_lm(None, dtype="float32"), **cfg.lora_kwargs())
    reward = make_reward_model_reward(tmp_path / "rm" / "model", batch_size=16, dtype="float32")
    prompts = [{"prompt": r["prompt"]} for r in load_rows(None, "train", default="prefs")]
    heldout = [{"prompt": r["prompt"]} for r in load_rows(None, "test", default="prefs")]
    torch.manual_seed(0)
    evaluator = reward_kl_evaluator(heldout, limit=cfg.eval_limit, num_samples=cfg.eval_samples)
    trainer = PPOTrainer(cfg, policy, tokenizer, [reward], Dataset.from_list(prompts), evaluator=evaluator)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    rows = [r for r in read_metrics(tmp_path / "ppo") if "completions/tokens" in r]  # one per iteration
    report({
        "reward_model_heldout_accuracy": rm_accuracy, "reward_model_seconds": t_rm,
        "heldout_score_before": before["eval/score"], "heldout_score_after": after["eval/score"],
        "heldout_kl_after": after["eval/kl"], "kl_target": KL_TARGET,
        "rollout_score_first": rows[0]["score/mean"], "rollout_score_last": rows[-1]["score/mean"],
        "rollout_kl": [round(r["kl"], 3) for r in rows], "beta": [round(r["beta"], 4) for r in rows],
        "mean_length_before": before["eval/mean_length"], "mean_length_after": after["eval/mean_length"],
        "iterations": len(rows), "seconds": time.perf_counter() - t0,
    })  # fmt: skip
    assert after["eval/score"] >= before["eval/score"] + 0.3
    assert after["eval/kl"] < KL_TARGET
    assert max(r["kl"] for r in rows) < 1.5 * KL_TARGET
