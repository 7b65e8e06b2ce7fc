"""Task-based evaluation during training: a fixed subset of each task every `eval_steps`.

A trainer builds the hook once and calls it from its `evaluate()`:

    from align.eval import make_eval_hook

    # in __init__ (or the recipe):
    self.eval_hook = make_eval_hook(["math500", "arc_easy"], limit=64,
                                    data_paths={"math500": "data/math500.jsonl"})
    # in evaluate():
    return self.eval_hook(self.model, self.tokenizer, generator=self.generator, accelerator=self.accelerator)

which returns `eval/<task>/accuracy` (plus `eval/<task>/acc_norm` for log-likelihood tasks and the counts
`eval/<task>/n`, `.../no_answer`, `.../timeouts`). Generation is greedy; the rows are the first `limit` of
each task, loaded once, so successive evaluations are comparable. With an accelerator, each process
evaluates every `num_processes`-th row and the counts are summed, as `heldout_accuracy` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from align.eval.harness import evaluate_generate, evaluate_loglikelihood
from align.eval.tasks import MODES, Task, get_task

__all__ = ["EvalHook", "make_eval_hook"]


class EvalHook:
    """Callable `(model, tokenizer, *, generator=None, accelerator=None) -> {"eval/<task>/accuracy": ...}`.

    Args:
        tasks: task names (see `align.eval.TASKS`).
        limit: problems per task (the first `limit` rows); None = all (slow for MATH500 in a training loop).
        data_paths: {task: local path or hub name}; tasks without one load their default source.
        split: dataset split (default: each task's test split).
        mode: "auto" (each task's default), "generate" or "loglikelihood".
        max_new_tokens, batch_size: greedy generation settings.
        loglikelihood_batch_size: (question, choice) pairs per forward pass.
        math_timeout_s, system_prompt: passed to the math tasks.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        *,
        limit: int | None = 64,
        data_paths: Mapping[str, str | Path] | None = None,
        split: str | None = None,
        mode: str = "auto",
        max_new_tokens: int = 512,
        batch_size: int = 16,
        loglikelihood_batch_size: int = 64,
        math_timeout_s: float | None = 5.0,
        system_prompt: str | None = None,
    ) -> None:
        if isinstance(tasks, str):
            tasks = [t for t in tasks.split(",") if t.strip()]
        if not tasks:
            raise ValueError("make_eval_hook: give at least one task")
        self.tasks: list[Task] = [
            get_task(t, math_timeout_s=math_timeout_s, system_prompt=system_prompt) for t in tasks
        ]
        data_paths = dict(data_paths or {})
        unknown = sorted(set(data_paths) - {t.name for t in self.tasks})
        if unknown:
            raise ValueError(f"make_eval_hook: data_paths for tasks not evaluated: {unknown}")
        if mode != "auto" and mode not in MODES:
            raise ValueError(f"make_eval_hook: mode must be 'auto' or one of {MODES}, got {mode!r}")
        self.modes = {}
        for task in self.tasks:
            m = task.default_mode if mode == "auto" else mode
            if m not in task.modes:
                raise ValueError(
                    f"make_eval_hook: task {task.name!r} has no {m!r} mode (it has {task.modes})"
                )
            self.modes[task.name] = m
        self.limit = limit
        self.data_paths = data_paths
        self.split = split
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.loglikelihood_batch_size = loglikelihood_batch_size
        self._rows: dict[str, list[dict]] = {}

    def rows(self, task: Task) -> list[dict]:
        """The task's evaluation rows, loaded on first use and kept."""
        if task.name not in self._rows:
            self._rows[task.name] = task.load(self.data_paths.get(task.name), self.split, self.limit)
        return self._rows[task.name]

    @torch.no_grad()
    def __call__(
        self, model: Any, tokenizer: Any, *, generator: Any = None, accelerator: Any = None
    ) -> dict[str, float]:
        from align.models import unwrap_model

        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        metrics: dict[str, float] = {}
        for task in self.tasks:
            rows = self.rows(task)[rank::world]
            mode = self.modes[task.name]
            # correct, problems, correct_norm, no_answer, timeouts
            counts = torch.zeros(5, dtype=torch.float64)
            if rows and mode == "loglikelihood":
                result = evaluate_loglikelihood(
                    task,
                    rows,
                    unwrap_model(model),
                    tokenizer,
                    batch_size=self.loglikelihood_batch_size,
                    progress=False,
                )
                s = result.summary
                counts += torch.tensor(
                    [s["correct"], s["n"], s["acc_norm"] * s["n"], 0, 0], dtype=torch.float64
                )
            elif rows:
                if generator is None:
                    from align.generation import HFGenerator

                    generator = HFGenerator(model, tokenizer)
                result = evaluate_generate(
                    task,
                    rows,
                    generator,
                    temperature=0.0,
                    max_new_tokens=self.max_new_tokens,
                    batch_size=self.batch_size,
                    progress=False,
                )
                s = result.summary
                counts += torch.tensor(
                    [s["correct"], s["n"], 0, s["no_answer"], s["timeouts"]], dtype=torch.float64
                )
            if accelerator is not None and world > 1:
                counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
            correct, n, correct_norm, no_answer, timeouts = counts.tolist()
            prefix = f"eval/{task.name}"
            metrics[f"{prefix}/accuracy"] = correct / max(n, 1.0)
            if mode == "loglikelihood":
                metrics[f"{prefix}/acc_norm"] = correct_norm / max(n, 1.0)
            else:
                metrics[f"{prefix}/no_answer"] = no_answer
                metrics[f"{prefix}/timeouts"] = timeouts
            metrics[f"{prefix}/n"] = n
        return metrics


def make_eval_hook(tasks: Sequence[str] | str, limit: int | None = 64, **kwargs: Any) -> EvalHook:
    """An `EvalHook` for `tasks` on their first `limit` rows (see `EvalHook` for the options)."""
    return EvalHook(tasks, limit=limit, **kwargs)
