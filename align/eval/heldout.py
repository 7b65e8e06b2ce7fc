"""Held-out accuracy of greedy answers: the quick evaluation that trainers run every ``eval_steps``.

A task's verifier is its reward: the same reward function that trains the policy scores its answers
here (a score of 1 is correct). The full evaluation harness (MATH500, ARC, pass@k) builds on this.
"""

import math
from collections.abc import Callable
from typing import Any

import torch

from align.generation import Generator, SamplingParams
from align.rewards.combine import NonFiniteRewardError, reward_name


def _check_finite(reward_fn: Callable, scores: list) -> None:
    bad = next((s for s in scores if s is not None and not math.isfinite(s)), None)
    if bad is not None:
        raise NonFiniteRewardError(
            f"reward function {reward_name(reward_fn)!r} returned {bad} in evaluation; a reward returns a "
            "finite number, or None for 'not applicable'"
        )


def heldout_accuracy(
    generator: Generator,
    dataset: Any,
    reward_fn: Callable,
    *,
    max_new_tokens: int = 256,
    limit: int | None = None,
    batch_size: int = 32,
    accelerator: Any = None,
) -> dict[str, float]:
    """Greedy-decode each row's ``prompt`` and score it with ``reward_fn`` (other columns by name).

    Rows are split across processes when ``accelerator`` is given and the counts summed. Returns
    ``accuracy`` (score >= 1 counts as correct, a missing answer is wrong) over the scorable rows: a row
    the reward returned None for (its gold cannot be used) is left out and counted as ``unscorable``, as
    ``align eval`` does (NaN when no row is scorable); also ``n``, ``correct`` and ``mean_length``
    (completion tokens, over all rows).
    """
    n_rows = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    indices = list(range(rank, n_rows, world))
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, num_generations=1)
    correct = unscorable = tokens = 0.0
    for start in range(0, len(indices), batch_size):
        rows = [dataset[i] for i in indices[start : start + batch_size]]
        prompts = [r["prompt"] for r in rows]
        rollout = generator.generate(prompts, params)
        completions: list[Any] = rollout.completion_texts
        if isinstance(prompts[0], list):
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
        scores = reward_fn(prompts=prompts, completions=completions, **columns)
        _check_finite(reward_fn, scores)
        correct += sum(1.0 for s in scores if s is not None and s >= 1.0)
        unscorable += sum(1.0 for s in scores if s is None)
        tokens += float(rollout.completion_lengths.sum())
    pop = getattr(reward_fn, "pop_stats", None)
    if callable(pop):
        pop()  # evaluation failures are not training-reward statistics
    counts = torch.tensor([correct, unscorable, tokens, float(len(indices))])
    if accelerator is not None and accelerator.num_processes > 1:
        counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
    correct, unscorable, tokens, n = counts.tolist()
    return {
        "accuracy": correct / (n - unscorable) if n > unscorable else float("nan"),
        "n": n,
        "correct": correct,
        "unscorable": unscorable,
        "mean_length": tokens / max(n, 1.0),
    }


def heldout_evaluator(
    dataset: Any, reward_fn: Callable, *, max_new_tokens: int = 256, limit: int | None = None
) -> Callable[[Any], dict[str, float]]:
    """The in-training evaluation of an RL trainer (``Trainer(evaluator=...)``): ``heldout_accuracy`` with
    the trainer's own sampler and processes, as ``eval/accuracy``, ``eval/mean_length`` and
    ``eval/unscorable`` (rows left out of the accuracy)."""

    def evaluate(trainer: Any) -> dict[str, float]:
        res = heldout_accuracy(
            trainer.generator,
            dataset,
            reward_fn,
            max_new_tokens=max_new_tokens,
            limit=limit,
            accelerator=trainer.accelerator,
        )
        return {
            "eval/accuracy": res["accuracy"],
            "eval/mean_length": res["mean_length"],
            "eval/unscorable": res["unscorable"],
        }

    return evaluate
