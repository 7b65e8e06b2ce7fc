r"""The evaluation harness: run a task's rows through a model and score them with the task's verifier.

Two modes:

- `evaluate_generate(task, rows, generator, ...)`: sample `num_samples` completions per problem through a
  `align.generation.Generator` (HF `generate` now; vLLM behind the same interface), extract and score each
  with the task (its score is the training reward), and compute accuracy (mean score = pass@1), unbiased
  pass@k and maj@k (see `align.eval.metrics`).
- `evaluate_loglikelihood(task, rows, model, tokenizer, ...)`: multiple choice as lm-evaluation-harness
  scores it, `acc` and `acc_norm` (see `align.eval.loglikelihood`).

Both return a `TaskResult`: a JSON-ready `summary` and one record per sample for `samples.jsonl`.
Accounting: a completion with no answer, a verifier timeout, or a row whose gold cannot be parsed all
count as wrong (the denominator is every problem); each is counted in the summary (`no_answer`,
`timeouts`, `unscorable`, and the verifier's other counters under `verifier`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from align.eval.loglikelihood import choice_loglikelihoods, encode_choices
from align.eval.metrics import majority_vote, mean_pass_at_k, wilson_interval
from align.eval.tasks import Task
from align.generation import Generator, SamplingParams

__all__ = ["TaskResult", "default_ks", "evaluate_generate", "evaluate_loglikelihood"]


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
        return float(self.summary["accuracy"])


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


def _interval(p: float, n: int) -> list[float]:
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

    Args:
        task, rows: the task and its loaded rows.
        generator: anything with `generate(prompts, SamplingParams) -> Rollout` (`HFGenerator`, vLLM).
        num_samples: completions per problem (n). n > 1 needs temperature > 0.
        temperature, top_p, top_k, max_new_tokens: sampling (`align.generation.SamplingParams`); 0 = greedy.
        seed: batch b samples with seed `seed + b`, so a run is repeatable; None = unseeded.
        batch_size: problems per `generate` call (rows = batch_size x num_samples). Problems are sorted by
            prompt length into batches (less padding); outputs keep the dataset order.
        ks: pass@k / maj@k sizes (each <= num_samples); default `default_ks(num_samples)`.
        progress: show a progress bar with the running accuracy.
    """
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
    task.pop_stats()  # count only this evaluation's failures

    n = num_samples
    prompts = [task.build_prompt(row) for row in rows]
    order = sorted(range(len(rows)), key=lambda i: -len(str(prompts[i])))
    per_problem: list[dict[str, Any] | None] = [None] * len(rows)
    samples: list[list[dict] | None] = [None] * len(rows)
    correct_total = no_answer = unscorable = truncated = tokens = 0
    done = 0
    bar = _progress(len(rows), task.name, progress)
    try:
        for b, start in enumerate(range(0, len(order), batch_size)):
            batch = order[start : start + batch_size]
            params = SamplingParams(
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                num_generations=n,
                seed=None if seed is None else seed + b,
                return_logprobs=False,
            )
            rollout = generator.generate([prompts[i] for i in batch], params)
            texts = rollout.completion_texts
            is_eos = rollout.is_eos.tolist()
            lengths = rollout.completion_lengths.tolist()
            for j, i in enumerate(batch):
                row = rows[i]
                records, scores, answers = [], [], []
                for s in range(n):
                    r = j * n + s
                    completion = texts[r]
                    score = task.score(row, completion)
                    extracted = task.extract(row, completion)
                    ok = score is not None and score >= 1.0
                    correct_total += ok
                    no_answer += extracted is None
                    unscorable += score is None
                    truncated += not is_eos[r]
                    tokens += lengths[r]
                    scores.append(0.0 if score is None else float(score))
                    answers.append(extracted)
                    records.append(
                        {
                            "task": task.name,
                            "index": i,
                            "id": task.row_id(row, i),
                            "sample": s,
                            "prompt": prompts[i],
                            "completion": completion,
                            "extracted": extracted,
                            "gold": task.gold(row),
                            "correct": bool(ok),
                            "score": score,
                            "truncated": not is_eos[r],
                            "completion_tokens": int(lengths[r]),
                            **{c: row.get(c) for c in task.breakdown_columns},
                        }
                    )
                c = sum(1 for rec in records if rec["correct"])
                per_problem[i] = {
                    "index": i,
                    "correct": c,
                    "accuracy": c / n,
                    "majority": {k: majority_vote(answers[:k], scores[:k])[1] for k in ks},
                    **{col: row.get(col) for col in task.breakdown_columns},
                }
                samples[i] = records
                done += 1
            bar.update(len(batch))
            bar.set_postfix(acc=f"{correct_total / (done * n):.3f}")
    finally:
        bar.close()

    problems = [p for p in per_problem if p is not None]
    counts = [p["correct"] for p in problems]
    accuracy = correct_total / (len(rows) * n)
    stats = task.pop_stats()
    summary: dict[str, Any] = {
        "task": task.name,
        "mode": "generate",
        "n": len(rows),
        "num_samples": n,
        "accuracy": accuracy,
        "accuracy_ci95": _interval(accuracy, len(rows)),
        "ci_method": "wilson (sample size = problems)",
        "correct": correct_total,
        **{f"pass@{k}": mean_pass_at_k(counts, n, k) for k in ks},
        **{f"maj@{k}": sum(p["majority"][k] for p in problems) / len(problems) for k in ks},
        "no_answer": no_answer,
        "unscorable": unscorable,
        "timeouts": int(stats.get("timeouts", 0)),
        "truncated": truncated,
        "mean_completion_tokens": tokens / (len(rows) * n),
        "verifier": stats,
    }
    for p in problems:
        p.pop("majority")
    return TaskResult(
        task.name, "generate", summary, [rec for group in samples if group for rec in group], problems
    )


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

    samples, problems = [], []
    acc_total = norm_total = 0
    for i, (row, ll, ch) in enumerate(zip(rows, lls, choices)):
        labels = task.labels(row)
        gold = task.gold_index(row)
        pred = max(range(len(ll)), key=lambda j: ll[j])  # first maximum, as numpy's argmax
        pred_norm = max(range(len(ll)), key=lambda j: ll[j] / max(len(ch[j]), 1))
        acc_total += pred == gold
        norm_total += pred_norm == gold
        samples.append(
            {
                "task": task.name,
                "index": i,
                "id": task.row_id(row, i),
                "prompt": contexts[i],
                "choices": ch,
                "loglikelihoods": ll,
                "extracted": labels[pred],
                "extracted_norm": labels[pred_norm],
                "gold": labels[gold],
                "correct": pred == gold,
                "correct_norm": pred_norm == gold,
            }
        )
        problems.append({"index": i, "correct": int(pred == gold), "accuracy": float(pred == gold)})
    n = len(rows)
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
