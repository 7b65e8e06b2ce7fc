"""Gymnasium environments shared by classic agents and language models.

`align.envs.text`: discrete toy-text environments (FrozenLake, CliffWalking, Taxi, the project's mazes)
played through text. Importing this package registers their ids (`align/FrozenLakeText-v0`, ...) with
gymnasium, so `gymnasium.make("align/FrozenLakeText-v0")` works.
"""

from align.envs.math_tools import register_math_tools
from align.envs.text import (
    TEXT_ENVS,
    TextEnv,
    discrete_env,
    make_text_env,
    parse_action,
    reference_scores,
    register_text_envs,
    text_env_of,
)

register_text_envs()
register_math_tools()

__all__ = [
    "TEXT_ENVS",
    "TextEnv",
    "discrete_env",
    "make_text_env",
    "parse_action",
    "reference_scores",
    "register_text_envs",
    "text_env_of",
]
