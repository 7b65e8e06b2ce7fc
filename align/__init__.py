"""align: reinforcement learning for language models and classic RL on one set of trainer abstractions."""

__version__ = "0.1.0"
