r"""A math environment with a calculator tool: multi-turn, tool-using episodes scored by the math verifier.

    env = gymnasium.make("align/MathTools-v0")     # after register_math_tools(); the shipped data/math
    obs, info = env.reset(seed=0)                  # the problem, info["role"] == "user"
    obs, reward, terminated, truncated, info = env.step(model_text)

The system prompt (`env.system_prompt`) says the model may call `calculate` in the Hermes format and must
end with its final answer in `\boxed{}`; `env.tools` is `[calculate]`, for a chat template's `tools=`. Each
step reads one assistant message:

- a final `\boxed{}` answer (outside any tool call) ends the episode with the math verifier's reward
  (`align.rewards.math`, against the row's gold answer): 1.0 correct, else 0.0;
- otherwise tool calls are run and their results are the observation (info["role"] == "tool", one result
  per call in info["tool_results"], joined by blank lines in the observation), reward 0;
- otherwise (neither) a short reminder is the observation (role "user"), the reward is `-invalid_penalty`
  and the turn is counted in info["invalid_actions"].

After `max_turns` assistant messages without a final answer the episode is truncated. Each step's `info`
has `success` (the final reward was 1), `turns` (messages read so far), and this step's counts:
`tool_calls`, `tool_errors` (calls answered with an error) and `invalid_action` (neither a call nor an
answer), so that summing them over an episode's steps gives its totals, as for `TextEnv`'s
`invalid_action`. The episode's totals so far are in `info["tools"]` (`ToolStats.as_metrics()`:
`tools/calls`, `tools/errors`, `tools/timeouts`, `tools/invalid`) and `info["invalid_actions"]`.

`gymnasium.make` wraps the environment: read `system_prompt` and `tools` from `env.unwrapped`.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from align.envs.tools import ToolStats, calculate, parse_tool_calls, run_tool_call, tool_schemas
from align.rewards.math import MathReward, extract_boxed, make_math_reward

__all__ = ["ENV_ID", "MathToolEnv", "SYSTEM_PROMPT", "register_math_tools"]

ENV_ID = "align/MathTools-v0"

SYSTEM_PROMPT = (
    "You are a careful math assistant. Solve the problem step by step. You may use the calculator tool "
    "`calculate` for exact arithmetic: write a call as\n"
    '<tool_call>\n{"name": "calculate", "arguments": {"expression": "(3 + 4) * 12 / 5"}}\n</tool_call>\n'
    "and wait for its result. When you are done, give your final answer within \\boxed{}."
)
"""The default system prompt: the tool, its call format, and the final-answer format."""

REMINDER = (
    "Please either call the calculator with <tool_call>{...}</tool_call> or give your final answer within "
    "\\boxed{}."
)
"""The observation after a message with neither a tool call nor a final answer."""

TEXT_CHARSET = string.printable + "≈×÷−·–—’“”…°πθ√≤≥≠∞"
"""Characters of the text spaces (gymnasium's `spaces.Text` needs a finite set; a model's text outside it
only makes `space.contains` false, which nothing here relies on)."""

_MAX_TEXT = 1 << 16
_TOOL_BLOCK_END = "</tool_call>"


def _load_rows(dataset: Any, split: str) -> Sequence[dict]:
    """Rows from a path or hub name (the project's math loader), None (the shipped data/math), or a
    sequence of dicts / a `datasets.Dataset` as given."""
    if dataset is None or isinstance(dataset, (str, Path)):
        from align.data import load_math_dataset

        return load_math_dataset(dataset, split)
    if len(dataset) == 0:
        raise ValueError("the dataset of the math tool environment is empty")
    return dataset


def _problem_text(row: dict) -> str:
    """The problem of a row: its `problem` or `question`, else the last user turn of its `prompt`."""
    for key in ("problem", "question"):
        if row.get(key):
            return str(row[key]).strip()
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return prompt.strip()
    if isinstance(prompt, list):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        if users:
            return str(users[-1]).strip()
    raise ValueError(f"a math row needs a 'problem', 'question' or 'prompt'; got columns {sorted(row)}")


def _strip_tool_calls(text: str) -> str:
    """`text` without its tool-call blocks, so that a \\boxed{} inside a call's arguments is no answer."""
    out, rest = [], text
    while "<tool_call>" in rest:
        before, _, after = rest.partition("<tool_call>")
        out.append(before)
        rest = after.partition(_TOOL_BLOCK_END)[2] if _TOOL_BLOCK_END in after else ""
    out.append(rest)
    return "".join(out)


class MathToolEnv(gym.Env):
    """Math problems with a calculator tool, as a text environment (see the module docstring).

    Args:
        dataset: rows with `problem` / `question` / `prompt` and `answer` (a sequence or `datasets.Dataset`),
            or a path / hub name for `align.data.load_math_dataset`; None reads the shipped `data/math`.
        split: the split read from a path or name.
        max_turns: assistant messages per episode before truncation.
        invalid_penalty: subtracted from the reward of a message with neither a tool call nor an answer.
        tool_timeout_s: the time limit of one tool call.
        reward: the verifier (`make_math_reward()`, checks in a worker process, by default).
        tools: the tools offered (`[calculate]`).
        system_prompt: the system prompt (`SYSTEM_PROMPT`).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        dataset: Any = None,
        split: str = "train",
        *,
        max_turns: int = 4,
        invalid_penalty: float = 0.1,
        tool_timeout_s: float = 2.0,
        reward: MathReward | None = None,
        tools: Sequence[Callable] | None = None,
        system_prompt: str | None = SYSTEM_PROMPT,
    ):
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        self.rows = _load_rows(dataset, split)
        self.max_turns = max_turns
        self.invalid_penalty = invalid_penalty
        self.tool_timeout_s = tool_timeout_s
        self.reward_fn = reward if reward is not None else make_math_reward()
        self.tools: list[Callable] = list(tools) if tools is not None else [calculate]
        tool_schemas(self.tools)  # an undocumented tool fails here, not in the middle of a rollout
        self.system_prompt = system_prompt
        self.observation_space = spaces.Text(_MAX_TEXT, min_length=0, charset=TEXT_CHARSET)
        self.action_space = spaces.Text(_MAX_TEXT, min_length=0, charset=TEXT_CHARSET)
        self.row_index: int | None = None
        self._new_episode()

    def _new_episode(self) -> None:
        self.turns = 0
        self.invalid_actions = 0
        self.stats = ToolStats()
        self.done = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        """Start an episode on `options["row"]`, else on a row drawn from the seeded generator (the same
        seed, the same row); the observation is the problem, for a user message."""
        super().reset(seed=seed)
        row = (options or {}).get("row")
        if row is None:
            row = int(self.np_random.integers(len(self.rows)))
        if not 0 <= row < len(self.rows):
            raise IndexError(f"row {row} is out of range for a dataset of {len(self.rows)} rows")
        self.row_index = row
        self.row = self.rows[row]
        self.problem = _problem_text(self.row)
        self._new_episode()
        return self.problem, {"role": "user", "row": row, "answer": self.row.get("answer"), **self._counts()}

    def _counts(self, before: ToolStats | None = None, invalid: bool = False) -> dict[str, Any]:
        """This step's counts (against the episode's stats `before` it) and the episode's totals."""
        before = before or self.stats
        return {
            "turns": self.turns,
            "tool_calls": self.stats.calls - before.calls,
            "tool_errors": self.stats.failed - before.failed,
            "invalid_action": invalid,
            "invalid_actions": self.invalid_actions,
            "tools": self.stats.as_metrics(),
        }

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """Read one assistant message: score a final answer, run tool calls, or remind (module docstring)."""
        if self.row_index is None or self.done:
            raise RuntimeError("call reset() before step() (and after an episode ends)")
        self.turns += 1
        if extract_boxed(_strip_tool_calls(action)) is not None:
            return self._finish(action)
        calls, before = parse_tool_calls(action), replace(self.stats)
        if calls:
            results = [run_tool_call(c, self.tools, self.tool_timeout_s, self.stats) for c in calls]
            obs, reward, info = "\n\n".join(results), 0.0, {"role": "tool", "tool_results": results}
        else:
            self.invalid_actions += 1
            obs, reward, info = REMINDER, -self.invalid_penalty, {"role": "user"}
        truncated = self.turns >= self.max_turns
        self.done = truncated
        return obs, reward, False, truncated, {**info, "success": False, **self._counts(before, not calls)}

    def _finish(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """The last step: the verifier's score of the answer. A gold it cannot read gives a NaN reward: the
        episode has no reward (trainers leave it out of its group's baseline and the loss), never 0."""
        score = self.reward_fn.score(action, answer=self.row.get("answer"), solution=self.row.get("solution"))
        reward = float(score) if score is not None else float("nan")
        self.done = True
        info = {"role": "user", "success": reward == 1.0, "verifier_score": score, **self._counts()}
        return "", reward, True, False, info


TEST_ENV_ID = "align/MathToolsTest-v0"
"""The same environment on the held-out split (`split="test"`): what a run in `ENV_ID` is evaluated on."""


def register_math_tools() -> None:
    """Register `align/MathTools-v0` (training problems) and `align/MathToolsTest-v0` (the held-out split)
    with gymnasium (idempotent); `gym.make` kwargs go to `MathToolEnv`."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="align.envs.math_tools:MathToolEnv")
    if TEST_ENV_ID not in gym.registry:
        gym.register(
            id=TEST_ENV_ID, entry_point="align.envs.math_tools:MathToolEnv", kwargs={"split": "test"}
        )
