r"""Evaluation tasks: MATH500, GSM8K, ARC-Easy / ARC-Challenge, and the project's own math test set.

A task knows four things: where its rows come from (`load`), how a row becomes a chat prompt
(`build_prompt`), what the answer of a completion is (`extract`), and whether it is right (`score`). The
score *is* the training reward: `MathTask.score` calls the math reward (`align.rewards.make_math_reward`,
math-verify with a timeout) and `ArcTask.score` the choice reward, so a number measured here is the
reward a GRPO run optimises, and its failures (timeouts, unparsable gold answers) are counted the same way
(`pop_stats()`).

Multiple-choice tasks also have the log-likelihood form of lm-evaluation-harness (`context`, `choices`,
`gold_index`): the prompt `Question: {question}\nAnswer:`, each choice scored as the continuation
" {choice text}" (see `align.eval.loglikelihood`).

    task = get_task("math500")
    rows = task.load("tests/fixtures/eval/math500.jsonl", limit=3)  # or task.load() from the hub
    prompt = task.build_prompt(rows[0])                              # chat messages
    task.score(rows[0], r"... so the answer is \boxed{\frac{14}{3}}")  # 1.0 / 0.0 / None

Sources. `load(path)` reads a local file or split folder, or a hub name, with `align.data.read_rows`;
without a path, the task's hub dataset (`HuggingFaceH4/MATH-500`, `openai/gsm8k` config "main",
`allenai/ai2_arc` config "ARC-Easy" / "ARC-Challenge"). Rows keep the hub schema exactly:

    math500:        problem, solution, answer, subject, level, unique_id
    gsm8k:          question, answer ("reasoning ... #### 42")
    arc_easy/_challenge: id, question, choices {text: [...], label: [...]}, answerKey
                    (labels are "A".."E" or, for some questions, "1".."5": the gold index is found by label)

Missing columns are errors that name them; so is an empty dataset or an ARC row whose `answerKey` is
not among its labels.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

from align.data import MATH_INSTRUCTION, build_math_prompt, default_data_dir, math_gold, read_rows
from align.rewards.choice import extract_choice, make_choice_reward
from align.rewards.math import extract_answer, extract_gold, make_math_reward

__all__ = [
    "TASKS",
    "ArcTask",
    "GSM8KTask",
    "MathTask",
    "Task",
    "get_task",
]


class Task(abc.ABC):
    """One evaluation task. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str] = ""
    hub_name: ClassVar[str] = ""
    """Hub dataset loaded when `load` gets no path."""
    hub_config: ClassVar[str | None] = None
    default_split: ClassVar[str] = "test"
    required_columns: ClassVar[tuple[str, ...]] = ()
    modes: ClassVar[tuple[str, ...]] = ("generate",)
    """Evaluation modes the task supports; the first is its default."""
    breakdown_columns: ClassVar[tuple[str, ...]] = ()
    """Columns the report breaks accuracy down by (MATH: subject, level)."""

    reward: Any = None
    """The reward function whose verifier scores completions (it keeps the failure counts)."""

    def default_source(self) -> str | Path | None:
        """Where `load(None)` reads from: None = the hub dataset."""
        return None

    def load(
        self, path: str | Path | None = None, split: str | None = None, limit: int | None = None
    ) -> list[dict]:
        """The task's rows (first `limit` of them), from `path` or the default source (see the module docs)."""
        source = path if path is not None else self.default_source()
        rows = read_rows(
            source if source is not None else self.hub_name,
            split or self.default_split,
            config=self.hub_config,
            limit=limit,
            required=self.required_columns,
            name=self.name,
        ).to_list()
        for i, row in enumerate(rows):
            self.check_row(row, i)
        return rows

    def check_row(self, row: dict, index: int) -> None:  # noqa: B027 - optional: no check by default
        """Raise ValueError naming the row if it cannot be evaluated (beyond missing columns)."""

    def row_id(self, row: dict, index: int) -> str:
        return str(row.get("unique_id") or row.get("id") or index)

    @abc.abstractmethod
    def build_prompt(self, row: dict) -> list[dict[str, str]]:
        raise NotImplementedError

    @abc.abstractmethod
    def gold(self, row: dict) -> str | None:
        """The gold answer as a string (for samples.jsonl and the report)."""
        raise NotImplementedError

    def question(self, row: dict) -> str:
        """The row's question as written (its first required column), for the report."""
        value = row.get(self.required_columns[0]) if self.required_columns else None
        return "" if value is None else str(value)

    @abc.abstractmethod
    def raw_gold(self, row: dict) -> Any:
        """The gold answer as the row writes it, before extraction: what the report shows for a row whose
        gold cannot be parsed."""
        raise NotImplementedError

    @abc.abstractmethod
    def extract(self, row: dict, completion: Any) -> str | None:
        """The answer the completion gives (None = none found)."""
        raise NotImplementedError

    @abc.abstractmethod
    def score(self, row: dict, completion: Any) -> float | None:
        """The reward of `completion` for `row`: 1.0 right, 0.0 wrong or no answer, None = gold unusable."""
        raise NotImplementedError

    def pop_stats(self) -> dict[str, float]:
        """The verifier's failure counts since the last call, keyed by the bare stat name ("timeouts", ...)."""
        pop = getattr(self.reward, "pop_stats", None)
        if not callable(pop):
            return {}
        return {key.rsplit("/", 1)[-1]: value for key, value in pop().items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class MathTask(Task):
    r"""MATH-500 (`HuggingFaceH4/MATH-500`, split "test"): free-form answers in `\boxed{}`, scored by the
    math reward (math-verify equivalence, `timeout_s` per completion; a timeout is wrong and counted)."""

    name = "math500"
    hub_name = "HuggingFaceH4/MATH-500"
    required_columns = ("problem", "answer")
    breakdown_columns = ("subject", "level")

    def __init__(
        self,
        *,
        timeout_s: float | None = 5.0,
        instruction: str = MATH_INSTRUCTION,
        system_prompt: str | None = None,
    ) -> None:
        self.reward = make_math_reward(timeout_s=timeout_s, name=self.name)
        self.instruction = instruction
        self.system_prompt = system_prompt

    def build_prompt(self, row: dict) -> list[dict[str, str]]:
        return build_math_prompt(
            str(row[self.required_columns[0]]), instruction=self.instruction, system_prompt=self.system_prompt
        )

    def gold(self, row: dict) -> str | None:
        return extract_gold(row.get("answer"), row.get("solution"))

    def raw_gold(self, row: dict) -> Any:
        # The gold comes from `answer`, or from the solution's boxed answer when `answer` is empty.
        answer = row.get("answer")
        return answer if answer is not None and str(answer).strip() else row.get("solution")

    def extract(self, row: dict, completion: Any) -> str | None:
        return extract_answer(completion, fallbacks=self.reward.fallbacks)

    def score(self, row: dict, completion: Any) -> float | None:
        # The reward's own per-sample entry point: the same gold extraction, timeout and counting as training.
        return self.reward.score(completion, answer=row.get("answer"), solution=row.get("solution"))


class ProjectMathTask(MathTask):
    """The project's generated arithmetic test set (`data/math/test.jsonl`, MATH-500 schema): the task
    that runs offline with no arguments."""

    name = "math"
    hub_name = ""

    def default_source(self) -> str | Path | None:
        return default_data_dir() / "math"


class GSM8KTask(MathTask):
    """GSM8K (`openai/gsm8k`, config "main", split "test"): `question`, and `answer` ending in `#### N`;
    the gold is N (thousands separators dropped), scored by the math reward."""

    name = "gsm8k"
    hub_name = "openai/gsm8k"
    hub_config = "main"
    required_columns = ("question", "answer")
    breakdown_columns = ()

    def check_row(self, row: dict, index: int) -> None:
        answer = row.get("answer")
        if answer is not None and "####" not in str(answer):
            raise ValueError(
                f"gsm8k: row {index}: the answer column must end with '#### <number>', got {str(answer)[-60:]!r}"
            )

    def gold(self, row: dict) -> str | None:
        answer = row.get("answer")  # "#### 1,000" -> "1000", as the training data is prepared
        return math_gold(None if answer is None else str(answer), None)

    def score(self, row: dict, completion: Any) -> float | None:
        # The gold as the training data prepares it ("#### 1,000" -> "1000"); None is counted as gold_missing.
        return self.reward.score(completion, answer=self.gold(row))


class ArcTask(Task):
    """ARC (`allenai/ai2_arc`, split "test"): four-ish options with labels A-E or 1-5.

    - generate: the options are listed in the prompt with their labels, the completion is asked to end
      with "Answer: X", and the choice reward scores the label it gives (none found = wrong).
    - loglikelihood (the default, as lm-evaluation-harness reports ARC): `context` = "Question: ...\\nAnswer:",
      the continuations " {text}" of `choices`, the gold index `gold_index` (by label).
    """

    name = "arc_easy"
    hub_name = "allenai/ai2_arc"
    hub_config = "ARC-Easy"
    required_columns = ("question", "choices", "answerKey")
    modes = ("loglikelihood", "generate")

    def __init__(self, subset: str = "ARC-Easy") -> None:
        if subset not in ("ARC-Easy", "ARC-Challenge"):
            raise ValueError(f"ArcTask subset must be 'ARC-Easy' or 'ARC-Challenge', got {subset!r}")
        self.hub_config = subset
        self.name = "arc_easy" if subset == "ARC-Easy" else "arc_challenge"
        self.reward = make_choice_reward(name=self.name)

    @staticmethod
    def labels(row: dict) -> list[str]:
        return [str(label).strip() for label in row["choices"]["label"]]

    def choices(self, row: dict) -> list[str]:
        """The choice texts, in label order (lm-eval's `doc_to_choice: {{choices.text}}`)."""
        return [str(text) for text in row["choices"]["text"]]

    def gold_index(self, row: dict) -> int:
        """Index of the gold choice: `choices.label.index(answerKey)` (labels may be digits)."""
        return self.labels(row).index(str(row["answerKey"]).strip())

    def context(self, row: dict) -> str:
        """The log-likelihood prompt, lm-eval's `doc_to_text`."""
        return f"Question: {row['question']}\nAnswer:"

    def check_row(self, row: dict, index: int) -> None:
        where = f"{self.name}: row {index} (id {row.get('id')!r})"
        choices = row.get("choices")
        if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
            raise ValueError(f"{where}: 'choices' must be {{'text': [...], 'label': [...]}}, got {choices!r}")
        if not choices["text"] or len(choices["text"]) != len(choices["label"]):
            raise ValueError(
                f"{where}: 'choices' has {len(choices['text'] or [])} texts and {len(choices['label'] or [])} "
                "labels; they must be equal and non-zero"
            )
        labels = self.labels(row)
        if str(row.get("answerKey", "")).strip() not in labels:
            raise ValueError(f"{where}: answerKey {row.get('answerKey')!r} is not among the labels {labels}")

    def build_prompt(self, row: dict) -> list[dict[str, str]]:
        labels = self.labels(row)
        options = "\n".join(f"{label}. {text}" for label, text in zip(labels, self.choices(row)))
        label_list = ", ".join(labels[:-1]) + f" or {labels[-1]}"
        content = (
            f"Question: {str(row['question']).strip()}\n{options}\n\n"
            f"Choose the correct option ({label_list}). End your reply with 'Answer: X', where X is its label."
        )
        return [{"role": "user", "content": content}]

    def gold(self, row: dict) -> str | None:
        return str(row["answerKey"]).strip()

    def raw_gold(self, row: dict) -> Any:
        return row.get("answerKey")

    def extract(self, row: dict, completion: Any) -> str | None:
        return extract_choice(completion, self.labels(row))

    def score(self, row: dict, completion: Any) -> float | None:
        return self.reward.score(completion, row["answerKey"], row["choices"])


TASKS: dict[str, Any] = {
    "math500": MathTask,
    "math": ProjectMathTask,
    "gsm8k": GSM8KTask,
    "arc_easy": lambda **kw: ArcTask("ARC-Easy", **kw),
    "arc_challenge": lambda **kw: ArcTask("ARC-Challenge", **kw),
}
"""Task name -> factory. `math` is the project's own generated test set (MATH-500 schema, offline)."""


def get_task(name: str, *, math_timeout_s: float | None = 5.0, system_prompt: str | None = None) -> Task:
    """A fresh task object by name (see `TASKS`); the math tasks take the verifier timeout and a system prompt."""
    key = name.strip().lower()
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    if key in ("math500", "math", "gsm8k"):
        return TASKS[key](timeout_s=math_timeout_s, system_prompt=system_prompt)
    return TASKS[key]()
