r"""Dataset loading and formatting.

Math problems for RL (GRPO) and evaluation: `load_math_dataset` turns MATH-500-style, GSM8K-style or the
project's own generated data into rows with a chat `prompt` and a gold `answer`, which is what the math
reward (`align.rewards.math_reward`) reads:

    ds = load_math_dataset()                               # the shipped data/math/train.jsonl
    ds = load_math_dataset("data/math", split="test")      # a folder: its test.jsonl / test-*.parquet
    ds = load_math_dataset("HuggingFaceH4/MATH-500", split="test")   # a hub dataset (needs the network)
    ds = load_math_dataset("openai/gsm8k", split="test")   # config "main" is picked for GSM8K

Where the shipped data lives: `data/` next to the `align` package, i.e. `repo_root() / "data"` where
`repo_root()` is the folder that contains `align/`. That is the repository checkout for an editable
install (`pip install -e .`), which is how this project is used; a wheel does not ship `data/`, so there
pass a path.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

__all__ = [
    "MATH_INSTRUCTION",
    "build_math_prompt",
    "default_data_dir",
    "load_math_dataset",
    "repo_root",
]

logger = logging.getLogger(__name__)

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
"""Appended to each problem (the instruction of DeepSeek-R1 / Qwen2.5-Math evaluations)."""

PROBLEM_COLUMNS = ("problem", "question")
GOLD_COLUMNS = ("answer", "solution")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def repo_root() -> Path:
    """The folder that contains the `align` package (the repository root for an editable install)."""
    return Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """`data/` next to the `align` package: the datasets and rubrics the project ships."""
    return repo_root() / "data"


def build_math_prompt(
    problem: str, *, instruction: str = MATH_INSTRUCTION, system_prompt: str | None = None
) -> list[dict[str, str]]:
    r"""Chat messages for one problem: the problem then the instruction (reason step by step, answer in
    `\boxed{}`) in one user turn, which every chat template accepts; an optional system turn first."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    content = f"{problem.strip()}\n\n{instruction}" if instruction else problem.strip()
    messages.append({"role": "user", "content": content})
    return messages


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


def _read_json_records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not a JSON line: {e}") from e
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # a .json file in JSON-lines form, as HF datasets writes them
        return _json_lines(text, path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a list of records (or {{'data': [...]}}), got {type(data).__name__}"
        )
    return data


def _json_lines(text: str, path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: neither a JSON document nor JSON lines: {e}") from e


def _read_file(path: Path):
    from datasets import Dataset

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return Dataset(pq.read_table(path))
    records = _read_json_records(path)
    if records and not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected every record to be a JSON object")
    return Dataset.from_list(records)


def _split_files(folder: Path, split: str) -> list[Path]:
    """Files of `split` in a folder: <split>.jsonl|json|parquet, <split>-*.parquet, data/<split>-*, <split>/*."""
    candidates: list[Path] = []
    for suffix in LOCAL_SUFFIXES:
        candidates += [folder / f"{split}{suffix}"]
    patterns = [f"{split}-*", f"{split}_*", f"data/{split}-*", f"data/{split}.*", f"{split}/*"]
    for pattern in patterns:
        candidates += sorted(folder.glob(pattern))
    return [p for p in dict.fromkeys(candidates) if p.is_file() and p.suffix in LOCAL_SUFFIXES]


def _load_local(path: Path, split: str):
    from datasets import concatenate_datasets

    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise ValueError(f"{path}: unsupported file type; expected one of {list(LOCAL_SUFFIXES)}")
        return _read_file(path)
    files = _split_files(path, split)
    if not files:
        found = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES)
        raise FileNotFoundError(
            f"{path}: no files for split {split!r}; expected {split}.jsonl, {split}.json, {split}.parquet or "
            f"{split}-*.parquet; found {found or 'no .jsonl/.json/.parquet files'}"
        )
    parts = [_read_file(f) for f in files]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _load_hub(name: str, split: str, config: str | None):
    import datasets

    if config is None and name.rstrip("/").lower().endswith("gsm8k"):
        config = "main"
    return datasets.load_dataset(name, config, split=split)


# ---------------------------------------------------------------------------------------------------------
# Normalising
# ---------------------------------------------------------------------------------------------------------

_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _gold_from_row(answer: Any, solution: Any) -> str | None:
    from align.rewards.math import extract_gold

    gold = extract_gold(answer, solution)
    if gold is not None and _THOUSANDS_RE.match(gold):  # GSM8K writes "#### 1,000"
        gold = gold.replace(",", "")
    return gold


def load_math_dataset(
    path_or_name: str | Path | None = None,
    split: str = "train",
    *,
    limit: int | None = None,
    config: str | None = None,
    instruction: str = MATH_INSTRUCTION,
    system_prompt: str | None = None,
):
    r"""A math dataset as a `datasets.Dataset` with a chat `prompt` and a gold `answer` (other columns kept).

    Args:
        path_or_name: a local `.jsonl` / `.json` / `.parquet` file, a folder holding `<split>.jsonl` (or
            `.json`, `.parquet`, `<split>-*.parquet`), or a Hugging Face hub dataset name, loaded with
            `datasets.load_dataset(name, config, split=split)`. None: the shipped `data/math/` folder (see
            the module docstring).
        split: the split of a folder or hub dataset; ignored for a single file.
        limit: keep only the first `limit` rows.
        config: hub dataset configuration (GSM8K gets "main" by default).
        instruction, system_prompt: passed to `build_math_prompt`.

    Schemas: the problem is the `problem` (MATH-500) or `question` (GSM8K) column. The gold answer is the
    `answer` column (GSM8K's "... #### 42" becomes "42", and its reasoning is kept as `solution` when there
    is none), else the boxed answer parsed from `solution`. Rows whose gold cannot be found are dropped
    with a warning; if none is left, that is an error.

    Raises:
        FileNotFoundError / ValueError naming the path: a missing file or split, missing columns (with the
        columns found and expected), an empty dataset.
    """
    source = Path(path_or_name) if path_or_name is not None else default_data_dir() / "math"
    if path_or_name is None and not source.is_dir():
        raise FileNotFoundError(
            f"default math data not found at {source}; run `python data/make_math.py` in the repository or "
            "pass a path"
        )
    if source.exists():
        ds = _load_local(source, split)
    elif (
        isinstance(path_or_name, Path)
        or str(path_or_name).startswith((".", "/", "~"))
        or str(path_or_name).count("/") > 1  # hub names are "name" or "owner/name"
        or Path(str(path_or_name)).suffix in LOCAL_SUFFIXES
    ):
        raise FileNotFoundError(f"{path_or_name}: no such file or folder")
    else:
        ds = _load_hub(str(path_or_name), split, config)
    where = f"{source}" + (f" (split {split!r})" if not source.is_file() else "")

    if len(ds) == 0:
        raise ValueError(f"{where}: the dataset is empty")
    columns = list(ds.column_names)
    problem_col = next((c for c in PROBLEM_COLUMNS if c in columns), None)
    if problem_col is None:
        raise ValueError(
            f"{where}: no problem column; expected one of {list(PROBLEM_COLUMNS)} (MATH-500 or GSM8K schema), "
            f"found columns {columns}"
        )
    if not any(c in columns for c in GOLD_COLUMNS):
        raise ValueError(
            f"{where}: no gold answer column; expected 'answer' (or 'solution' with a \\boxed{{}} answer), "
            f"found columns {columns}"
        )
    if limit is not None:
        if not isinstance(limit, int) or limit <= 0:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        ds = ds.select(range(min(limit, len(ds))))

    has_answer, has_solution = "answer" in columns, "solution" in columns
    keep_reasoning = has_answer and not has_solution  # GSM8K: the answer column is reasoning + "#### N"

    def convert(row: dict) -> dict:
        raw_answer = row.get("answer") if has_answer else None
        raw_answer = None if raw_answer is None else str(raw_answer)
        out = {
            "prompt": build_math_prompt(
                str(row[problem_col]), instruction=instruction, system_prompt=system_prompt
            ),
            "answer": _gold_from_row(raw_answer, row.get("solution") if has_solution else None),
        }
        if keep_reasoning:
            out["solution"] = raw_answer if raw_answer and "####" in raw_answer else None
        return out

    ds = ds.map(convert, desc=None)
    missing = sum(a is None for a in ds["answer"])
    if missing == len(ds):
        raise ValueError(f"{where}: no row has a usable gold answer (columns {columns})")
    if missing:
        logger.warning("%s: dropping %d of %d rows without a usable gold answer", where, missing, len(ds))
        ds = ds.filter(lambda row: row["answer"] is not None)
    if keep_reasoning and all(s is None for s in ds["solution"]):
        ds = ds.remove_columns("solution")
    return ds
