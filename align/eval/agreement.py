r"""Verifier agreement: the same math completions scored by three verifiers, and where they disagree.

Users of every RL library see a few points between their training reward and published evaluations
(open-r1#354, open-r1#224, Math-Verify#17). Part of that gap is the verifier: the same completion is right
for one answer checker and wrong for another. This module makes the gap visible on an evaluation's own
completions (`<task>/samples.jsonl` of `align eval`):

- **train**: the training reward, `align.rewards.math.make_math_reward()` with the options of
  `recipes/grpo_math.py` (math-verify on the extracted answer), recomputed now on the completion and the
  sample's gold.
- **eval**: the evaluation scorer. `MathTask.score` *is* the training reward (`self.reward.score`, made by
  `make_math_reward` with the same defaults; only `timeout_s` comes from `--math_timeout_s`), so this row
  is the verdict the harness recorded in samples.jsonl when it ran (`correct`, with `extracted` from
  `MathTask.extract`). It agrees with "train" by construction; a difference means a timeout under another
  `math_timeout_s`, or a changed verifier since the evaluation ran. Samples without a recorded verdict are
  scored with the task's `score` / `extract`.
- **lm-eval**: lm-evaluation-harness's MATH answer extraction and string equivalence, used as a library:
  the answer is minerva_math's `get_unnormalized_answer` ("Final Answer: The final answer is X. I hope it
  is correct."); when that line is missing (`[invalidanswer]`) and `boxed_fallback` is on, lm-eval's
  `last_boxed_only_string` + `remove_boxed` (how its MATH tasks read a boxed answer). It is right when
  minerva's `normalize_final_answer` makes both strings equal, or hendrycks_math's `is_equiv`
  (`strip_string` normalisation, then string equality) accepts them; when sympy's LaTeX parser is usable
  (antlr4-python3-runtime 4.11, which math-verify's 4.13 excludes from one environment) minerva's sympy
  `is_equiv` is tried too (`AgreementTable.lm_eval["equivalence"]` says which ran).

A verdict is True (right), False (wrong) or None (not scorable: math-verify cannot parse the gold).
Two verifiers agree on a sample when their verdicts are equal (None included). The table holds the
pairwise and three-way agreement rates, each verifier's accuracy over the samples it scored, the count of
every verdict pattern, and up to `max_examples` examples of each disagreeing pattern (completion excerpt,
gold, each verifier's verdict and extracted answer).

    from align.eval.agreement import verifier_agreement, read_samples
    table = verifier_agreement(read_samples("out/math500/samples.jsonl"))
    print(table.to_markdown())
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

__all__ = [
    "MATH_TASKS",
    "VERIFIERS",
    "AgreementTable",
    "LmEvalMath",
    "read_samples",
    "verifier_agreement",
    "write_agreement",
]

MATH_TASKS = ("math500", "math", "gsm8k")
"""Tasks whose samples are free-form math answers (the ones the table is made for)."""

VERIFIERS = ("train", "eval", "lm_eval")
PAIRS = (("train", "eval"), ("train", "lm_eval"), ("eval", "lm_eval"))
LABELS = {"train": "train reward", "eval": "eval scorer", "lm_eval": "lm-eval"}
EXCERPT_CHARS = 300


class LmEvalMath:
    """lm-evaluation-harness's MATH extraction and equivalence (see the module docstring)."""

    def __init__(self, *, boxed_fallback: bool = True) -> None:
        try:
            import lm_eval
            from lm_eval.tasks.hendrycks_math import utils as hendrycks
        except ImportError as err:
            raise ImportError(
                "the lm-eval verifier needs lm-evaluation-harness: pip install 'align[dev]' (or pip install "
                f"lm-eval) ({err})"
            ) from err
        self.sympy_equiv = None
        try:  # needs antlr4-python3-runtime 4.11 (asserted on import); math-verify needs 4.13
            from lm_eval.tasks.minerva_math import utils as minerva

            self.sympy_equiv = minerva.is_equiv
        except (ImportError, AssertionError):
            try:  # the Open LLM Leaderboard's frozen copy of the same Minerva helpers imports without it
                from lm_eval.tasks.leaderboard.math import utils as minerva
            except ImportError as err:
                raise ImportError(f"lm-eval {lm_eval.__version__}: no Minerva MATH helpers ({err})") from err
        self.minerva = minerva
        self.hendrycks = hendrycks
        self.boxed_fallback = boxed_fallback
        self.info = {
            "version": getattr(lm_eval, "__version__", "?"),
            "extraction": f"{minerva.__name__}.get_unnormalized_answer"
            + (", then hendrycks_math.utils.last_boxed_only_string + remove_boxed" if boxed_fallback else ""),
            "equivalence": f"{minerva.__name__}.normalize_final_answer equality or hendrycks_math.utils.is_equiv"
            + (" or minerva_math.utils.is_equiv (sympy)" if self.sympy_equiv else " (string only: sympy's "
               "LaTeX parser needs antlr4 4.11)"),
        }  # fmt: skip

    def extract(self, completion: str) -> str | None:
        """The answer lm-eval reads from `completion`, or None ("[invalidanswer]" and no box)."""
        answer = self.minerva.get_unnormalized_answer(completion)
        if answer != "[invalidanswer]":
            return answer
        if not self.boxed_fallback:
            return None
        boxed = self.hendrycks.last_boxed_only_string(completion)
        if boxed is None:
            return None
        try:
            return self.hendrycks.remove_boxed(boxed)
        except AssertionError:  # "\fbox{...}": lm-eval's remove_boxed only knows \boxed
            return None

    def equivalent(self, answer: str, gold: str) -> bool:
        norm = self.minerva.normalize_final_answer
        try:
            if norm(answer) == norm(gold) or self.hendrycks.is_equiv(answer, gold):
                return True
            return bool(self.sympy_equiv and self.sympy_equiv(norm(answer), norm(gold)))
        except Exception:  # lm-eval's checks raise on odd strings; it scores those wrong
            return False

    def verdict(self, completion: str, gold: str | None) -> tuple[bool, str | None]:
        answer = self.extract(completion)
        return (answer is not None and gold is not None and self.equivalent(answer, gold)), answer


@dataclass
class AgreementTable:
    """Agreement of the three verifiers on one set of samples (JSON-ready through `to_dict`)."""

    n: int
    """Samples compared."""
    task: str | None = None
    agreement: dict[str, float | None] = field(default_factory=dict)
    """Pair ("train_vs_eval", "train_vs_lm_eval", "eval_vs_lm_eval", "all_three") -> fraction agreeing."""
    agree_counts: dict[str, int] = field(default_factory=dict)
    accuracy: dict[str, float | None] = field(default_factory=dict)
    """Verifier -> accuracy over the samples it scored (verdict not None)."""
    scored: dict[str, int] = field(default_factory=dict)
    """Verifier -> samples with a verdict (not None)."""
    patterns: dict[str, int] = field(default_factory=dict)
    """Verdict pattern ("train=1 eval=1 lm_eval=0"; "-" = None) -> count, every pattern seen."""
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Disagreeing pattern -> examples: index, sample, completion excerpt, gold, verdict and answer each."""
    lm_eval: dict[str, str] = field(default_factory=dict)
    """lm-eval's version and the functions used."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgreementTable:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def disagreements(self) -> dict[str, int]:
        """The patterns where the verifiers do not all agree -> count."""
        return {p: c for p, c in self.patterns.items() if len(set(_pattern_values(p))) > 1}

    def one_line(self) -> str:
        rates = ", ".join(f"{_pair_label(k)} {_pct(v)}" for k, v in self.agreement.items())
        accs = ", ".join(f"{LABELS[v]} {_pct(self.accuracy.get(v))}" for v in VERIFIERS)
        name = f"{self.task} " if self.task else ""
        return f"{name}verifier agreement on {self.n} samples: {rates} (accuracy: {accs})"

    def to_markdown(self) -> str:
        lines = [
            f"### Verifier agreement{f': {self.task}' if self.task else ''} ({self.n} samples)",
            "",
            "| | agree | rate |",
            "|---|---:|---:|",
            *(
                f"| {_pair_label(k)} | {self.agree_counts.get(k, 0)}/{self.n} | {_pct(v)} |"
                for k, v in self.agreement.items()
            ),
            "",
            "| verifier | scored | accuracy |",
            "|---|---:|---:|",
            *(f"| {LABELS[v]} | {self.scored.get(v, 0)} | {_pct(self.accuracy.get(v))} |" for v in VERIFIERS),
        ]
        if self.lm_eval:
            lines += ["", f"lm-eval {self.lm_eval.get('version')}: {self.lm_eval.get('extraction')}; "
                      f"{self.lm_eval.get('equivalence')}."]  # fmt: skip
        disagreements = self.disagreements()
        if not disagreements:
            return "\n".join([*lines, "", "All verifiers agree on every sample."])
        lines += ["", "| disagreement | count |", "|---|---:|"]
        lines += [
            f"| {_pattern_label(p)} | {c} |" for p, c in sorted(disagreements.items(), key=lambda x: -x[1])
        ]
        for p in sorted(disagreements, key=lambda x: -disagreements[x]):
            lines += ["", f"**{_pattern_label(p)}**", "", "| # | gold | train | eval | lm-eval | completion |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            for ex in self.examples.get(p, []):
                cells = [f"{ex['index']}/{ex['sample']}", _md(ex["gold"], 40)]
                cells += [f"{_mark(ex[v]['verdict'])} {_md(ex[v]['answer'], 30)}" for v in VERIFIERS]
                lines.append("| " + " | ".join([*cells, _md(ex["completion"], 120, tail=True)]) + " |")
        return "\n".join(lines)

    def to_html(self) -> str:
        """The table as an HTML fragment (for `align report`)."""
        rows = "".join(
            f"<tr><td>{escape(_pair_label(k))}</td><td>{self.agree_counts.get(k, 0)}/{self.n}</td>"
            f"<td>{_pct(v)}</td></tr>"
            for k, v in self.agreement.items()
        )
        accs = "".join(
            f"<tr><td>{LABELS[v]}</td><td>{self.scored.get(v, 0)}</td><td>{_pct(self.accuracy.get(v))}</td></tr>"
            for v in VERIFIERS
        )
        out = [
            f"<table><thead><tr><th></th><th>agree</th><th>rate</th></tr></thead><tbody>{rows}</tbody></table>",
            f"<table><thead><tr><th>verifier</th><th>scored</th><th>accuracy</th></tr></thead><tbody>{accs}"
            "</tbody></table>",
        ]
        if self.lm_eval:
            out.append(f"<p>lm-eval {escape(str(self.lm_eval.get('version')))}: "
                       f"{escape(str(self.lm_eval.get('extraction')))}; {escape(str(self.lm_eval.get('equivalence')))}.</p>")  # fmt: skip
        for p, c in sorted(self.disagreements().items(), key=lambda x: -x[1]):
            body = "".join(
                f"<tr><td>{ex['index']}/{ex['sample']}</td><td>{escape(str(ex['gold']))}</td>"
                + "".join(
                    f"<td>{_mark(ex[v]['verdict'])} {escape(str(ex[v]['answer']))}</td>" for v in VERIFIERS
                )
                + f"<td><pre>{escape(ex['completion'])}</pre></td></tr>"
                for ex in self.examples.get(p, [])
            )
            out.append(
                f"<h4>{escape(_pattern_label(p))}: {c}</h4><table><thead><tr><th>#</th><th>gold</th>"
                f"<th>train</th><th>eval</th><th>lm-eval</th><th>completion (end)</th></tr></thead>"
                f"<tbody>{body}</tbody></table>"
            )
        return "".join(out)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pair_label(key: str) -> str:
    if key == "all_three":
        return "all three"
    a, b = key.split("_vs_")
    return f"{LABELS[a]} vs {LABELS[b]}"


def _mark(verdict: bool | None) -> str:
    return "n/a" if verdict is None else ("right" if verdict else "wrong")


def _pattern_key(verdicts: dict[str, bool | None]) -> str:
    return " ".join(f"{v}={'-' if verdicts[v] is None else int(verdicts[v])}" for v in VERIFIERS)


def _pattern_values(pattern: str) -> list[str]:
    return [part.split("=", 1)[1] for part in pattern.split()]


def _pattern_label(pattern: str) -> str:
    marks = {"1": "right", "0": "wrong", "-": "n/a"}
    return ", ".join(f"{LABELS[v]} {marks[x]}" for v, x in zip(VERIFIERS, _pattern_values(pattern)))


def _md(value: Any, limit: int, *, tail: bool = False) -> str:
    text = " ".join(str(value).split()) if value is not None else "(none)"
    if len(text) > limit:
        text = "..." + text[-limit:] if tail else text[:limit] + "..."
    return text.replace("|", "\\|")


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else "..." + text[-EXCERPT_CHARS:]


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """The records of a samples.jsonl."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _three_verdicts(
    sample: dict[str, Any], text: str, gold: str | None, train_reward: Any, lm_eval: LmEvalMath, tasks: dict
) -> dict[str, dict[str, Any]]:
    """One sample's verdict (True, False or None = cannot score) and extracted answer by each verifier."""
    from align.eval.tasks import get_task
    from align.rewards.math import extract_answer

    score = train_reward.score(text, answer=gold) if gold is not None else None
    train = {"verdict": None if score is None else score >= 1.0,
             "answer": extract_answer(text, fallbacks=getattr(train_reward, "fallbacks", True))}  # fmt: skip
    if "correct" in sample:
        ev = {"verdict": sample["correct"], "answer": sample.get("extracted")}
    else:  # not recorded: the task's own scorer
        name = sample.get("task") if sample.get("task") in MATH_TASKS else "math500"
        t = tasks.get(name) or tasks.setdefault(name, get_task(name))
        row = {"answer": gold}
        s = t.score(row, text) if gold is not None else None
        ev = {"verdict": None if s is None else s >= 1.0, "answer": t.extract(row, text)}
    verdict, answer = lm_eval.verdict(text, gold)
    return {"train": train, "eval": ev, "lm_eval": {"verdict": verdict, "answer": answer}}


def verifier_agreement(
    samples: Iterable[dict[str, Any]],
    *,
    train_reward: Any = None,
    lm_eval: LmEvalMath | None = None,
    max_examples: int = 5,
    task: str | None = None,
) -> AgreementTable:
    """Score each sample (a samples.jsonl record: `completion`, `gold`, and `correct` / `extracted` as the
    harness wrote them) with the three verifiers and tabulate their agreement (see the module docstring).

    `train_reward`: the training reward (default `make_math_reward()`, the grpo_math recipe's); `lm_eval`:
    the lm-eval verifier (default `LmEvalMath()`; ImportError naming the fix when lm-eval is missing).
    """
    from align.rewards.base import message_text
    from align.rewards.math import make_math_reward

    train_reward = train_reward if train_reward is not None else make_math_reward()
    lm_eval = lm_eval if lm_eval is not None else LmEvalMath()
    tasks: dict[str, Any] = {}
    patterns: dict[str, int] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    agree = dict.fromkeys([*(f"{a}_vs_{b}" for a, b in PAIRS), "all_three"], 0)
    right = dict.fromkeys(VERIFIERS, 0)
    scored = dict.fromkeys(VERIFIERS, 0)
    n = 0
    for i, sample in enumerate(samples):
        n += 1
        text = message_text(sample.get("completion", ""))
        gold = sample.get("gold")
        gold = None if gold is None or not str(gold).strip() else str(gold)
        each = _three_verdicts(sample, text, gold, train_reward, lm_eval, tasks)
        verdicts = {v: each[v]["verdict"] for v in VERIFIERS}
        for v in VERIFIERS:
            if verdicts[v] is not None:
                scored[v] += 1
                right[v] += bool(verdicts[v])
        for a, b in PAIRS:
            agree[f"{a}_vs_{b}"] += verdicts[a] == verdicts[b]
        all_agree = len({verdicts[v] for v in VERIFIERS}) == 1
        agree["all_three"] += all_agree
        key = _pattern_key(verdicts)
        patterns[key] = patterns.get(key, 0) + 1
        if not all_agree and len(examples.setdefault(key, [])) < max_examples:
            examples[key].append(
                {
                    "index": sample.get("index", i),
                    "sample": sample.get("sample", 0),
                    "id": sample.get("id"),
                    "gold": gold,
                    "completion": _excerpt(text),
                    **each,
                }
            )
    return AgreementTable(
        n=n,
        task=task,
        agreement={k: (c / n if n else None) for k, c in agree.items()},
        agree_counts=agree,
        accuracy={v: (right[v] / scored[v] if scored[v] else None) for v in VERIFIERS},
        scored=scored,
        patterns=patterns,
        examples=examples,
        lm_eval=lm_eval.info,
    )


def write_agreement(table: AgreementTable, path: str | Path) -> Path:
    """Write `table` as JSON to `path` (agreement.json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return path
