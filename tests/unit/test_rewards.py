"""One-line tests of the verifiable rewards, the combiner and the name registry."""

import math
import threading
import time

import pytest

import align.rewards.math as math_module
from align.rewards import (
    CombinedReward,
    boxed_format_reward,
    choice_reward,
    extract_answer,
    extract_choice,
    extract_gold,
    get_reward_funcs,
    make_choice_reward,
    make_length_reward,
    make_math_reward,
    make_tags_format_reward,
    math_reward,
    message_text,
)
from align.rewards.combine import NonFiniteRewardError


def score(completion, **columns):
    """Score one completion with a fresh math reward; return (score, stats)."""
    reward = make_math_reward()
    columns = {k: [v] for k, v in columns.items()}
    return reward([""], [completion], **columns)[0], reward.pop_stats()


# --- math: the one-line cases of the brief ------------------------------------------------------------


def test_boxed_fraction_matches_slash_gold():
    assert score(r"so the probability is \boxed{\frac{63}{400}}", answer="63/400")[0] == 1.0


def test_decimal_matches_latex_fraction():
    assert score("0.5", answer=r"\frac12")[0] == 1.0


def test_unboxed_answer_found_by_fallback():
    assert score("Adding them up. The answer is 42", answer="42")[0] == 1.0


def test_wrong_number_scores_zero():
    assert score(r"\boxed{41}", answer="42") == (0.0, {})


def test_gold_from_solution_boxed():
    assert score(r"\boxed{3}", solution=r"We divide 6 by 2, so the answer is $\boxed{3}$.")[0] == 1.0


def test_unparsable_gold_is_none_and_counted():
    assert score(r"\boxed{3}", answer=r"\frac{") == (None, {"reward/math/gold_unparsable": 1.0})


def test_missing_gold_row_is_none_and_counted():
    assert score(r"\boxed{3}", answer=None) == (None, {"reward/math/gold_missing": 1.0})


def test_no_answer_is_zero_and_counted():
    assert score("I do not know.", answer="3") == (0.0, {"reward/math/no_answer": 1.0})


def test_chat_message_completions_and_batch():
    completions = [[{"role": "assistant", "content": r"\boxed{7}"}], "12 + 7 = 9", r"\boxed{\dfrac{1}{2}}"]
    assert math_reward([None] * 3, completions, answer=["7", "19", "0.5"]) == [1.0, 0.0, 1.0]


def test_gsm8k_style_gold_and_thousands():
    assert score("#### 1,234", answer="She pays 1000 + 234 = 1234.\n#### 1234")[0] == 1.0


def test_math_reward_needs_a_gold_column():
    with pytest.raises(ValueError, match="'answer' or 'solution'"):
        math_reward([""], ["1"], question=["q"])


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"first \boxed{1} then \boxed{\frac{a}{b}}", r"\frac{a}{b}"),
        (r"\fbox{7}", "7"),
        (r"\boxed{2} and a truncated \boxed{\frac{1", "2"),
        (r"\boxed{x^{2}+1}", "x^{2}+1"),
        ("The final answer is $12$. Done", "12"),
        ("**Answer:** 17", "17"),
        ("answer: $x = 3$ because", "x = 3"),
        ("work...\n#### 72", "72"),
        ("12 + 7 = 9", "9"),
        ("no numbers here", None),
        (r"\boxed{}", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_gold():
    assert extract_gold("42") == "42"
    assert extract_gold(None, r"so $\boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert extract_gold(None, "no box and 3 numbers 4") is None  # never the last number of a solution
    assert extract_gold(None, None) is None


# --- math: timeouts and threads -------------------------------------------------------------------------


def _slow_verify(*args, **kwargs):
    time.sleep(3)
    return True


def test_timeout_in_main_thread_is_zero_and_counted(monkeypatch):
    monkeypatch.setattr(math_module, "verify", _slow_verify)
    reward = make_math_reward(timeout_s=0.2, isolation="inline")
    start = time.monotonic()
    assert reward([""], [r"\boxed{1}"], answer=["1"]) == [0.0]
    assert time.monotonic() - start < 1.5
    assert reward.pop_stats() == {"reward/math/timeouts": 1.0}


def test_timeout_in_worker_thread_does_not_crash(monkeypatch):
    monkeypatch.setattr(math_module, "verify", _slow_verify)
    reward = make_math_reward(timeout_s=0.2, isolation="inline")
    result = {}

    def run():
        try:
            result["value"] = reward([""], [r"\boxed{1}"], answer=["1"])
        except BaseException as e:  # the test fails below with the error
            result["error"] = e

    start = time.monotonic()
    worker = threading.Thread(target=run)
    worker.start()
    worker.join(5)
    assert "error" not in result, result.get("error")
    assert result["value"] == [0.0]
    assert time.monotonic() - start < 1.5
    assert reward.pop_stats() == {"reward/math/timeouts": 1.0}


def test_power_tower_times_out_in_a_thread_and_in_the_main_thread():
    """sympy evaluates 9^(9^(9^9)) in one C call that holds the GIL: no signal and no thread in this
    process can stop it, so math checks run in a worker process that is killed. Fails (hangs) inline."""
    reward = make_math_reward(timeout_s=1.0)
    tower = r"\boxed{9^{9^{9^{9}}}}"
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(v=reward([""] * 2, [tower, r"\boxed{3}"], answer=["3", "3"]))
    )
    start = time.monotonic()
    worker.start()
    worker.join(20)
    assert not worker.is_alive() and result["v"] == [0.0, 1.0]
    assert reward([""], [tower], answer=["3"]) == [0.0]  # main thread
    assert time.monotonic() - start < 15
    assert reward.pop_stats() == {"reward/math/timeouts": 2.0}


def test_inline_math_matches_the_worker_process():
    texts = [r"\boxed{0.25}", r"\boxed{1/3}", "the answer is 4", "no answer"]
    golds = ["1/4", "0.3333", "4", "4"]
    inline = make_math_reward(isolation="inline")
    worker = make_math_reward()
    assert (
        inline([""] * 4, texts, answer=golds) == worker([""] * 4, texts, answer=golds) == [1.0, 0.0, 1.0, 0.0]
    )
    assert inline.pop_stats() == worker.pop_stats()


def test_real_check_in_worker_thread():
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(v=math_reward([""], [r"\boxed{0.25}"], answer=["1/4"]))
    )
    worker.start()
    worker.join(10)
    assert result["v"] == [1.0]


# --- choice ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Answer: B", "B"),
        ("I think (C) is right", "C"),
        ("**D**", "D"),
        ("The answer is A.", "A"),
        ("(A) is tempting, but the answer is (B)", "B"),
        (r"\boxed{\text{C}}", "C"),
        ("C) because", "C"),
        ("A cat is an animal", None),  # the article is not a label
        ("the answer is a good one", None),
        ("nothing here", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


def test_extract_choice_digit_labels():
    assert extract_choice("The answer is 3.", ("1", "2", "3", "4")) == "3"


def test_choice_reward():
    completions = ["Answer: B", "Answer: C", "no idea", "answer: 2"]
    keys = ["B", "B", "A", "2"]
    choices = [None, None, None, {"text": ["x", "y"], "label": ["1", "2"]}]
    reward = make_choice_reward()
    assert reward([""] * 4, completions, answerKey=keys, choices=choices) == [1.0, 0.0, 0.0, 1.0]
    assert reward.pop_stats() == {"reward/choice/no_answer": 1.0}


def test_choice_reward_needs_answer_key():
    with pytest.raises(ValueError, match="answerKey"):
        choice_reward([""], ["A"], answer=["A"])


# --- format ------------------------------------------------------------------------------------------


def test_boxed_format():
    texts = [r"so \boxed{1}", r"\boxed{1} or \boxed{2}", "1", r"\boxed{}"]
    assert boxed_format_reward(None, texts) == [1.0, 0.0, 0.0, 0.0]
    assert boxed_format_reward.__name__ == "boxed_format"


def test_tags_format():
    reward = make_tags_format_reward()
    texts = [
        "<think>a b</think>\n<answer>3</answer>",
        "<answer>3</answer>",
        "<think><think></think><answer>3</answer>",
    ]
    assert reward(None, texts) == [1.0, 0.0, 0.0]


def test_length_penalty_is_soft():
    reward = make_length_reward(10, margin=10)
    assert reward(None, ["a" * 10, "a" * 15, "a" * 40]) == [0.0, -0.5, -1.0]
    assert reward.pop_stats() == {"reward/length/over_budget": 2.0}
    assert make_length_reward(2, unit="words")(None, ["one two three four"]) == [-1.0]


def test_message_text():
    assert message_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert message_text([{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]) == "x"


# --- combine -----------------------------------------------------------------------------------------


def _none_for_second(prompts, completions, **kw):
    return [1.0, None]


def test_combined_reward_nansum_and_metrics():
    math = make_math_reward()
    combined = CombinedReward([math, boxed_format_reward, _none_for_second], weights=[1.0, 0.5, 2.0])
    total, per_func = combined([""] * 2, [r"\boxed{3}", "3"], answer=["3", r"\frac{"])
    assert per_func == {"math": [1.0, None], "boxed_format": [1.0, 0.0], "_none_for_second": [1.0, None]}
    assert total[0] == 1.0 + 0.5 + 2.0
    assert total[1] == 0.0  # boxed_format scored it; math and _none_for_second do not apply
    metrics = combined.metrics()
    assert metrics["reward/math/mean"] == 1.0
    assert metrics["reward/boxed_format/mean"] == 0.5
    assert metrics["reward/boxed_format/std"] == 0.5
    assert metrics["reward/math/none_frac"] == 0.5
    assert metrics["reward/math/gold_unparsable"] == 1.0  # collected from pop_stats
    assert metrics["reward/missing"] == 0.0
    assert combined.metrics() == {}  # popped


def test_combined_reward_all_none_is_missing_not_zero():
    combined = CombinedReward([lambda prompts, completions, **kw: [None, 0.5]])
    total = combined(["", ""], ["x", "y"]).total
    assert math.isnan(total[0]) and total[1] == 0.5
    metrics = combined.metrics()
    assert metrics["reward/missing"] == 1.0
    assert metrics["reward/mean"] == 0.5  # over the samples that have a reward


def _half_nan(prompts, completions, **kw):
    return [1.0, float("nan"), float("inf"), 0.0]


def test_nonfinite_reward_is_an_error_naming_the_function():
    with pytest.raises(
        NonFiniteRewardError,
        match=r"reward function '_half_nan' returned nan for completion 1 of 4 \(2 non-finite",
    ):
        CombinedReward([_half_nan])([""] * 4, ["a"] * 4)


def test_nonfinite_reward_skip_drops_the_sample_and_counts_it():
    combined = CombinedReward([_half_nan, boxed_format_reward], nonfinite="skip")
    total, per_func = combined([""] * 4, [r"\boxed{1}"] * 4)
    assert total[0] == 2.0 and total[3] == 1.0
    assert math.isnan(total[1]) and math.isnan(total[2])  # boxed_format scored them, but _half_nan failed
    assert per_func["_half_nan"] == [1.0, None, None, 0.0]
    metrics = combined.metrics()
    assert metrics["reward/_half_nan/nonfinite"] == 2.0
    assert metrics["reward/missing"] == 2.0
    assert metrics["reward/mean"] == 1.5


def test_reward_call_timeout_is_counted_and_missing():
    def slow(prompts, completions, **kw):
        time.sleep(3)
        return [1.0] * len(completions)

    combined = CombinedReward([slow, boxed_format_reward], timeout_s=0.2)
    start = time.monotonic()
    total = combined([""], ["x"]).total
    assert time.monotonic() - start < 2.0
    assert math.isnan(total[0])
    metrics = combined.metrics()
    assert metrics["reward/slow/timeouts"] == 1.0 and metrics["reward/missing"] == 1.0


def test_combined_reward_names_the_failing_function():
    def exploding(prompts, completions, **kw):
        raise KeyError("answer")

    with pytest.raises(RuntimeError, match="reward function 'exploding' failed"):
        CombinedReward([exploding])([""], ["x"])
    with pytest.raises(RuntimeError, match="'math' failed.*'answer' or 'solution'"):
        CombinedReward([make_math_reward()])([""], ["x"])


def test_combined_reward_checks_lengths_names_weights():
    with pytest.raises(RuntimeError, match="returned 1 values for 2"):
        CombinedReward([lambda prompts, completions, **kw: [1.0]])(["", ""], ["a", "b"])
    with pytest.raises(ValueError, match="repeated"):
        CombinedReward([make_math_reward(), make_math_reward()])
    with pytest.raises(ValueError, match="2 reward weights for 1"):
        CombinedReward([boxed_format_reward], weights=[1, 2])


def test_get_reward_funcs(tmp_path):
    funcs = get_reward_funcs(["math", "choice", "boxed_format", "tags_format", "length:100"])
    assert [f.__name__ for f in funcs] == ["math", "choice", "boxed_format", "tags_format", "length"]
    rubric = get_reward_funcs(["rubric:data/rubrics/math_explainer.yaml"])[0]  # found from the repo root
    assert rubric.__name__ == "math_explainer"
    assert get_reward_funcs([_none_for_second]) == [_none_for_second]
    with pytest.raises(ValueError, match="unknown reward 'maths'.*known rewards: math"):
        get_reward_funcs(["maths"])
    with pytest.raises(ValueError, match="needs a budget"):
        get_reward_funcs(["length"])


def test_rewards_are_finite_on_garbage():
    texts = ["", "}{", r"\boxed{\frac{1}{0}}", "9" * 400, r"\boxed{\sqrt{-1}}"]
    scores = math_reward([""] * len(texts), texts, answer=["1"] * len(texts))
    assert all(s is not None and math.isfinite(s) for s in scores)


def test_trl_extra_keyword_arguments_are_ignored():
    """TRL also passes completion_ids and trainer_state (not a list) to every reward function."""
    from align.rewards import make_rubric_reward

    rubric = make_rubric_reward(
        {"name": "r", "criteria": [{"name": "one", "rule": {"kind": "regex", "pattern": "1"}}]}
    )
    combined = CombinedReward([make_math_reward(), boxed_format_reward, choice_reward, rubric])
    total, per_func = combined(
        ["q", "q"],
        [r"\boxed{1}", "Answer: B"],
        answer=["1", "2"],
        answerKey=["A", "B"],
        completion_ids=[[1], [2]],
        trainer_state=object(),
    )
    assert per_func == {"math": [1.0, 0.0], "boxed_format": [1.0, 0.0], "choice": [0.0, 1.0], "r": [1.0, 0.0]}
    assert total == [3.0, 1.0]


# --- async reward functions ----------------------------------------------------------------------


async def slow_judge(prompts, completions, **kw):
    import asyncio

    await asyncio.sleep(0.5)
    return [float(len(c)) for c in completions]


async def other_slow_judge(prompts, completions, **kw):
    import asyncio

    await asyncio.sleep(0.5)
    return [1.0 for _ in completions]


def test_async_rewards_run_concurrently_in_order_with_sync_ones():
    combined = CombinedReward([boxed_format_reward, slow_judge, other_slow_judge])
    start = time.monotonic()
    total, per_func = combined(["", ""], [r"\boxed{1}", "ab"])
    assert time.monotonic() - start < 0.9  # two 0.5 s calls awaited together
    assert list(per_func) == ["boxed_format", "slow_judge", "other_slow_judge"]
    assert per_func["slow_judge"] == [9.0, 2.0] and total == [1.0 + 9.0 + 1.0, 0.0 + 2.0 + 1.0]


def test_async_reward_timeout_and_failure():
    combined = CombinedReward([slow_judge, boxed_format_reward], timeout_s=0.1)
    total = combined([""], ["x"]).total
    assert math.isnan(total[0]) and combined.metrics()["reward/slow_judge/timeouts"] == 1.0

    async def broken(prompts, completions, **kw):
        raise KeyError("answer")

    with pytest.raises(RuntimeError, match="reward function 'broken' failed: KeyError"):
        CombinedReward([broken])([""], ["x"])


def test_async_rewards_inside_a_running_event_loop():
    """A notebook runs an event loop in the caller's thread: the rewards are awaited in a thread of their own."""
    import asyncio

    async def main():
        return CombinedReward([other_slow_judge])([""], ["x"]).total

    assert asyncio.run(main()) == [1.0]
