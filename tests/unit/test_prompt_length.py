"""The prompt-length guard of the RL trainers (GRPO, PPO-RLHF): max_prompt_length and prompt_truncation.

A prompt longer than the model's context used to reach ``generate`` whole (a process grew past 10 GB).
Now each prompt is measured before sampling and, when too long, cut from the left (keep_end), skipped and
replaced by another row (skip), or refused by row (error); the counts land in metrics.jsonl.
"""

import resource
import sys
import time

import pytest
from datasets import Dataset

from align.config import ConfigError, parse_config
from align.generation import HFGenerator, SamplingParams, tokenize_prompts
from align.trainer import read_metrics
from align.trainers.grpo import GRPOConfig, GRPOTrainer
from align.trainers.ppo import PPOConfig, PPOTrainer
from tests.support import save_tiny_model, tiny_causal_lm, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

LIMIT = 48  # the short prompts, with the template's system prompt, have about 40 tokens
QUESTION = "What is 2 + 2?"


def _long(words: int) -> list[dict]:
    """A chat prompt of about ``words`` tokens of padding followed by the question."""
    return [{"role": "user", "content": "lorem " * words + QUESTION}]


def _short(i: int) -> list[dict]:
    return [{"role": "user", "content": f"What is {i} + {i}?"}]


def _reward(prompts, completions, **kw):
    return [float(len(c[0]["content"]) % 3) for c in completions]


def _grpo(tmp_path, prompts, *extra, name="run"):
    """A GRPO trainer with the tiny model's real sampler: 2 prompts x 4 completions per rollout."""
    args = [
        "--output_dir", str(tmp_path / name), "--disable_progress_bar", "true", "--num_generations", "4",
        "--per_device_train_batch_size", "8", "--max_new_tokens", "4", "--max_steps", "1",
        "--log_completions", "0", *extra,
    ]  # fmt: skip
    cfg = parse_config(GRPOConfig, args)
    tok = tiny_tokenizer()
    data = Dataset.from_list([{"prompt": p} for p in prompts])
    return GRPOTrainer(cfg, tiny_causal_lm(tok), tok, [_reward], data)


def _record(trainer):
    """Keep every rollout the sampler returns and every micro-batch the loss sees."""
    seen = {"rollouts": [], "batches": []}
    generate, compute_loss = trainer.generator.generate, trainer.compute_loss

    def recording_generate(prompts, params, **kw):
        seen["rollouts"].append(generate(prompts, params, **kw))
        return seen["rollouts"][-1]

    def recording_loss(mb):
        seen["batches"].append(mb)
        return compute_loss(mb)

    trainer.generator.generate = recording_generate
    trainer.compute_loss = recording_loss
    return seen


def _prompt_rows(ids, mask):
    """The real (unpadded) prompt ids of each row of a left-padded batch."""
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


def test_keep_end_cuts_a_long_prompt_from_the_left_and_counts_it(tmp_path):
    tok = tiny_tokenizer()
    long_prompt = _long(10 * LIMIT)
    full = tokenize_prompts(tok, [long_prompt])[0]
    assert len(full) > 10 * LIMIT
    trainer = _grpo(tmp_path, [long_prompt, _short(1)], "--max_prompt_length", str(LIMIT))
    seen = _record(trainer)
    trainer.train()

    rollout = seen["rollouts"][0]
    sampled = _prompt_rows(rollout.prompt_ids, rollout.prompt_mask)
    assert max(len(ids) for ids in sampled) == LIMIT
    cut = [ids for ids in sampled if len(ids) == LIMIT]
    assert len(cut) == 4 and all(ids == full[-LIMIT:] for ids in cut)  # the whole group, its last tokens
    text = tok.decode(cut[0])
    assert text.endswith(QUESTION + "<|im_end|>\n<|im_start|>assistant\n")  # question end + generation prompt
    # The ids trained on are the ids sampled.
    trained = [ids for mb in seen["batches"] for ids in _prompt_rows(mb.prompt_ids, mb.prompt_mask)]
    assert sorted(map(tuple, trained)) == sorted(map(tuple, sampled))
    row = read_metrics(tmp_path / "run")[0]
    assert row["prompts/truncated"] == 1.0 and row["prompts/skipped"] == 0.0


def test_skip_drops_the_row_draws_another_and_counts_it(tmp_path):
    trainer = _grpo(
        tmp_path,
        [_long(10 * LIMIT), _short(1), _short(2), _short(3)],
        "--max_prompt_length", str(LIMIT), "--prompt_truncation", "skip",
    )  # fmt: skip
    seen = _record(trainer)
    long_row = trainer.train_dataset[0]
    # Batches in a fixed order: the long row comes with one short row, the next batch fills the rollout.
    trainer._data_iter = iter([[(0, long_row), (1, trainer.train_dataset[1])], [(2, trainer.train_dataset[2]), (3, trainer.train_dataset[3])]])  # fmt: skip
    trainer.train()

    rollout = seen["rollouts"][0]
    assert rollout.num_prompts == 2 and len(rollout) == 8  # full size, groups of 4 kept together
    assert [p[0]["content"] for p in rollout.prompts[::4]] == ["What is 1 + 1?", "What is 2 + 2?"]
    assert int(rollout.prompt_mask.sum(1).max()) <= LIMIT
    row = read_metrics(tmp_path / "run")[0]
    assert row["prompts/skipped"] == 1.0 and row["prompts/truncated"] == 0.0


def test_skip_of_a_whole_batch_draws_more_rows_never_an_empty_rollout(tmp_path):
    data = [_long(10 * LIMIT), _long(12 * LIMIT), _short(1), _short(2)]
    trainer = _grpo(tmp_path, data, "--max_prompt_length", str(LIMIT), "--prompt_truncation", "skip")
    seen = _record(trainer)
    rows = [trainer.train_dataset[i] for i in range(4)]
    trainer._data_iter = iter([[(0, rows[0]), (1, rows[1])], [(2, rows[2]), (3, rows[3])]])
    trainer.train()
    assert len(seen["rollouts"][0]) == 8
    assert read_metrics(tmp_path / "run")[0]["prompts/skipped"] == 2.0


def test_skip_with_no_prompt_that_fits_is_a_clear_error(tmp_path):
    trainer = _grpo(
        tmp_path, [_long(10 * LIMIT)] * 4, "--max_prompt_length", str(LIMIT), "--prompt_truncation", "skip"
    )
    with pytest.raises(
        ConfigError, match=r"prompt_truncation: skip: only 0 of the .* max_prompt_length = 48"
    ):
        trainer.train()


def test_error_names_the_row(tmp_path):
    trainer = _grpo(
        tmp_path,
        [_short(0), _long(10 * LIMIT)],
        "--max_prompt_length", str(LIMIT), "--prompt_truncation", "error",
    )  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"training row 1 has \d+ tokens, more than max_prompt_length = 48"
    ) as e:
        trainer.train()
    assert "\n" not in str(e.value)


def test_default_is_the_context_minus_max_new_tokens_and_a_huge_prompt_stays_small(tmp_path):
    """A 50,000-token prompt and no max_prompt_length: cut to the tiny model's 512 positions minus
    max_new_tokens; the step takes seconds and little memory (it used to attend over all 50,000 tokens)."""
    trainer = _grpo(tmp_path, [_long(50_000), _short(1)])
    assert trainer.max_prompt_length == 512 - 4  # before anything runs: today's code has no such limit
    seen = _record(trainer)
    # ru_maxrss is KiB on Linux, bytes on macOS; it only grows, so the difference bounds the step's peak.
    unit = 1 if sys.platform == "darwin" else 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit - before
    assert int(seen["rollouts"][0].prompt_mask.sum(1).max()) == 508
    assert read_metrics(tmp_path / "run")[0]["prompts/truncated"] == 1.0
    assert elapsed < 60, elapsed
    assert grown < 1.5e9, grown


def test_ppo_truncates_too(tmp_path):
    args = [
        "--output_dir", str(tmp_path / "ppo"), "--max_steps", "1", "--rollout_batch_size", "4",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--num_ppo_epochs", "1",
        "--max_new_tokens", "4", "--disable_progress_bar", "true", "--max_prompt_length", str(LIMIT),
        "--value_model", "shared", "--log_completions", "0",
    ]  # fmt: skip
    cfg = parse_config(PPOConfig, args)
    tok = tiny_tokenizer()
    data = Dataset.from_list([{"prompt": _long(10 * LIMIT)}] + [{"prompt": _short(i)} for i in range(3)])
    trainer = PPOTrainer(cfg, tiny_causal_lm(tok), tok, [_reward], data)
    seen = _record(trainer)
    trainer.train()
    rollout = seen["rollouts"][0]
    assert int(rollout.prompt_mask.sum(1).max()) == LIMIT
    assert read_metrics(tmp_path / "ppo")[0]["prompts/truncated"] == 1.0


def test_sampler_samples_from_the_ids_it_is_given():
    tok = tiny_tokenizer()
    generator = HFGenerator(tiny_causal_lm(tok), tok)
    params = SamplingParams(max_new_tokens=2, num_generations=2, seed=0)
    ids = tokenize_prompts(tok, [_long(100)])[0][-LIMIT:]
    rollout = generator.generate([_long(100)], params, prompt_ids=[ids])
    assert _prompt_rows(rollout.prompt_ids, rollout.prompt_mask) == [ids, ids]
    with pytest.raises(ValueError, match="prompt_ids has 2 rows for 1 prompts"):
        generator.generate([_long(100)], params, prompt_ids=[ids, ids])


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


def test_config_checks_the_fields():
    with pytest.raises(ConfigError, match="max_prompt_length"):
        parse_config(GRPOConfig, ["--max_prompt_length", "0"])
    with pytest.raises(ConfigError, match="prompt_truncation"):
        parse_config(GRPOConfig, ["--prompt_truncation", "keep_start"])
    cfg = parse_config(PPOConfig, ["--max_prompt_length", "100", "--prompt_truncation", "skip"])
    assert cfg.max_prompt_length == 100 and cfg.prompt_truncation == "skip"


def test_config_refuses_more_than_a_local_models_context(tmp_path):
    """With a local model directory, the context (512 positions) is known before the model loads."""
    model_dir = save_tiny_model(tmp_path / "tiny")
    base = ["--model_name_or_path", str(model_dir), "--max_new_tokens", "64"]
    with pytest.raises(
        ConfigError,
        match=r"max_prompt_length \+ max_new_tokens = 500 \+ 64 = 564 is more than the model's context of 512",
    ):
        parse_config(GRPOConfig, [*base, "--max_prompt_length", "500"])
    with pytest.raises(ConfigError, match="max_new_tokens = 600 leaves no room for a prompt"):
        parse_config(GRPOConfig, ["--model_name_or_path", str(model_dir), "--max_new_tokens", "600"])
    assert parse_config(GRPOConfig, [*base, "--max_prompt_length", "448"]).max_prompt_length == 448


def test_trainer_refuses_more_than_the_loaded_models_context(tmp_path):
    with pytest.raises(
        ConfigError, match=r"max_prompt_length \+ max_new_tokens = 510 \+ 4 = 514 .* 512 tokens"
    ):
        _grpo(tmp_path, [_short(0), _short(1)], "--max_prompt_length", "510")
    with pytest.raises(ConfigError, match="max_new_tokens = 512 leaves no room"):
        _grpo(tmp_path, [_short(0), _short(1)], "--max_new_tokens", "512", name="b")
    assert (
        not (tmp_path / "run").exists() and not (tmp_path / "b").exists()
    )  # refused before anything is written
