"""Tools (schemas, parsing, bounded runs, counters), the calculator's exact results and refusals, and the
math tool environment on scripted episodes."""

from __future__ import annotations

import time

import gymnasium as gym
import pytest

from align.envs.math_tools import ENV_ID, SYSTEM_PROMPT, MathToolEnv, register_math_tools
from align.envs.tools import (
    ToolCall,
    ToolCallError,
    ToolError,
    ToolStats,
    apply_chat_template_with_tools,
    calculate,
    hermes_messages,
    parse_tool_calls,
    run_tool_call,
    run_tool_calls,
    template_supports_tools,
    tool_schema,
)
from align.rewards.math import make_math_reward


def add(a: int, b: float = 1.0) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def fail(x: int) -> int:
    """Always fails.

    Args:
        x: Ignored.
    """
    raise RuntimeError("boom\nsecond line")


def nap(seconds: float) -> str:
    """Sleep.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "awake"


def call(name: str, **arguments) -> str:
    import json

    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


# Schemas and parsing.


def test_schema_from_signature_and_docstring():
    schema = tool_schema(add)
    assert schema["function"]["name"] == "add"
    assert schema["function"]["description"] == "Add two numbers."
    params = schema["function"]["parameters"]
    assert params["properties"]["a"] == {"type": "integer", "description": "The first number."}
    assert params["properties"]["b"]["type"] == "number"
    assert params["required"] == ["a"]


def test_parse_one_several_malformed_none():
    assert parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>') == [
        ToolCall("add", {"a": 1})
    ]
    text = 'x <tool_call>\n  {"name": "add", "arguments": {"a": 1}}\n</tool_call> y\n' + call(
        "nap", seconds=0
    )
    assert [c.name for c in parse_tool_calls(text)] == ["add", "nap"]
    bad = parse_tool_calls('<tool_call>{"name": "add", "arguments": {a: 1}}</tool_call>')
    assert len(bad) == 1 and isinstance(bad[0], ToolCallError) and "not valid JSON" in bad[0].message
    assert isinstance(parse_tool_calls('<tool_call>["add"]</tool_call>')[0], ToolCallError)
    assert parse_tool_calls("no calls here, \\boxed{3}") == []
    # OpenAI's string-encoded arguments, and a last block cut at the stop string </tool_call>
    assert parse_tool_calls('<tool_call>{"name": "add", "arguments": "{\\"a\\": 2}"}') == [
        ToolCall("add", {"a": 2})
    ]


# Running calls.


def test_run_unknown_tool_and_bad_arguments_are_invalid():
    stats = ToolStats()
    out = run_tool_call(ToolCall("sub", {}), [add, nap], stats=stats)
    assert out.startswith("Error:") and "add, nap" in out
    assert "missing" in run_tool_call(ToolCall("add", {}), [add], stats=stats)
    assert "unexpected" in run_tool_call(ToolCall("add", {"a": 1, "c": 2}), [add], stats=stats)
    assert "must be of type integer" in run_tool_call(ToolCall("add", {"a": "1"}), [add], stats=stats)
    assert "must be of type integer" in run_tool_call(ToolCall("add", {"a": True}), [add], stats=stats)
    assert run_tool_call(ToolCall("add", {"a": 1, "b": 2}), [add], stats=stats) == "3"
    assert stats == ToolStats(calls=6, errors=0, timeouts=0, invalid=5)


def test_run_tool_raising_and_timing_out():
    stats = ToolStats()
    out = run_tool_call(ToolCall("fail", {"x": 1}), [fail], stats=stats)
    assert out == "Error: fail: boom second line"  # one line
    start = time.monotonic()
    out = run_tool_call(ToolCall("nap", {"seconds": 5.0}), [nap], timeout_s=0.2, stats=stats)
    assert time.monotonic() - start < 1.0
    assert out == "Error: nap timed out after 0.2 s"
    assert (
        run_tool_calls(call("nap", seconds=0) + "<tool_call>{oops</tool_call>", [nap], stats=stats)[0]
        == "awake"
    )
    assert stats == ToolStats(calls=4, errors=1, timeouts=1, invalid=1)
    assert stats.failed == 3
    assert stats.as_metrics() == {
        "tools/calls": 4,
        "tools/errors": 1,
        "tools/timeouts": 1,
        "tools/invalid": 1,
    }


def test_run_in_a_thread_times_out_too():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        start = time.monotonic()
        out = pool.submit(run_tool_call, ToolCall("nap", {"seconds": 3.0}), [nap], 0.2).result()
    assert out.startswith("Error: nap timed out") and time.monotonic() - start < 1.0


# The calculator.


@pytest.mark.parametrize(
    "expression, result",
    [
        ("1/3 + 1/6", "1/2 (≈ 0.5)"),
        ("2**10", "1024"),
        ("2^10", "1024"),
        ("7 // 2", "3"),
        ("-3 % 5", "2"),
        ("0.1 + 0.2", "3/10 (≈ 0.3)"),
        ("(3 + 4) * 12 / 5", "84/5 (≈ 16.8)"),
        ("-(2 ** -2)", "-1/4 (≈ -0.25)"),
        ("10**100", "1" + "0" * 100),
    ],
)
def test_calculator_exact(expression, result):
    assert calculate(expression) == result


@pytest.mark.parametrize(
    "expression, message",
    [
        ("__import__('os')", "Call is not allowed"),
        ("9**9**9", "exponent"),
        ("1+" * 5000, "too long"),
        ("(1).__class__", "Attribute is not allowed"),
        ("open('x')", "Call is not allowed"),
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("99**99 * 99**99 * 99**99 * 99**99", "digits"),
        ("2 ** 0.5", "integer exponents"),
        ("'a' * 3", "not str"),
        ("[i for i in (1, 2)]", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("1e999", "too large"),
        ("1 +", "cannot parse"),
    ],
)
def test_calculator_refuses_hostile_inputs_quickly(expression, message):
    start = time.monotonic()
    with pytest.raises(ToolError, match=message):
        calculate(expression)
    assert time.monotonic() - start < 1.0
    # through run_tool_call: a one-line error observation, counted, and still quick
    stats = ToolStats()
    out = run_tool_call(ToolCall("calculate", {"expression": expression}), [calculate], 1.0, stats)
    assert out.startswith("Error: calculate:") and "\n" not in out
    assert stats.errors == 1 and time.monotonic() - start < 1.0


# Chat templates.


class _PlainTokenizer:
    """A template that ignores tools, like SmolLM2's: renders role and content only."""

    chat_template = "plain"

    def apply_chat_template(self, messages, tools=None, tokenize=False, **kwargs):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)


def test_template_without_tools_gets_the_hermes_block():
    tok = _PlainTokenizer()
    assert not template_supports_tools(tok)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": call("calculate", expression="2+2")},
        {"role": "tool", "content": "4"},
    ]
    rewritten = hermes_messages(messages, [calculate])
    assert rewritten[0]["content"].startswith("Be brief.\n\n# Tools")
    assert '"name": "calculate"' in rewritten[0]["content"] and "<tool_call>" in rewritten[0]["content"]
    assert rewritten[-1] == {"role": "user", "content": "<tool_response>\n4\n</tool_response>"}
    assert "<tools>" in apply_chat_template_with_tools(tok, messages, [calculate])


def test_template_with_tools_gets_them_through_the_template():
    class ToolTokenizer(_PlainTokenizer):
        chat_template = "with tools"

        def apply_chat_template(self, messages, tools=None, tokenize=False, **kwargs):
            names = [t["function"]["name"] if isinstance(t, dict) else t.__name__ for t in tools or []]
            return super().apply_chat_template(messages) + "".join(f"[{n}]" for n in names)

    tok = ToolTokenizer()
    assert template_supports_tools(tok)
    assert apply_chat_template_with_tools(tok, [{"role": "user", "content": "hi"}], [calculate]) == (
        "<user>hi[calculate]"
    )


def test_smollm2_template_ignores_tools_so_they_go_into_the_system_prompt(tiny_tokenizer):
    assert not template_supports_tools(tiny_tokenizer)
    messages = [{"role": "user", "content": "2+2?"}, {"role": "tool", "content": "4"}]
    text = apply_chat_template_with_tools(tiny_tokenizer, messages, [calculate], tokenize=False)
    assert text.startswith("<|im_start|>system\n# Tools") and '"name": "calculate"' in text
    assert "<|im_start|>user\n<tool_response>\n4\n</tool_response><|im_end|>" in text


# The math tool environment.

ROWS = [
    {"problem": "What is 12 * 34?", "answer": "408"},
    {"question": "What is 1/3 + 1/6?", "answer": "1/2"},
]


@pytest.fixture(scope="module")
def reward():
    return make_math_reward(isolation="inline")


def test_episode_tool_call_then_correct_answer(reward):
    env = MathToolEnv(ROWS, reward=reward)
    obs, info = env.reset(options={"row": 0})
    assert obs == "What is 12 * 34?" and info["role"] == "user" and env.system_prompt == SYSTEM_PROMPT
    obs, r, terminated, truncated, info = env.step("Let me check. " + call("calculate", expression="12*34"))
    assert (obs, r, terminated, truncated, info["role"]) == ("408", 0.0, False, False, "tool")
    obs, r, terminated, truncated, info = env.step("So the answer is \\boxed{408}.")
    assert r == 1.0 and terminated and not truncated
    assert info["success"] is True and info["turns"] == 2
    assert info["tool_calls"] == 0 and info["tools"]["tools/calls"] == 1  # this step's count, the episode's


def test_wrong_answer_invalid_turns_and_tool_errors(reward):
    env = MathToolEnv(ROWS, reward=reward, invalid_penalty=0.25)
    env.reset(options={"row": 1})
    obs, r, _, _, info = env.step("I think about it.")
    assert r == -0.25 and info["role"] == "user" and "boxed" in obs
    assert info["invalid_action"] is True and info["invalid_actions"] == 1
    obs, r, _, _, info = env.step(call("calculate", expression="__import__('os')") + call("calculate"))
    assert obs.startswith("Error:") and info["invalid_action"] is False
    assert (info["tool_calls"], info["tool_errors"]) == (2, 2)
    assert info["tools"] == {"tools/calls": 2, "tools/errors": 1, "tools/timeouts": 0, "tools/invalid": 1}
    _, r, terminated, _, info = env.step("\\boxed{1/3}")
    assert r == 0.0 and terminated and info["success"] is False
    with pytest.raises(RuntimeError, match="reset"):
        env.step("\\boxed{1/2}")


def test_boxed_inside_a_tool_call_is_not_an_answer(reward):
    env = MathToolEnv(ROWS, reward=reward)
    env.reset(options={"row": 0})
    _, _, terminated, _, info = env.step(call("calculate", expression="\\boxed{408}"))
    assert not terminated and info["role"] == "tool" and info["tool_errors"] == 1


def test_max_turns_truncates(reward):
    env = MathToolEnv(ROWS, reward=reward, max_turns=2)
    env.reset(seed=3)
    _, _, terminated, truncated, _ = env.step(call("calculate", expression="1+1"))
    assert not terminated and not truncated
    _, _, terminated, truncated, info = env.step(call("calculate", expression="2+2"))
    assert not terminated and truncated and info["turns"] == 2 and info["tools"]["tools/calls"] == 2
    with pytest.raises(RuntimeError, match="reset"):
        env.step("\\boxed{4}")


def test_seed_picks_the_row_deterministically(reward):
    env = MathToolEnv([{"problem": f"p{i}", "answer": str(i)} for i in range(50)], reward=reward)
    picks = [env.reset(seed=s)[1]["row"] for s in (7, 8, 7)]
    assert picks[0] == picks[2]
    with pytest.raises(IndexError):
        env.reset(options={"row": 50})


def test_gymnasium_make_on_the_shipped_data():
    register_math_tools()
    register_math_tools()  # idempotent
    env = gym.make(ENV_ID, max_turns=3, reward=make_math_reward(isolation="inline"))
    obs, info = env.reset(seed=0)
    assert isinstance(obs, str) and obs and info["role"] == "user" and info["answer"]
    _, r, terminated, _, info = env.step(f"\\boxed{{{info['answer']}}}")
    assert r == 1.0 and terminated and info["success"]
    env.close()
