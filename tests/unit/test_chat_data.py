"""SFT and preference data: schemas, chat-template masks, truncation, packing, bad input, the generator."""

import copy
import importlib.util
import json

import pytest
import torch

from align.chat_data import (
    DataStats,
    collate_preferences,
    collate_sft,
    encode_prompt_completion,
    extract_prompt,
    load_rows,
    load_train_and_eval,
    normalize_messages,
    pack_examples,
    sft_format,
    tokenize_preferences,
    tokenize_sft,
)

EOS = "<|im_end|>"


def counted_text(tok, row) -> list[str]:
    """The decoded runs of consecutive counted tokens."""
    runs, current = [], []
    for i, m in zip(row["input_ids"], row["mask"]):
        if m:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


def conv(*turns):
    roles = ["user", "assistant"] * len(turns)
    return [{"role": r, "content": c} for r, c in zip(roles, turns)]


# --- SFT masks ---------------------------------------------------------------------------------------


def test_assistant_mask_is_exactly_content_and_end_token(tiny_tokenizer):
    rows, stats = tokenize_sft([{"messages": conv("What is 2 + 2?", "2 + 2 = 4.")}], tiny_tokenizer)
    assert counted_text(tiny_tokenizer, rows[0]) == ["2 + 2 = 4." + EOS]
    assert stats.kept == 1 and not stats.skipped
    # the ids are one tokenisation of the rendered chat
    text = tiny_tokenizer.apply_chat_template(conv("What is 2 + 2?", "2 + 2 = 4."), tokenize=False)
    assert rows[0]["input_ids"] == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_assistant_mask_multi_turn_and_system(tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, *conv("Hi", "Hello!", "Name a color.", "Blue")]
    rows, _ = tokenize_sft([{"messages": messages}], tiny_tokenizer)
    assert counted_text(tiny_tokenizer, rows[0]) == ["Hello!" + EOS, "Blue" + EOS]


def test_assistant_only_false_counts_everything(tiny_tokenizer):
    rows, _ = tokenize_sft([{"messages": conv("Hi", "Hello!")}], tiny_tokenizer, assistant_only_loss=False)
    assert all(rows[0]["mask"])


def test_mask_fallback_for_templates_that_do_not_render_prefixes(tiny_tokenizer):
    # A template whose assistant turns differ from its generation prompt: the prefix method cannot work, so
    # the content itself is located.
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>bot: ' + m['content'] + "
        "'<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    rows, _ = tokenize_sft([{"messages": conv("Hi", "Hello there", "And?", "Bye")}], tok)
    # "bot: Hello" tokenises as "bot", ":", " Hello": the token that straddles the content's start counts
    assert counted_text(tok, rows[0]) == [" Hello there" + EOS, " Bye" + EOS]


def test_prompt_completion_conversational_and_plain(tiny_tokenizer):
    chat = {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "completion": [{"role": "assistant", "content": "Hi!"}],
    }
    rows, _ = tokenize_sft([chat], tiny_tokenizer)
    assert counted_text(tiny_tokenizer, rows[0]) == ["Hi!" + EOS]
    plain = {"prompt": "The capital of France is", "completion": " Paris."}
    rows, _ = tokenize_sft([plain], tiny_tokenizer)
    assert counted_text(tiny_tokenizer, rows[0]) == [" Paris." + EOS]  # eos appended, as TRL
    assert tiny_tokenizer.decode(rows[0]["input_ids"]) == "The capital of France is Paris." + EOS
    rows, _ = tokenize_sft([plain], tiny_tokenizer, completion_only_loss=False)
    assert all(rows[0]["mask"])


def test_text_alpaca_and_sharegpt_schemas(tiny_tokenizer):
    rows, _ = tokenize_sft([{"text": "hello world"}], tiny_tokenizer)
    assert tiny_tokenizer.decode(rows[0]["input_ids"]) == "hello world" + EOS and all(rows[0]["mask"])
    alpaca = {"instruction": "Add 1 and 2.", "input": "", "output": "3"}
    rows, _ = tokenize_sft([alpaca], tiny_tokenizer)
    assert counted_text(tiny_tokenizer, rows[0]) == ["3" + EOS]
    share = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]}
    rows, _ = tokenize_sft([share], tiny_tokenizer)
    assert counted_text(tiny_tokenizer, rows[0]) == ["Hey" + EOS]
    assert normalize_messages(share["conversations"])[1] == {"role": "assistant", "content": "Hey"}


def test_unknown_sft_schema_names_the_columns():
    with pytest.raises(ValueError, match=r"columns \['foo'\].*messages"):
        sft_format(["foo"])


def test_sft_bad_rows_are_counted_skips(tiny_tokenizer):
    data = [
        {"messages": conv("Hi", "")},  # empty completion
        {"messages": [{"role": "user", "content": "Hi"}]},  # no assistant turn
        {"messages": []},
        {"messages": conv("Hi", "Hello")},
    ]
    rows, stats = tokenize_sft(data, tiny_tokenizer)
    assert len(rows) == 1 and stats.kept == 1 and stats.rows == 4
    assert stats.skipped == {"empty_completion": 1, "no_assistant_turn": 1, "empty_conversation": 1}
    metrics = stats.metrics()
    assert metrics["data/skipped/empty_completion"] == 1.0 and metrics["data/kept"] == 1.0
    with pytest.raises(ValueError, match="no usable row"):
        tokenize_sft(data[:2], tiny_tokenizer)


@pytest.mark.parametrize("policy", ["keep_start", "keep_end", "skip", "error"])
def test_sft_truncation_policies(tiny_tokenizer, policy):
    long = {"messages": conv("Tell me a story.", "Once upon a time " * 20)}
    short = {"messages": conv("Hi", "Hey")}
    full, _ = tokenize_sft([long], tiny_tokenizer)
    n = len(full[0]["input_ids"])
    if policy == "error":
        with pytest.raises(ValueError, match=r"row 0: .*longer than max_length=40"):
            tokenize_sft([long, short], tiny_tokenizer, max_length=40, truncation=policy)
        return
    rows, stats = tokenize_sft([long, short], tiny_tokenizer, max_length=40, truncation=policy)
    if policy == "skip":
        assert len(rows) == 1 and stats.skipped == {"too_long": 1}
    else:
        assert len(rows[0]["input_ids"]) == 40 and stats.truncated == 1
        expected = full[0]["input_ids"][:40] if policy == "keep_start" else full[0]["input_ids"][n - 40 :]
        assert rows[0]["input_ids"] == expected


def test_truncation_that_removes_every_counted_token_is_a_skip(tiny_tokenizer):
    rows, stats = tokenize_sft(
        [{"messages": conv("x " * 50, "Hey")}, {"messages": conv("Hi", "Hey")}], tiny_tokenizer, max_length=45
    )
    assert len(rows) == 1 and stats.skipped == {"no_counted_tokens": 1}


# --- packing ---------------------------------------------------------------------------------------


def test_packing_best_fit_keeps_every_example(tiny_tokenizer):
    data = [{"messages": conv(f"Question {i}?", "Answer " * (i % 5 + 1))} for i in range(20)]
    rows, _ = tokenize_sft(data, tiny_tokenizer)
    packed = pack_examples(rows, 128)
    assert all(len(p["input_ids"]) <= 128 for p in packed)
    assert len(packed) < len(rows)
    assert sum(len(p["input_ids"]) for p in packed) == sum(len(r["input_ids"]) for r in rows)
    # counted tokens are kept except each example's first token (never a label)
    assert sum(sum(p["mask"]) for p in packed) == sum(sum(r["mask"][1:]) for r in rows)
    starts = sum(p["position_ids"].count(0) for p in packed)
    assert starts == len(rows)


def test_packed_forward_equals_separate_examples(tiny_tokenizer, tiny_model):
    """Packed examples must not attend to each other: their log-probs equal those of unpacked runs."""
    from align.forward import logprob_sums

    data = [{"messages": conv(f"What is {i} + {i}?", f"{i} + {i} = {2 * i}.")} for i in range(1, 5)]
    rows, _ = tokenize_sft(data, tiny_tokenizer)
    packed = pack_examples(rows, 256)
    assert len(packed) == 1
    batch = collate_sft(packed, tiny_tokenizer.pad_token_id)
    assert batch["attention_mask"] is None
    with torch.no_grad():
        total, _ = logprob_sums(tiny_model, batch["input_ids"], None, batch["mask"], batch["position_ids"])
        separate = 0.0
        for r in rows:
            b = collate_sft([r], tiny_tokenizer.pad_token_id)
            lp, _ = logprob_sums(tiny_model, b["input_ids"], b["attention_mask"], b["mask"])
            separate += float(lp)
    torch.testing.assert_close(total, torch.tensor([separate]), atol=1e-4, rtol=1e-5)


def test_packed_batches_count_real_tokens_not_padding(tiny_tokenizer):
    """Throughput of packed SFT counts the examples' tokens, not the padding to the batch's longest row."""
    data = [{"messages": conv(f"What is {i} + {i}?", f"{i} + {i} = {2 * i}." * i)} for i in range(1, 7)]
    rows, _ = tokenize_sft(data, tiny_tokenizer)
    packed = pack_examples(rows, max(len(r["input_ids"]) for r in rows) + 8)
    batch = collate_sft(packed, tiny_tokenizer.pad_token_id)
    real = sum(len(r["input_ids"]) for r in rows)
    assert int(batch["num_tokens"]) == real < batch["input_ids"].numel()


# --- preferences -----------------------------------------------------------------------------------


def _pair(prompt="What is 2 + 2?", chosen="4", rejected="5"):
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def test_preference_tokens_share_the_prompt(tiny_tokenizer):
    rows, stats = tokenize_preferences([_pair()], tiny_tokenizer)
    r = rows[0]
    assert tiny_tokenizer.decode(r["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert tiny_tokenizer.decode(r["chosen_ids"]) == "4" + EOS
    assert tiny_tokenizer.decode(r["rejected_ids"]) == "5" + EOS
    p, c = encode_prompt_completion(tiny_tokenizer, _pair()["prompt"], "4")
    assert (p, c) == (r["prompt_ids"], r["chosen_ids"])


def test_implicit_prompt_ultrafeedback_style(tiny_tokenizer):
    row = {
        "chosen": conv("What is 2 + 2?", "4"),
        "rejected": conv("What is 2 + 2?", "5"),
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    }
    rows, _ = tokenize_preferences([row], tiny_tokenizer, use_margin=True)
    explicit, _ = tokenize_preferences([_pair()], tiny_tokenizer)
    assert {k: rows[0][k] for k in explicit[0]} == explicit[0]
    assert rows[0]["margin"] == 5.0
    # HuggingFaceH4 keeps a string prompt next to whole conversations: the conversations win
    rows2, _ = tokenize_preferences([{**row, "prompt": "What is 2 + 2?"}], tiny_tokenizer)
    assert rows2[0]["prompt_ids"] == explicit[0]["prompt_ids"]


def test_plain_text_pairs_and_shared_string_prefix(tiny_tokenizer):
    rows, _ = tokenize_preferences(
        [{"prompt": "Q: 2+2? A:", "chosen": " 4", "rejected": " 5"}], tiny_tokenizer
    )
    assert tiny_tokenizer.decode(rows[0]["prompt_ids"] + rows[0]["chosen_ids"]) == "Q: 2+2? A: 4" + EOS
    assert extract_prompt("Human: hi Assistant: hello there", "Human: hi Assistant: help") == (
        "Human: hi Assistant: ", "hello there", "help",
    )  # fmt: skip


def test_missing_columns_is_an_error_naming_them(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['rejected'\]; found \['chosen', 'prompt'\]"):
        tokenize_preferences([{"prompt": "x", "chosen": "y"}], tiny_tokenizer)


def test_bad_pairs_are_counted_skips(tiny_tokenizer):
    data = [
        _pair(chosen=""),  # empty completion
        _pair(chosen="4", rejected="4"),  # chosen equals rejected
        {"prompt": "Q", "chosen": None, "rejected": "x"},
        {"chosen": conv("A", "1"), "rejected": conv("B", "2")},  # nothing shared: no prompt
        _pair(),
    ]
    rows, stats = tokenize_preferences(data, tiny_tokenizer)
    assert len(rows) == 1
    assert stats.skipped == {"empty_completion": 2, "identical_pair": 1, "no_shared_prompt": 1}
    assert "row 1" in stats.first["identical_pair"]
    with pytest.raises(ValueError, match="no usable row"):
        tokenize_preferences(data[:2], tiny_tokenizer)


def test_preference_truncation(tiny_tokenizer):
    long = _pair(chosen="4 " * 30 + "yes", rejected="4 " * 30 + "no")
    (full,), _ = tokenize_preferences([long], tiny_tokenizer)
    P = len(full["prompt_ids"])
    rows, stats = tokenize_preferences([long, _pair()], tiny_tokenizer, max_length=P + 10)
    assert len(rows) == 1 and stats.skipped == {"too_long": 1}  # default skip
    early = _pair(chosen="yes " + "4 " * 30, rejected="no " + "4 " * 30)
    rows, stats = tokenize_preferences([early], tiny_tokenizer, max_length=P + 10, truncation="keep_start")
    assert stats.truncated == 1 and len(rows[0]["chosen_ids"]) == len(rows[0]["rejected_ids"]) == 10
    keep_end, stats = tokenize_preferences(
        [long], tiny_tokenizer, max_length=P + 10 + 30, truncation="keep_end"
    )
    assert stats.truncated == 1
    r = keep_end[0]
    assert (
        r["chosen_ids"] == full["chosen_ids"]
        and r["prompt_ids"] == full["prompt_ids"][-len(r["prompt_ids"]) :]
    )
    assert len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= P + 40
    with pytest.raises(ValueError, match="longer than max_length"):
        tokenize_preferences([long], tiny_tokenizer, max_length=P + 10, truncation="error")


def test_identical_after_truncation_is_a_skip(tiny_tokenizer):
    long = _pair(chosen="same start " * 10 + "yes", rejected="same start " * 10 + "no")
    (full,), _ = tokenize_preferences([long], tiny_tokenizer)
    P = len(full["prompt_ids"])
    rows, stats = tokenize_preferences(
        [long, _pair()], tiny_tokenizer, max_length=P + 5, truncation="keep_start"
    )
    assert len(rows) == 1 and stats.skipped == {"identical_after_truncation": 1}


def test_collate_preferences_layout(tiny_tokenizer):
    rows, _ = tokenize_preferences([_pair(), _pair("What is 3 + 3?", "6", "7 or maybe 8")], tiny_tokenizer)
    b = collate_preferences(rows, tiny_tokenizer.pad_token_id)
    assert b["input_ids"].shape[0] == 4
    for i, r in enumerate(rows):
        for j, key in ((i, "chosen_ids"), (i + 2, "rejected_ids")):
            n = len(r["prompt_ids"]) + len(r[key])
            assert b["input_ids"][j, :n].tolist() == r["prompt_ids"] + r[key]
            assert b["mask"][j].tolist() == [0] * len(r["prompt_ids"]) + [1] * len(r[key]) + [0] * (
                b["input_ids"].shape[1] - n
            )
            assert b["attention_mask"][j].sum() == n


def test_data_stats_summary():
    s = DataStats(name="x", rows=3, kept=1)
    s.skip("too_long", 2, "99 tokens")
    assert "skipped 1 too_long (first: row 2: 99 tokens)" in s.summary()


# --- loading ---------------------------------------------------------------------------------------


def test_load_rows_local_layouts(tmp_path):
    rows = [{"messages": conv("a", "b")}]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_rows(tmp_path / "d", "train")[0]["messages"][1]["content"] == "b"
    assert len(load_rows(tmp_path / "d" / "train.jsonl")) == 1
    with pytest.raises(FileNotFoundError, match="no files for split 'test'"):
        load_rows(tmp_path / "d", "test")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_rows("./nope.jsonl")
    train, heldout = load_train_and_eval(
        str(tmp_path / "d" / "train.jsonl"), "train", None, "test", default="sft"
    )
    assert heldout is None and len(train) == 1  # a single file has no held-out split


def test_shipped_data_loads_and_tokenizes(tiny_tokenizer):
    for default in ("sft", "prefs"):
        for split, n in (("train", 1000), ("test", 100)):
            assert len(load_rows(None, split, default=default)) == n
    rows, stats = tokenize_preferences(
        load_rows(None, "test", default="prefs"), tiny_tokenizer, max_length=256
    )
    assert stats.kept == 100
    rows, stats = tokenize_sft(load_rows(None, "test", default="sft"), tiny_tokenizer, max_length=256)
    assert stats.kept == 100 and stats.truncated == 0


# --- the generator ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def make_prefs():
    from align.data import repo_root

    spec = importlib.util.spec_from_file_location("make_prefs", repo_root() / "data" / "make_prefs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_reproduces_the_shipped_files(make_prefs, tmp_path):
    from align.data import repo_root

    make_prefs.main(["--out", str(tmp_path)])
    for name in ("sft/train", "sft/test", "prefs/train", "prefs/test"):
        assert (tmp_path / f"{name}.jsonl").read_text() == (
            repo_root() / "data" / f"{name}.jsonl"
        ).read_text()


def test_generated_pairs_are_checkable_and_splits_disjoint(make_prefs):
    data = make_prefs.generate(seed=3, train=200, test=40)
    for key in ("prefs/train", "prefs/test"):
        for row in data[key]:
            assert make_prefs.check(row["kind"], row["answer"], row["chosen"][0]["content"])
            assert not make_prefs.check(row["kind"], row["answer"], row["rejected"][0]["content"])
    prompts = {
        split: {r["prompt"][0]["content"] for r in data[f"prefs/{split}"]}
        | {m["content"] for r in data[f"sft/{split}"] for m in r["messages"] if m["role"] == "user"}
        for split in ("train", "test")
    }
    assert not prompts["train"] & prompts["test"]
    assert {r["kind"] for r in data["prefs/train"]} == set(make_prefs.KINDS)


@pytest.mark.parametrize(
    ("kind", "answer", "text", "ok"),
    [
        ("math", "71", "23 + 48 = 71. The answer is \\boxed{71}.", True),
        ("math", "71", "The answer is 71.", False),
        ("uppercase", "", "APPLE, PEAR.", True),
        ("uppercase", "", "Apple, pear.", False),
        ("word_limit", "6", "The sun is hot and bright.", True),
        ("word_limit", "6", "The sun is hot and bright and big.", False),
        ("json", '{"name": "Mia", "age": 12}', 'Sure: {"name": "Mia", "age": 12}', True),
        ("json", '{"name": "Mia", "age": 12}', '{"name": "Mia"}', False),
    ],
)
def test_property_checks(make_prefs, kind, answer, text, ok):
    assert make_prefs.check(kind, answer, text) is ok


# --- bad input: every case a clear error or a counted skip, for each schema ------------------------------


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("rows", "field", "kind", "expected"),
    [
        ([{"prompt": "Q", "chosen": "4", "rejected": "5"}, {"prompt": "Q", "chosen": 4, "rejected": "5"}],
         "chosen", "a number", "a string"),
        ([_pair(), {**_pair(), "rejected": "5"}], "rejected", "a string", "a list"),
        ([{"prompt": "Q", "completion": "A"}, {"prompt": "Q", "completion": 5}], "completion", "a number", "a string"),
    ],
)  # fmt: skip
def test_jsonl_field_of_another_type_names_file_line_and_field(tmp_path, rows, field, kind, expected):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError) as info:
        load_rows(path)
    msg = str(info.value)
    assert str(path) in msg and "line 2 (row 1)" in msg and f"field {field!r} is {kind}" in msg
    assert f"expected {expected} in every row" in msg


def _prefs_rows(schema, prompt, chosen, rejected):
    if schema == "plain":
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    def side(c):
        return None if c is None else [{"role": "assistant", "content": c}]

    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": side(chosen),
        "rejected": side(rejected),
    }


@pytest.mark.parametrize("schema", ["plain", "conversational"])
def test_bad_pairs_in_both_schemas_are_counted_skips_naming_the_field(tiny_tokenizer, schema):
    data = [
        _prefs_rows(schema, "What is 2 + 2?", "4", "5"),
        _prefs_rows(schema, "What is 2 + 2?", None, "5"),  # no chosen
        _prefs_rows(schema, "What is 2 + 2?", "4", None),  # no rejected
        _prefs_rows(schema, "What is 2 + 2?", "", "5"),  # empty completion
        _prefs_rows(schema, "What is 2 + 2?", "4", " 4 "),  # chosen equals rejected
        _prefs_rows(schema, "What is 2 + 2?", "4 " * 60, "5"),  # longer than max_length
    ]
    rows, stats = tokenize_preferences(data, tiny_tokenizer, max_length=64, name="pairs.jsonl")
    assert len(rows) == stats.kept == 1
    assert stats.skipped == {"empty_completion": 3, "identical_pair": 1, "too_long": 1}
    assert stats.first["empty_completion"].startswith("row 1: chosen is missing")
    assert stats.first["identical_pair"] == "row 4: chosen equals rejected"
    assert stats.first["too_long"].startswith("row 5: ")
    assert stats.metrics()["data/skipped/empty_completion"] == 3.0
    with pytest.raises(
        ValueError, match=r"pairs\.jsonl: row 5: prompt \+ completion is \d+ tokens, longer than"
    ):
        tokenize_preferences(data, tiny_tokenizer, max_length=64, truncation="error", name="pairs.jsonl")


@pytest.mark.parametrize("schema", ["plain", "conversational", "messages"])
def test_bad_sft_rows_in_every_schema_are_counted_skips_naming_the_field(tiny_tokenizer, schema):
    def row(completion):
        if schema == "messages":
            turns = [{"role": "user", "content": "Hi"}]
            return {
                "messages": turns
                + ([] if completion is None else [{"role": "assistant", "content": completion}])
            }
        if schema == "plain":
            return {"prompt": "Hi", "completion": completion}
        c = None if completion is None else [{"role": "assistant", "content": completion}]
        return {"prompt": [{"role": "user", "content": "Hi"}], "completion": c}

    data = [row("Hello"), row(""), row(None), row("word " * 80)]
    rows, stats = tokenize_sft(data, tiny_tokenizer, max_length=64, truncation="skip", name="chats.jsonl")
    assert len(rows) == stats.kept == 1
    missing = "no_assistant_turn" if schema == "messages" else "empty_completion"
    assert stats.skipped == ({"empty_completion": 1, missing: 1} if missing != "empty_completion"
                             else {"empty_completion": 2}) | {"too_long": 1}  # fmt: skip
    field = "messages" if schema == "messages" else "completion"
    assert field in stats.first["empty_completion"] and stats.first["empty_completion"].startswith("row 1: ")
    with pytest.raises(ValueError, match=r"chats\.jsonl: row 3: \d+ tokens is longer than max_length=64"):
        tokenize_sft(data, tiny_tokenizer, max_length=64, truncation="error", name="chats.jsonl")


def test_missing_columns_name_the_data_and_what_was_expected(tiny_tokenizer):
    with pytest.raises(
        ValueError, match=r"^my\.jsonl: cannot tell the SFT schema from the columns \['answer'\]"
    ):
        tokenize_sft([{"answer": "x"}], tiny_tokenizer, name="my.jsonl")
    with pytest.raises(ValueError, match=r"^my\.jsonl: missing column\(s\) \['chosen'\].*expected 'prompt'"):
        tokenize_preferences([{"prompt": "x", "rejected": "y"}], tiny_tokenizer, name="my.jsonl")
