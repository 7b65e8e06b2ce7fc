r"""Reward functions for RL on language models.

The contract (TRL's, so TRL reward functions work here and ours in TRL)
----------------------------------------------------------------------
A reward function is a plain callable::

    reward(prompts: list, completions: list, **columns) -> list[float | None]

- `prompts` and `completions` are parallel lists; each item is a string or a list of chat messages
  (`[{"role": "assistant", "content": "..."}]`); every reward here accepts both (`message_text`).
- Extra dataset columns arrive by name as lists of the same length (`answer=[...]`, `solution=[...]`,
  `answerKey=[...]`). Unknown keyword arguments are ignored (TRL also passes e.g. `completion_ids`).
- `None` for a sample means "not applicable" (e.g. its gold answer cannot be parsed), not "wrong".
  NaN or inf is a bug in the reward: `CombinedReward` stops naming the function, or (`nonfinite="skip"`,
  `reward_nonfinite: skip`) counts it and drops the sample. A sample no function scored has no reward:
  trainers leave it out of its group's baseline and the loss, and stop when a whole rollout has none.
- `__name__` is the metric name: the trainer logs `reward/<name>/mean` and `reward/<name>/std`.
- Parametrised rewards come from factories (`make_math_reward(timeout_s=...)`), which return objects.

The stats protocol (failures a trainer must be able to log)
-----------------------------------------------------------
A reward may also have a method::

    pop_stats() -> dict[str, float]

returning what happened since the previous call, then resetting. Keys are full metric keys under the
reward's name: counts such as `reward/math/timeouts`, `reward/math/gold_unparsable`,
`reward/<rubric>/judge_unparsable`, and means such as the rubric's per-criterion scores
`reward/<rubric>/<criterion>`. Values are per process: in distributed training, sum the counts and
average the means across processes. `CombinedReward.metrics()` calls `pop_stats()` on each of its
functions and merges the results, so a trainer that logs `metrics()` after each reward call logs every
counted failure. Plain functions without `pop_stats` are fine.

What is here
------------
- `math_reward` / `make_math_reward`: final answer (`\boxed{}` first) checked with math-verify, with a
  timeout per check that holds in any thread (`align.rewards.isolation`).
- `choice_reward` / `make_choice_reward`: multiple-choice label against `answerKey`.
- `boxed_format_reward`, `make_tags_format_reward`, `make_length_reward`: format and length.
- `make_rubric_reward`: a rubric file (rules + a judge model), see `align.rewards.rubric`.
- `CombinedReward`, `get_reward_funcs`: weighted combination and names-from-config.
"""

from align.rewards.base import RewardFunction, message_text
from align.rewards.choice import ChoiceReward, choice_reward, extract_choice, make_choice_reward
from align.rewards.combine import KNOWN_REWARDS, CombinedReward, RewardOutput, get_reward_funcs, reward_name
from align.rewards.format import (
    LengthReward,
    boxed_format_reward,
    make_length_reward,
    make_tags_format_reward,
    tags_format_reward,
)
from align.rewards.math import (
    MathReward,
    extract_answer,
    extract_boxed,
    extract_gold,
    make_math_reward,
    math_reward,
)
from align.rewards.rubric import (
    HFJudge,
    Judge,
    Rubric,
    RubricError,
    RubricReward,
    load_rubric,
    make_rubric_reward,
)

__all__ = [
    "KNOWN_REWARDS",
    "ChoiceReward",
    "CombinedReward",
    "HFJudge",
    "Judge",
    "LengthReward",
    "MathReward",
    "RewardFunction",
    "RewardOutput",
    "Rubric",
    "RubricError",
    "RubricReward",
    "boxed_format_reward",
    "choice_reward",
    "extract_answer",
    "extract_boxed",
    "extract_choice",
    "extract_gold",
    "get_reward_funcs",
    "load_rubric",
    "make_choice_reward",
    "make_length_reward",
    "make_math_reward",
    "make_rubric_reward",
    "make_tags_format_reward",
    "math_reward",
    "message_text",
    "reward_name",
    "tags_format_reward",
]
