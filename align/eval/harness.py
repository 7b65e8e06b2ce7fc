r"""The evaluation harness: run a task's rows through a model and score them with the task's verifier.

Two modes:

- `evaluate_generate(task, rows, generator, ...)`: sample `num_samples` completions per problem through a
  `align.generation.Generator` (HF `generate` now; vLLM behind the same interface), extract and score each
  with the task (its score is the training reward), and compute accuracy (mean score = pass@1), unbiased
  pass@k and maj@k (see `align.eval.metrics`).
- `evaluate_loglikelihood(task, rows, model, tokenizer, ...)`: multiple choice as lm-evaluation-harness
  scores it, `acc` and `acc_norm` (see `align.eval.loglikelihood`).

Both return a `TaskResult`: a JSON-ready `summary` and one record per sample for `samples.jsonl`.
Accounting: a completion with no answer or a verifier timeout counts as wrong; each is counted in the
summary (`no_answer`, `timeouts`, and the verifier's other counters under `verifier`). A problem whose gold
answer cannot be parsed (or is missing) cannot be scored: the task's score is None, as the reward's "not
applicable", and such a problem is left out of every metric (accuracy, its interval, pass@k, maj@k are
over the `n_scorable` problems), counted (`unscorable`, `unscorable_indices`) and listed in the report.
Counting it as wrong would measure the dataset's gold answers, not the model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from align.eval.loglikelihood import choice_loglikelihoods, encode_choices
from align.eval.metrics import majority_vote, mean_pass_at_k, wilson_interval
from align.eval.tasks import Task
from align.generation import Generator, SamplingParams

__all__ = ["TaskResult", "default_ks", "evaluate_generate", "evaluate_loglikelihood"]

logger = logging.getLogger(__name__)


@dataclass
class TaskResult:
    """What one task's evaluation produced."""

    task: str
    mode: str
    summary: dict[str, Any]
    """Metrics and counts (JSON-ready); the runner adds model and settings."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    """One record per (problem, sample): prompt, completion, extracted, gold, correct, ..."""
    problems: list[dict[str, Any]] = field(default_factory=list)
    """One record per problem: its breakdown columns and per-problem accuracy (for the report)."""

    @property
    def accuracy(self) -> float:
        """The summary's accuracy; NaN when no problem could be scored (the summary holds None)."""
        value = self.summary["accuracy"]
        return float("nan") if value is None else float(value)


def default_ks(n: int) -> list[int]:
    """pass@k / maj@k sizes reported by default: 1, the powers of two below n, and n."""
    ks, k = [1], 2
    while k < n:
        ks.append(k)
        k *= 2
    if n > 1:
        ks.append(n)
    return ks


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)


def _interval(p: float | None, n: int) -> list[float] | None:
    if p is None:
        return None
    lo, hi = wilson_interval(p, n)
    return [round(lo, 6), round(hi, 6)]


def evaluate_generate(
    task: Task,
    rows: Sequence[dict],
    generator: Generator,
    *,
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 1024,
    seed: int | None = 0,
    batch_size: int = 16,
    ks: Sequence[int] | None = None,
    progress: bool = True,
) -> TaskResult:
    """Sample, extract, score; accuracy (pass@1) with a 95% Wilson interval, pass@k and maj@k.

    `generator` is anything with `generate(prompts, SamplingParams) -> Rollout`; `num_samples` (n) > 1 needs
    temperature > 0 (0 = greedy). Problems are sorted by prompt length into batches of `batch_size` (less
    padding; outputs keep the dataset order), and batch b samples with seed `seed + b` (None = unseeded), so
    a run is repeatable. `ks`: the pass@k / maj@k sizes (each <= n), default `default_ks(n)`. Problems
    whose gold cannot be parsed are left out of the metrics and counted (see the module docstring).
    """
    ks = _check_generate_args(task, rows, num_samples, temperature, batch_size, ks)
    task.pop_stats()  # count only this evaluation's failures
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        num_generations=num_samples,
        seed=seed,
        return_logprobs=False,
    )
    samples, problems = _sample_and_score(task, rows, generator, params, batch_size, ks, progress)
    summary = _generate_summary(task, len(rows), num_samples, ks, problems, samples)
    for p in problems:
        p.pop("majority")
    return TaskResult(task.name, "generate", summary, samples, problems)


def _sample_and_score(
    task: Task,
    rows: Sequence[dict],
    generator: Generator,
    params: SamplingParams,
    batch_size: int,
    ks: Sequence[int],
    progress: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Sample ``params.num_generations`` completions per row, ``batch_size`` rows per ``generate`` call with
    seed ``params.seed + b`` for batch b, and score them: the sample records and the problem records, both
    in dataset order."""
    n = params.num_generations
    prompts = [task.build_prompt(row) for row in rows]
    order = sorted(range(len(rows)), key=lambda i: -len(str(prompts[i])))
    per_problem: list[dict[str, Any] | None] = [None] * len(rows)
    samples: list[list[dict] | None] = [None] * len(rows)
    correct = scored = 0
    bar = _progress(len(rows), task.name, progress)
    try:
        for b, start in enumerate(range(0, len(order), batch_size)):
            batch = order[start : start + batch_size]
            seed = None if params.seed is None else params.seed + b
            rollout = generator.generate([prompts[i] for i in batch], dataclasses.replace(params, seed=seed))
            # (text, ended with eos, completion tokens) per completion; problem j owns rows j*n .. j*n+n-1
            completions = list(
                zip(rollout.completion_texts, rollout.is_eos.tolist(), rollout.completion_lengths.tolist())
            )
            for j, i in enumerate(batch):
                samples[i], per_problem[i] = _score_problem(
                    task, rows[i], i, prompts[i], completions[j * n : (j + 1) * n], ks
                )
                if per_problem[i]["scorable"]:
                    correct += per_problem[i]["correct"]
                    scored += 1
            bar.update(len(batch))
            if scored:
                bar.set_postfix(acc=f"{correct / (scored * n):.3f}")
    finally:
        bar.close()
    records = [rec for group in samples if group for rec in group]
    return records, [p for p in per_problem if p is not None]


def _check_generate_args(
    task: Task,
    rows: Sequence[dict],
    num_samples: int,
    temperature: float,
    batch_size: int,
    ks: Sequence[int] | None,
) -> list[int]:
    """Refuse settings ``evaluate_generate`` cannot honour; return the pass@k / maj@k sizes, sorted."""
    if not rows:
        raise ValueError(f"{task.name}: no rows to evaluate")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_samples > 1 and temperature == 0:
        raise ValueError("num_samples > 1 needs temperature > 0 (greedy decoding gives n identical samples)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ks = sorted(set(ks)) if ks else default_ks(num_samples)
    bad = [k for k in ks if not 1 <= k <= num_samples]
    if bad:
        raise ValueError(f"pass@k sizes must be in [1, num_samples={num_samples}], got {bad}")
    return ks


def _score_problem(
    task: Task,
    row: dict,
    i: int,
    prompt: Any,
    completions: Sequence[tuple[str, bool, int]],
    ks: Sequence[int],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score the ``n`` completions ``(text, ended with eos, tokens)`` of problem ``i``: one record per sample
    for samples.jsonl, and the problem's record (correct count, accuracy, maj@k correctness per k).

    A score of None means the gold cannot be used: the sample's ``correct`` is None (not scored, not
    wrong), and the problem is unscorable (``scorable`` False, ``accuracy`` None), with its id, question
    and gold as written for the report's list."""
    records, scores, answers = [], [], []
    for s, (completion, is_eos, length) in enumerate(completions):
        score = task.score(row, completion)
        extracted = task.extract(row, completion)
        scores.append(0.0 if score is None else float(score))
        answers.append(extracted)
        records.append(
            {
                "task": task.name,
                "index": i,
                "id": task.row_id(row, i),
                "sample": s,
                "prompt": prompt,
                "completion": completion,
                "extracted": extracted,
                "gold": task.gold(row),
                "correct": None if score is None else bool(score >= 1.0),
                "score": score,
                "truncated": not is_eos,
                "completion_tokens": int(length),
                **{c: row.get(c) for c in task.breakdown_columns},
            }
        )
    c = sum(1 for rec in records if rec["correct"])
    scorable = all(rec["score"] is not None for rec in records)
    problem = {
        "index": i,
        "scorable": scorable,
        "correct": c,
        "accuracy": c / len(completions) if scorable else None,
        "majority": {k: majority_vote(answers[:k], scores[:k])[1] for k in ks},
        **{col: row.get(col) for col in task.breakdown_columns},
    }
    if not scorable:
        problem.update(id=task.row_id(row, i), question=task.question(row), raw_gold=task.raw_gold(row))
    return records, problem


def _generate_summary(
    task: Task, num_rows: int, n: int, ks: Sequence[int], problems: list[dict], records: list[dict]
) -> dict[str, Any]:
    """The JSON-ready summary of a generate evaluation: accuracy and its interval, pass@k and maj@k over the
    scorable problems (None when there is none), and the counts of every way a sample can fail (no answer,
    verifier timeout, truncation) or a problem cannot be scored (its indices in ``unscorable_indices``)."""
    scored = [p for p in problems if p["scorable"]]
    m = len(scored)
    correct = sum(p["correct"] for p in scored)
    accuracy = correct / (m * n) if m else None
    if not m:
        logger.warning("%s: no problem has a scorable gold answer; accuracy is undefined", task.name)
    stats = task.pop_stats()
    counts = [p["correct"] for p in scored]
    return {
        "task": task.name,
        "mode": "generate",
        "n": num_rows,
        "n_scorable": m,
        "num_samples": n,
        "accuracy": accuracy,
        "accuracy_ci95": _interval(accuracy, m),
        "ci_method": "wilson (sample size = scorable problems)",
        "correct": correct,
        **{f"pass@{k}": mean_pass_at_k(counts, n, k) if m else None for k in ks},
        **{f"maj@{k}": sum(p["majority"][k] for p in scored) / m if m else None for k in ks},
        "no_answer": sum(rec["extracted"] is None for rec in records),
        "unscorable": num_rows - m,
        "unscorable_indices": [p["index"] for p in problems if not p["scorable"]],
        "timeouts": int(stats.get("timeouts", 0)),
        "truncated": sum(rec["truncated"] for rec in records),
        "mean_completion_tokens": sum(rec["completion_tokens"] for rec in records) / (num_rows * n),
        "verifier": stats,
    }


def evaluate_loglikelihood(
    task: Task,
    rows: Sequence[dict],
    model: Any,
    tokenizer: Any,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> TaskResult:
    """lm-eval's multiple-choice scoring: `acc` (argmax of summed log-likelihood) and `acc_norm` (argmax of
    log-likelihood / character length of the choice), each with a 95% Wilson interval. `accuracy` is `acc`.

    `batch_size` counts (question, choice) pairs per forward pass, as lm-eval's does.
    """
    if not rows:
        raise ValueError(f"{task.name}: no rows to evaluate")
    if not hasattr(task, "gold_index"):
        raise ValueError(f"task {task.name!r} has no multiple-choice form; use mode 'generate'")
    contexts = [task.context(row) for row in rows]
    choices = [task.choices(row) for row in rows]
    requests = [encode_choices(tokenizer, ctx, [" " + c for c in ch]) for ctx, ch in zip(contexts, choices)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar = _progress(len(rows), task.name, progress)
    try:
        lls = choice_loglikelihoods(
            model, requests, pad_id=pad_id, batch_size=batch_size, on_batch=bar.update
        )
    finally:
        bar.close()

    samples = [
        _choice_record(task, i, row, contexts[i], ch, ll)
        for i, (row, ll, ch) in enumerate(zip(rows, lls, choices))
    ]
    problems = [
        {"index": i, "correct": int(r["correct"]), "accuracy": float(r["correct"])}
        for i, r in enumerate(samples)
    ]
    n = len(rows)
    acc_total = sum(r["correct"] for r in samples)
    norm_total = sum(r["correct_norm"] for r in samples)
    summary = {
        "task": task.name,
        "mode": "loglikelihood",
        "n": n,
        "num_samples": 1,
        "accuracy": acc_total / n,
        "accuracy_ci95": _interval(acc_total / n, n),
        "acc": acc_total / n,
        "acc_ci95": _interval(acc_total / n, n),
        "acc_norm": norm_total / n,
        "acc_norm_ci95": _interval(norm_total / n, n),
        "ci_method": "wilson (sample size = problems)",
        "correct": acc_total,
    }
    return TaskResult(task.name, "loglikelihood", summary, samples, problems)


def _choice_record(
    task: Task, i: int, row: dict, context: str, choices: list[str], ll: list[float]
) -> dict[str, Any]:
    """The samples.jsonl record of multiple-choice problem ``i``: the choices' log-likelihoods, the argmax
    (``extracted``, acc) and the argmax per character (``extracted_norm``, acc_norm) against the gold."""
    labels = task.labels(row)
    gold = task.gold_index(row)
    pred = max(range(len(ll)), key=lambda j: ll[j])  # first maximum, as numpy's argmax
    pred_norm = max(range(len(ll)), key=lambda j: ll[j] / max(len(choices[j]), 1))
    return {
        "task": task.name,
        "index": i,
        "id": task.row_id(row, i),
        "prompt": context,
        "choices": choices,
        "loglikelihoods": ll,
        "extracted": labels[pred],
        "extracted_norm": labels[pred_norm],
        "gold": labels[gold],
        "correct": pred == gold,
        "correct_norm": pred_norm == gold,
    }
