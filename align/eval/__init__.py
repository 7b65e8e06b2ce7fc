"""Evaluation: tasks (MATH500, GSM8K, ARC) and the harness.

A task's verifier is its reward: `MathTask.score` is the math reward and `ArcTask.score` the choice reward,
so an evaluation measures what RL optimises.

    from align.eval import get_task, evaluate_generate, evaluate_loglikelihood
    task = get_task("arc_easy")
    rows = task.load("arc_easy.jsonl", limit=100)            # or task.load() from the hub
    result = evaluate_loglikelihood(task, rows, model, tokenizer)
    result.summary["acc"], result.summary["acc_norm"]

Command line: `align eval --task math500 arc_easy --model PATH [--adapter PATH] ...` (see `align.eval.runner`).
In training, the GRPO trainer's quick check is `align.eval.heldout.heldout_accuracy`.
"""

from align.eval.harness import TaskResult, default_ks, evaluate_generate, evaluate_loglikelihood
from align.eval.heldout import heldout_accuracy
from align.eval.loglikelihood import ChoiceRequest, choice_loglikelihoods, encode_choices
from align.eval.metrics import majority_vote, mean_pass_at_k, normalize_answer, pass_at_k, wilson_interval
from align.eval.runner import EvalConfig, load_eval_model, run_eval
from align.eval.tasks import TASKS, ArcTask, GSM8KTask, MathTask, Task, get_task

__all__ = [
    "TASKS",
    "ArcTask",
    "ChoiceRequest",
    "EvalConfig",
    "GSM8KTask",
    "MathTask",
    "Task",
    "TaskResult",
    "choice_loglikelihoods",
    "default_ks",
    "encode_choices",
    "evaluate_generate",
    "evaluate_loglikelihood",
    "get_task",
    "heldout_accuracy",
    "load_eval_model",
    "majority_vote",
    "mean_pass_at_k",
    "normalize_answer",
    "pass_at_k",
    "run_eval",
    "wilson_interval",
]
