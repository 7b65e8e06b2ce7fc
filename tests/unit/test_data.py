"""The math data generator, the shipped files, and `load_math_dataset` on every supported layout."""

import importlib.util
import json

import pytest

from align.data import build_math_prompt, default_data_dir, load_math_dataset, repo_root
from align.rewards import make_math_reward

MATH_DIR = default_data_dir() / "math"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def make_math():
    spec = importlib.util.spec_from_file_location("make_math", repo_root() / "data" / "make_math.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the generator and the shipped files ---------------------------------------------------------------


def test_generator_is_seeded_and_disjoint(make_math, tmp_path):
    make_math.main(["--train", "300", "--test", "60", "--out", str(tmp_path / "a")])
    make_math.main(["--train", "300", "--test", "60", "--out", str(tmp_path / "b")])
    make_math.main(["--seed", "1", "--train", "300", "--test", "60", "--out", str(tmp_path / "c")])
    a = (tmp_path / "a" / "train.jsonl").read_text()
    assert a == (tmp_path / "b" / "train.jsonl").read_text()
    assert a != (tmp_path / "c" / "train.jsonl").read_text()
    train, test = read_jsonl(tmp_path / "a" / "train.jsonl"), read_jsonl(tmp_path / "a" / "test.jsonl")
    assert len(train) == 300 and len(test) == 60
    assert not {r["problem"] for r in train} & {r["problem"] for r in test}


def test_shipped_files_match_the_generator(make_math, tmp_path):
    make_math.main(["--out", str(tmp_path)])  # the defaults made the shipped files
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_text() == (MATH_DIR / f"{split}.jsonl").read_text()


def test_shipped_files_schema_and_self_consistency():
    train, test = read_jsonl(MATH_DIR / "train.jsonl"), read_jsonl(MATH_DIR / "test.jsonl")
    assert len(train) == 2000 and len(test) == 200
    rows = train + test
    assert all(set(r) == {"problem", "solution", "answer", "subject", "level", "unique_id"} for r in rows)
    assert {r["level"] for r in rows} == {1, 2, 3}
    assert len({r["unique_id"] for r in rows}) == len(rows)
    assert len({r["problem"] for r in rows}) == len(rows)  # no repeats, so the splits are disjoint
    reward = make_math_reward()  # every worked solution reaches its own answer
    assert reward([""] * len(test), [r["solution"] for r in test], answer=[r["answer"] for r in test]) == [
        1.0
    ] * len(test)


# --- the loader ------------------------------------------------------------------------------------------


def test_build_math_prompt():
    messages = build_math_prompt(" What is $1 + 1$? ")
    assert messages == [
        {
            "role": "user",
            "content": "What is $1 + 1$?\n\nPlease reason step by step, and put your final answer within \\boxed{}.",
        }
    ]
    assert build_math_prompt("q", system_prompt="Be brief.")[0] == {"role": "system", "content": "Be brief."}


def test_default_is_the_shipped_data():
    ds = load_math_dataset(limit=5)
    assert len(ds) == 5
    assert {"prompt", "answer", "problem", "solution", "level", "unique_id"} <= set(ds.column_names)
    assert ds[0]["prompt"][-1]["content"].startswith(ds[0]["problem"])
    assert len(load_math_dataset(MATH_DIR, split="test")) == 200


def test_math500_schema_jsonl_json_parquet(tmp_path):
    rows = [
        {"problem": "What is 1+1?", "solution": r"It is $\boxed{2}$.", "answer": "2", "level": 1},
        {"problem": "Half?", "solution": r"$\boxed{\frac12}$", "answer": r"\frac{1}{2}", "level": 2},
    ]
    jsonl = write_jsonl(tmp_path / "m.jsonl", rows)
    as_json = tmp_path / "m.json"
    as_json.write_text(json.dumps(rows))
    from datasets import Dataset

    parquet = tmp_path / "m.parquet"
    Dataset.from_list(rows).to_parquet(str(parquet))
    for path in (jsonl, as_json, parquet):
        ds = load_math_dataset(path)
        assert ds["answer"] == ["2", r"\frac{1}{2}"], path
        assert ds["level"] == [1, 2]


def test_folder_with_split_files(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [{"problem": "p", "answer": "1"}])
    assert load_math_dataset(tmp_path, split="test")["answer"] == ["1"]
    with pytest.raises(FileNotFoundError, match=r"no files for split 'train'.*found \['test.jsonl'\]"):
        load_math_dataset(tmp_path, split="train")


def test_gsm8k_schema(tmp_path):
    rows = [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
        {"question": "Big?", "answer": "It is large.\n#### 1,200"},
    ]
    ds = load_math_dataset(write_jsonl(tmp_path / "g.jsonl", rows))
    assert ds["answer"] == ["7", "1200"]
    assert ds["solution"][0].endswith("#### 7")  # the reasoning is kept
    assert ds["prompt"][0][-1]["content"].startswith("Tom has 3 apples")


def test_gold_parsed_from_solution_when_no_answer(tmp_path, caplog):
    rows = [{"problem": "a", "solution": r"so $\boxed{5}$"}, {"problem": "b", "solution": "no boxed answer"}]
    ds = load_math_dataset(write_jsonl(tmp_path / "s.jsonl", rows))
    assert ds["answer"] == ["5"]  # the row without a gold answer is dropped, with a warning
    assert "dropping 1 of 2 rows" in caplog.text


def test_missing_columns_name_the_file_and_columns(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": 1}])
    with pytest.raises(
        ValueError,
        match=r"bad.jsonl: no problem column; expected one of \['problem', 'question'\].*found columns \['text', 'label'\]",
    ):
        load_math_dataset(path)
    path = write_jsonl(tmp_path / "nogold.jsonl", [{"problem": "x"}])
    with pytest.raises(
        ValueError,
        match=r"nogold.jsonl: no gold answer column; expected 'answer'.*found columns \['problem'\]",
    ):
        load_math_dataset(path)


def test_empty_and_missing(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty.jsonl: the dataset is empty"):
        load_math_dataset(empty)
    with pytest.raises(FileNotFoundError, match="nothing.jsonl: no such file"):
        load_math_dataset(tmp_path / "nothing.jsonl")
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_math_dataset(limit=0)


def test_hub_names_go_to_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([{"question": "q", "answer": "x\n#### 3"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_math_dataset("openai/gsm8k", split="test")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert ds["answer"] == ["3"]
