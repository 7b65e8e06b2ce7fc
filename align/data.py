r"""Dataset loading and formatting: the one reader of every dataset, and the math prompts for RL.

`read_rows` is the project's only reader (math prompts, SFT and preference data, evaluation tasks), with
errors that name the file, the line and the field. `load_math_dataset` turns MATH-500-style, GSM8K-style or
the project's own data into rows with a chat `prompt` and the gold `answer` the math reward reads:

    ds = load_math_dataset()                               # the shipped data/math/train.jsonl
    ds = load_math_dataset("data/math", split="test")      # a folder: its test.jsonl / test-*.parquet
    ds = load_math_dataset("HuggingFaceH4/MATH-500", split="test")   # a hub dataset (needs the network)
    ds = load_math_dataset("openai/gsm8k", split="test")   # config "main" is picked for GSM8K

The shipped data lives in `data/` next to the `align` package (an editable install); a wheel lacks it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "LOCAL_SUFFIXES",
    "MATH_INSTRUCTION",
    "build_math_prompt",
    "content_text",
    "default_data_dir",
    "describe_json_type",
    "describe_source",
    "load_math_dataset",
    "math_gold",
    "read_rows",
    "repo_root",
    "shipped_data",
]

logger = logging.getLogger(__name__)

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
"""Appended to each problem (the instruction of DeepSeek-R1 / Qwen2.5-Math evaluations)."""

PROBLEM_COLUMNS = ("problem", "question")
GOLD_COLUMNS = ("answer", "solution")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
_MAKERS = {"math": "make_math.py", "sft": "make_prefs.py", "prefs": "make_prefs.py"}


def repo_root() -> Path:
    """The folder that contains the `align` package (the repository root for an editable install)."""
    return Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """`data/` next to the `align` package: the datasets and rubrics the project ships."""
    return repo_root() / "data"


def shipped_data(name: str) -> Path:
    """The shipped dataset folder `data/<name>` (`math`, `sft`, `prefs`); FileNotFoundError naming the
    script that makes it when it is missing."""
    path = default_data_dir() / name
    if not path.is_dir():
        maker = _MAKERS.get(name, "make_*.py")
        raise FileNotFoundError(
            f"the shipped data {path} is missing; run `python data/{maker}` in the repository or pass a dataset"
        )
    return path


def build_math_prompt(
    problem: str, *, instruction: str = MATH_INSTRUCTION, system_prompt: str | None = None
) -> list[dict[str, str]]:
    r"""Chat messages for one problem: the problem then the instruction (reason step by step, answer in
    `\boxed{}`) in one user turn, which every chat template accepts; an optional system turn first."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    content = f"{problem.strip()}\n\n{instruction}" if instruction else problem.strip()
    messages.append({"role": "user", "content": content})
    return messages


def read_rows(
    source: str | Path,
    split: str = "train",
    *,
    config: str | None = None,
    limit: int | None = None,
    required: Sequence[str] = (),
    name: str = "",
) -> Dataset:
    """A `datasets.Dataset` from a `.jsonl` / `.json` / `.parquet` file, a folder holding `split`
    (`_split_files`) or a hub name ("name" or "owner/name"). A missing path that looks like one ("./x",
    "a/b/c", "x.jsonl") is an error, never a hub name. `limit` keeps the first rows; `name` starts the error
    messages (`align.errors.DataError`), which also cover an empty dataset or `required` columns missing.
    """
    prefix = f"{name}: " if name else ""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
        raise ValueError(f"{prefix}limit must be a positive integer or None, got {limit!r}")
    path = Path(source).expanduser()
    if path.exists():
        ds = _read_local(path, split)
    elif isinstance(source, Path) or _looks_like_path(str(source)):
        raise FileNotFoundError(f"{prefix}{source}: no such file or folder")
    else:
        import datasets

        if config is None and str(source).rstrip("/").lower().endswith("gsm8k"):
            config = "main"  # GSM8K has no default config; "main" is the one every paper reports
        ds = datasets.load_dataset(str(source), config, split=split)
    where = prefix + describe_source(source, split, config)
    if len(ds) == 0:
        raise DataError(f"{where}: the dataset is empty")
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; expected {list(required)}, found {list(ds.column_names)}"
        )
    return ds if limit is None else ds.select(range(min(limit, len(ds))))


def describe_source(source: str | Path, split: str, config: str | None = None) -> str:
    """How error messages name a source: the file, the folder and split, or the hub name, config and split."""
    path = Path(source).expanduser()
    if path.is_file():
        return str(path)
    if path.exists():
        return f"{path} (split {split!r})"
    return f"{source}" + (f" ({config})" if config else "") + f" (split {split!r})"


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or source.count("/") > 1  # hub names are "name" or "owner/name"
        or Path(source).suffix in LOCAL_SUFFIXES
    )


def _read_local(path: Path, split: str) -> Dataset:
    from datasets import concatenate_datasets

    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise DataError(f"{path}: unsupported file type; expected one of {list(LOCAL_SUFFIXES)}")
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


def _split_files(folder: Path, split: str) -> list[Path]:
    """Files of `split` in a folder: <split>.jsonl|json|parquet, <split>-*.parquet, data/<split>-*, <split>/*."""
    candidates = [folder / f"{split}{suffix}" for suffix in LOCAL_SUFFIXES]
    for pattern in (f"{split}-*", f"{split}_*", f"data/{split}-*", f"data/{split}.*", f"{split}/*"):
        candidates += sorted(folder.glob(pattern))
    return [p for p in dict.fromkeys(candidates) if p.is_file() and p.suffix in LOCAL_SUFFIXES]


def _read_file(path: Path) -> Dataset:
    from datasets import Dataset

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return Dataset(pq.read_table(path))
    text = _read_text(path)
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError:  # a .json file in JSON-lines form, as `datasets` writes them
            records = None
        if isinstance(records, dict) and isinstance(records.get("data"), list):
            records = records["data"]
        if records is not None:
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise DataError(
                    f"{path}: expected a list of JSON objects (or {{'data': [...]}}), got "
                    f"{describe_json_type(records)}"
                )
            return _from_records(path, records, [f"row {i}" for i in range(len(records))])
    return _from_records(path, *_json_lines(path, text))


def _read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8; a file that is not UTF-8 is an error naming it, the line, the
    column and the byte (Python's own error names none of them)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}, byte {column} of the line: {e.reason}); "
            "save the file as UTF-8"
        ) from None


def _json_lines(path: Path, text: str) -> tuple[list[dict], list[str]]:
    """The JSON objects of a JSON-lines text and where each came from ("line 3 (row 1)")."""
    records, where = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not a JSON line: {e}") from e
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
        where.append(f"line {lineno} (row {len(records) - 1})")
    return records, where


def describe_json_type(value: Any) -> str:
    """A JSON value's type as error messages say it: "a string", "a number", "a list", "an object", ..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def content_text(content: Any) -> str:
    """The text of a chat message's ``content``: a string, or the text parts of a list of parts
    (``[{"type": "text", "text": ...}, ...]``) joined; None gives ""."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return str(content)


def _from_records(path: Path, records: list[dict], where: list[str]) -> Dataset:
    """`Dataset.from_list(records)`; a field whose JSON type changes between rows (Arrow needs one type per
    column) is an error naming the file, the row, the field and the type its first row set."""
    import pyarrow as pa
    from datasets import Dataset

    try:
        return Dataset.from_list(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        first: dict[str, tuple[str, str]] = {}
        for record, at in zip(records, where):
            for key, value in record.items():
                if value is None:
                    continue
                kind = describe_json_type(value)
                seen = first.setdefault(key, (kind, at))
                if seen[0] != kind:
                    raise DataError(
                        f"{path}: {at}: field {key!r} is {kind}, but {seen[1]} has {seen[0]}; expected "
                        f"{seen[0]} in every row (one type per field: e.g. all strings, or all lists of "
                        "messages)"
                    ) from e
        raise DataError(f"{path}: cannot read the rows as a table: {e}") from e


_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def math_gold(answer: Any, solution: Any) -> str | None:
    """The gold answer of a math row, as training and evaluation both prepare it: the `answer` column
    (GSM8K's "... #### 1,000" becomes "1000"), else the boxed answer of `solution`; None if neither has one."""
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
) -> Dataset:
    r"""A math dataset with a chat `prompt` (`build_math_prompt`) and a gold `answer` (`math_gold`), other
    columns kept, read by `read_rows` from `path_or_name` (None: the shipped `data/math/`). The problem is
    the `problem` (MATH-500) or `question` (GSM8K) column; GSM8K's reasoning is kept as `solution`. Rows
    without a gold answer are dropped with a warning.
    """
    source = path_or_name or shipped_data("math")
    ds = read_rows(source, split, config=config, limit=limit)
    where, columns = describe_source(source, split, config), list(ds.column_names)
    problem_col = _math_problem_column(columns, where)
    ds, keep_reasoning = _add_prompt_and_gold(ds, problem_col, instruction, system_prompt)
    return _drop_rows_without_gold(ds, where, columns, keep_reasoning)


def _math_problem_column(columns: list[str], where: str) -> str:
    """The problem column; ValueError naming the columns found unless a problem and a gold column exist."""
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
    return problem_col


def _add_prompt_and_gold(
    ds: Dataset, problem_col: str, instruction: str, system_prompt: str | None
) -> tuple[Dataset, bool]:
    """Every row with its chat `prompt` and gold `answer` (None where none is found), and whether GSM8K's
    reasoning was kept as `solution`."""
    has_answer, has_solution = "answer" in ds.column_names, "solution" in ds.column_names
    keep_reasoning = has_answer and not has_solution  # GSM8K: the answer column is reasoning + "#### N"

    def convert(row: dict) -> dict:
        raw_answer = row.get("answer") if has_answer else None
        raw_answer = None if raw_answer is None else str(raw_answer)
        out = {
            "prompt": build_math_prompt(
                str(row[problem_col]), instruction=instruction, system_prompt=system_prompt
            ),
            "answer": math_gold(raw_answer, row.get("solution") if has_solution else None),
        }
        if keep_reasoning:
            out["solution"] = raw_answer if raw_answer and "####" in raw_answer else None
        return out

    return ds.map(convert, desc=None), keep_reasoning


def _drop_rows_without_gold(ds: Dataset, where: str, columns: list[str], keep_reasoning: bool) -> Dataset:
    """Rows without a gold answer dropped with a warning (none left is an error); an all-empty kept
    `solution` column removed."""
    missing = sum(a is None for a in ds["answer"])
    if missing == len(ds):
        raise ValueError(f"{where}: no row has a usable gold answer (columns {columns})")
    if missing:
        logger.warning("%s: dropping %d of %d rows without a usable gold answer", where, missing, len(ds))
        ds = ds.filter(lambda row: row["answer"] is not None)
    if keep_reasoning and all(s is None for s in ds["solution"]):
        ds = ds.remove_columns("solution")
    return ds
