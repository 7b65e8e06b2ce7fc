r"""Tools for language-model environments: schemas, tool calls parsed from text, bounded runs, and a calculator.

A tool is a typed Python function with a Google-style docstring, TRL's `tools=` contract: its JSON schema
comes from the signature and docstring (`transformers.utils.get_json_schema`), so the same function serves
our environments, TRL's trainers and a chat template's `tools=` argument.

The model calls tools in the Hermes / Qwen2.5 format, any number per message:

    <tool_call>
    {"name": "calculate", "arguments": {"expression": "1/3 + 1/6"}}
    </tool_call>

`parse_tool_calls` finds them; `run_tool_call` checks the call against the tool's schema and runs it under a
time limit that holds in any thread (`align.rewards.isolation`), returning the text of the tool message.
Nothing the model writes reaches the trainer as an exception: a malformed call, an unknown tool, bad
arguments, a tool that raises and a tool that overruns each become a one-line "Error: ..." observation and
are counted in `ToolStats` (logged as `tools/calls`, `tools/errors`, `tools/timeouts`, `tools/invalid`).

Chat templates: `apply_chat_template_with_tools` passes `tools=` to a template that renders them (Qwen2.5,
Llama 3.1, ...) and otherwise writes the Hermes tools block into the system prompt and the tool results as
`<tool_response>` user turns, which is what Qwen2.5's template produces (SmolLM2's template ignores tools).

`calculate` is exact arithmetic over a whitelist of `ast` nodes with `fractions.Fraction`; its own limits
(length, exponent, digits) bound every operation, so the in-process timeout is only a second guard.
"""

from __future__ import annotations

import ast
import decimal
import functools
import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Literal

from align.rewards.isolation import IsolatedCaller, IsolatedCallError, RewardTimeout, run_with_timeout

__all__ = [
    "ToolCall",
    "ToolCallError",
    "ToolError",
    "ToolStats",
    "apply_chat_template_with_tools",
    "calculate",
    "hermes_messages",
    "hermes_tools_prompt",
    "parse_tool_calls",
    "run_tool_call",
    "run_tool_calls",
    "template_supports_tools",
    "tool_schema",
    "tool_schemas",
    "tools_by_name",
]

MAX_RESULT_CHARS = 2000
"""A tool result longer than this is cut (with a note), so that one call cannot flood the context."""


class ToolError(ValueError):
    """A tool refusing its input; the message (one line) is what the model reads."""


@dataclass
class ToolCall:
    """One parsed tool call: the tool's name and its arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass
class ToolCallError:
    """A `<tool_call>` block that is not a valid call: its raw text and what is wrong with it."""

    text: str
    message: str


@dataclass
class ToolStats:
    """Counts of tool calls: `calls` (every `<tool_call>` block), `invalid` (malformed JSON, unknown tool or
    arguments not matching the schema), `errors` (the tool raised or refused its input) and `timeouts`."""

    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    invalid: int = 0

    @property
    def failed(self) -> int:
        """Calls that returned an error observation instead of a result."""
        return self.errors + self.timeouts + self.invalid

    def merge(self, other: ToolStats) -> ToolStats:
        """Add `other`'s counts to these (aggregating episodes); returns self."""
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)
        return self

    def as_metrics(self, prefix: str = "tools/") -> dict[str, int]:
        """The counts under metric names: `tools/calls`, `tools/errors`, `tools/timeouts`, `tools/invalid`."""
        return {f"{prefix}{key}": value for key, value in asdict(self).items()}


# Schemas.


@functools.lru_cache(maxsize=256)
def tool_schema(tool: Callable) -> dict[str, Any]:
    """The JSON schema of a documented, typed function (`transformers.utils.get_json_schema`; it raises
    when the docstring lacks a description or an argument's line, since the model would read neither)."""
    from transformers.utils import get_json_schema  # lazy: a tool worker process need not import transformers

    return get_json_schema(tool)


def tool_schemas(tools: Sequence[Callable] | Mapping[str, Callable]) -> list[dict[str, Any]]:
    """The schemas of `tools`, in order."""
    return [tool_schema(fn) for fn in tools_by_name(tools).values()]


def tools_by_name(tools: Sequence[Callable] | Mapping[str, Callable]) -> dict[str, Callable]:
    """`tools` as {name: function}, a name being the function's `__name__` (what its schema calls it)."""
    if isinstance(tools, Mapping):
        return dict(tools)
    named = {fn.__name__: fn for fn in tools}
    if len(named) != len(tools):
        raise ValueError(f"two tools share a name: {[fn.__name__ for fn in tools]}")
    return named


# Parsing tool calls.

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


def parse_tool_calls(text: str) -> list[ToolCall | ToolCallError]:
    """Every `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in `text`, in order; whitespace
    around the JSON is ignored, and a last block without its closing tag (a generation stopped on the stop
    string `</tool_call>`) is read too. `arguments` may also be a JSON-encoded object (OpenAI's form).
    A block that is not such an object becomes a `ToolCallError`."""
    calls: list[ToolCall | ToolCallError] = []
    for match in _TOOL_CALL_RE.finditer(text):
        raw = match.group(1).strip()
        calls.append(_parse_one(raw))
    return calls


def _parse_one(raw: str) -> ToolCall | ToolCallError:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        return ToolCallError(raw, f"the tool call is not valid JSON ({e.msg} at character {e.pos})")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return ToolCallError(raw, 'a tool call must be a JSON object {"name": ..., "arguments": {...}}')
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return ToolCallError(raw, '"arguments" must be a JSON object')
    if not isinstance(arguments, dict):
        return ToolCallError(raw, '"arguments" must be a JSON object')
    return ToolCall(data["name"], arguments)


# Checking arguments against a schema.

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def check_arguments(schema: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """What is wrong with `arguments` for a tool's schema (missing, unexpected, wrong type, not one of the
    choices), or None. Top-level checks only: the tool itself handles the insides of arrays and objects."""
    params = schema["function"].get("parameters", {})
    properties = params.get("properties", {})
    missing = [name for name in params.get("required", []) if name not in arguments]
    if missing:
        return f"missing argument(s) {missing}"
    extra = sorted(set(arguments) - set(properties))
    if extra:
        return f"unexpected argument(s) {extra}; expected {sorted(properties)}"
    for name, value in arguments.items():
        spec = properties[name]
        types = spec.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        if spec.get("nullable"):
            types.append("null")
        if types and not any(_JSON_TYPES.get(t, lambda v: True)(value) for t in types):
            return f"argument {name!r} must be of type {' or '.join(types)}, got {type(value).__name__}"
        if "enum" in spec and value not in spec["enum"]:
            return f"argument {name!r} must be one of {spec['enum']}"
    return None


# Running tool calls.


class _KeywordCall:
    """`fn(**kwargs)` as a picklable one-argument callable, for a tool run in a worker process."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, kwargs: dict[str, Any]) -> Any:
        return self.fn(**kwargs)


_WORKERS: dict[Callable, IsolatedCaller] = {}


def _invoke(fn: Callable, arguments: dict[str, Any], timeout_s: float | None, isolation: str) -> Any:
    if isolation == "process":  # one worker per tool; an overrun kills it, whatever it was executing
        worker = _WORKERS.get(fn) or _WORKERS.setdefault(fn, IsolatedCaller(_KeywordCall(fn)))
        return worker(arguments, timeout_s=timeout_s)
    return run_with_timeout(lambda: fn(**arguments), timeout_s)


def _result_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f" ... [cut: {len(text)} characters in all]"
    return text


def _one_line(error: BaseException | str) -> str:
    message = error if isinstance(error, str) else (str(error) or type(error).__name__)
    return " ".join(message.split())


def run_tool_call(
    call: ToolCall | ToolCallError,
    tools: Sequence[Callable] | Mapping[str, Callable],
    timeout_s: float | None = 5.0,
    stats: ToolStats | None = None,
    *,
    isolation: Literal["inline", "process"] = "inline",
) -> str:
    """Run one parsed tool call and return the text of its tool message (role "tool"): the result, or one
    line starting with "Error:" for a malformed call, an unknown tool (the message lists the tools),
    arguments that do not match the schema, a tool that raised, or one that ran past `timeout_s`.
    Counts go to `stats`.

    `isolation="inline"` bounds Python code in this process (a signal in the main thread, a watchdog
    thread elsewhere, which stops waiting but cannot stop the tool): enough for a tool whose own limits
    bound its work, such as `calculate`. `"process"` runs the tool in a worker process killed on overrun
    (the tool must be importable by reference)."""
    stats = stats if stats is not None else ToolStats()
    stats.calls += 1
    if isinstance(call, ToolCallError):
        stats.invalid += 1
        return f"Error: {call.message}"
    named = tools_by_name(tools)
    fn = named.get(call.name)
    if fn is None:
        stats.invalid += 1
        return f"Error: unknown tool {call.name!r}; available tools: {', '.join(named) or 'none'}"
    problem = check_arguments(tool_schema(fn), call.arguments)
    if problem is not None:
        stats.invalid += 1
        return f"Error: {call.name}: {problem}"
    try:
        return _result_text(_invoke(fn, call.arguments, timeout_s, isolation))
    except RewardTimeout:
        stats.timeouts += 1
        return f"Error: {call.name} timed out after {timeout_s:g} s"
    except IsolatedCallError as e:  # the tool raised in the worker (message "Type: text") or the worker died
        stats.errors += 1
        return f"Error: {call.name}: {_one_line(str(e).removeprefix(ToolError.__name__ + ': '))}"
    except Exception as e:  # a tool's failure is the model's observation, never the trainer's crash
        stats.errors += 1
        return f"Error: {call.name}: {_one_line(e)}"


def run_tool_calls(
    text: str,
    tools: Sequence[Callable] | Mapping[str, Callable],
    timeout_s: float | None = 5.0,
    stats: ToolStats | None = None,
    **options: Any,
) -> list[str]:
    """The tool messages for every tool call in `text` (`parse_tool_calls` then `run_tool_call`)."""
    return [run_tool_call(call, tools, timeout_s, stats, **options) for call in parse_tool_calls(text)]


# Chat templates.

_HERMES_TOOLS = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{schemas}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def hermes_tools_prompt(
    tools: Sequence[Callable] | Mapping[str, Callable], system_prompt: str | None = None
) -> str:
    """`system_prompt` followed by the Hermes tools block (the schemas, one JSON line each, and the call
    format), as Qwen2.5's chat template writes it."""
    schemas = "\n".join(json.dumps(schema, ensure_ascii=False) for schema in tool_schemas(tools))
    block = _HERMES_TOOLS.format(schemas=schemas)
    return f"{system_prompt}\n\n{block}" if system_prompt else block


_SUPPORT_CACHE: dict[str, bool] = {}


def _probe_tool(x: int) -> int:
    """Probe.

    Args:
        x: A number.
    """
    return x


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders `tools=` (checked by rendering a probe conversation
    with and without a tool: a template that ignores tools renders both the same)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return False
    if template not in _SUPPORT_CACHE:
        messages = [{"role": "user", "content": "hi"}]
        plain = tokenizer.apply_chat_template(messages, tokenize=False)
        try:
            with_tools = tokenizer.apply_chat_template(messages, tools=[_probe_tool], tokenize=False)
        except Exception:  # a template that chokes on tools does not support them
            with_tools = plain
        _SUPPORT_CACHE[template] = with_tools != plain
    return _SUPPORT_CACHE[template]


def hermes_messages(
    messages: Sequence[dict[str, Any]], tools: Sequence[Callable] | Mapping[str, Callable]
) -> list[dict[str, Any]]:
    """`messages` rewritten for a template without tool support: the tools block added to the system
    message (one is added if there is none), and each run of consecutive "tool" messages made one user
    message of `<tool_response>` blocks, as Qwen2.5's template renders them."""
    out: list[dict[str, Any]] = []
    rest = list(messages)
    system = rest.pop(0)["content"] if rest and rest[0]["role"] == "system" else None
    out.append({"role": "system", "content": hermes_tools_prompt(tools, system)})
    for message in rest:
        if message["role"] != "tool":
            out.append(dict(message))
            continue
        response = f"<tool_response>\n{message['content']}\n</tool_response>"
        if out[-1].get("_tool_turn"):
            out[-1]["content"] += "\n" + response
        else:
            out.append({"role": "user", "content": response, "_tool_turn": True})
    return [{k: v for k, v in m.items() if k != "_tool_turn"} for m in out]


def apply_chat_template_with_tools(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[Callable] | Mapping[str, Callable],
    **kwargs: Any,
) -> Any:
    """`tokenizer.apply_chat_template` with the tools shown to the model: through `tools=` when the
    template renders them, else in the Hermes format (`hermes_messages`). `kwargs` go to the template."""
    if not tools:
        return tokenizer.apply_chat_template(list(messages), **kwargs)
    if template_supports_tools(tokenizer):
        return tokenizer.apply_chat_template(list(messages), tools=tool_schemas(tools), **kwargs)
    return tokenizer.apply_chat_template(hermes_messages(messages, tools), **kwargs)


# The calculator.

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_DIGITS = 300
"""Limits of `calculate`: the expression's length, |exponent| of `**`, and the digits of every numerator and
denominator along the way (which bounds the cost of each operation, so a result cannot take long)."""

_BINARY: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_LOG10_2 = math.log10(2)


def _digits(n: int) -> int:
    """An upper bound on the decimal digits of n, without converting it to a string."""
    return int(abs(n).bit_length() * _LOG10_2) + 1


def _bounded(x: Fraction) -> Fraction:
    if max(_digits(x.numerator), _digits(x.denominator)) > MAX_DIGITS:
        raise ToolError(f"a number in the calculation has more than {MAX_DIGITS} digits")
    return x


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ToolError("only integer exponents are supported (the calculator is exact)")
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"the exponent {exponent} is too large (at most {MAX_EXPONENT} in absolute value)")
    size = max(_digits(base.numerator), _digits(base.denominator))
    if (size - 1) * abs(int(exponent)) > MAX_DIGITS:  # checked before computing, not after
        raise ToolError(f"the result would have more than {MAX_DIGITS} digits")
    if base == 0 and exponent < 0:
        raise ToolError("division by zero")
    return base ** int(exponent)


def _number(value: Any) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError(f"only numbers are allowed, not {type(value).__name__} literals")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the number is too large")
    # str() of a float is its shortest repr, so 0.1 is 1/10, not the binary 3602879701896397/36028797018963968
    return Fraction(value) if isinstance(value, int) else Fraction(str(value))


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        return _bounded(_number(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _bounded(_power(left, right))
        op = _BINARY.get(type(node.op))
        if op is None:
            raise ToolError(f"the operator {type(node.op).__name__} is not allowed; use + - * / // % **")
        if right == 0 and isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)):
            raise ToolError("division by zero")
        return _bounded(op(left, right))
    raise ToolError(
        f"{type(node).__name__} is not allowed: only numbers, + - * / // % **, unary +/- and parentheses"
    )


def _format(x: Fraction) -> str:
    if x.denominator == 1:
        return str(x.numerator)
    with decimal.localcontext() as ctx:
        ctx.prec = 12
        approx = decimal.Decimal(x.numerator) / decimal.Decimal(x.denominator)
    return f"{x.numerator}/{x.denominator} (≈ {approx})"


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Numbers (integers and decimals), + - * / // % ** (^ also means power), unary + and -, and parentheses.
    Results are exact: integers as integers, other values as a fraction a/b with its decimal value.

    Args:
        expression: The arithmetic expression, for example "(3 + 4) * 12 / 5".
    """
    if not isinstance(expression, str):
        raise ToolError("the expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(
            f"the expression is too long ({len(expression)} characters, at most {MAX_EXPRESSION_CHARS})"
        )
    # Math notation models write: ^ for power, × and ÷.
    text = expression.replace("^", "**").replace("×", "*").replace("÷", "/").strip()
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise ToolError(f"cannot parse the expression {expression.strip()[:60]!r}") from None
    try:
        return _format(_evaluate(tree))
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except RecursionError:
        raise ToolError("the expression is nested too deeply") from None
