r"""A trained reward model served as a reward function (TRL's contract), for GRPO, PPO and evaluation.

    reward = make_reward_model_reward("outputs/reward_model/model", batch_size=16)
    reward(prompts, completions)          # -> list[float], one scalar score per completion

``path`` is what ``recipes/reward_model.py`` saves: full weights or a LoRA adapter (with its trained score
head), loaded with ``align.models.load_sequence_classifier``. In configs the reward name is
``reward_model:<path>``.

Formatting. Each (prompt, completion) is tokenised exactly as the reward model's training pairs were
(``align.chat_data.encode_prompt_completion`` with the reward model's own tokenizer): a conversational
prompt (a list of messages) goes through the chat template with the completion as the assistant turn; a
string prompt is plain text followed by the completion and eos, unless ``chat_template=True`` wraps it as
a user message. The reward model works on text, so the policy's tokenizer may differ from the reward
model's: completions arrive as text (TRL decodes them) and are re-encoded here; the extra
``completion_ids`` column TRL passes is ignored for that reason.

The model loads on first call (lazily), on the current accelerator device (the device of the calling
process under ``accelerate launch``), in eval mode without gradients. Completions longer than
``max_length`` tokens keep their first ``max_length`` tokens (counted: ``reward/<name>/truncated``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from align.forward import pad_rows

__all__ = ["RewardModelReward", "make_reward_model_reward", "reward_model_from_name"]


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class RewardModelReward:
    """A Bradley-Terry sequence classifier as a callable ``(prompts, completions, **columns) -> list[float]``
    (see the module docstring); ``device`` defaults to the current CUDA device, else CPU."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        batch_size: int = 8,
        name: str = "reward_model",
        dtype: str = "auto",
        device: str | torch.device | None = None,
        max_length: int | None = None,
        chat_template: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"reward model directory {str(path)!r} does not exist")
        self.path = str(path)
        self.batch_size = batch_size
        self.__name__ = name
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.max_length = max_length
        self.chat_template = chat_template
        self.model: Any = None
        self.tokenizer: Any = None
        self._lock = threading.Lock()
        self._truncated = 0

    def load(self) -> None:
        """Load the model and tokenizer now (otherwise the first call does)."""
        from align.models import load_sequence_classifier, load_tokenizer

        with self._lock:
            if self.model is not None:
                return
            tokenizer = load_tokenizer(self.path, padding_side="right")
            model = load_sequence_classifier(self.path, dtype=self.dtype, pad_token_id=tokenizer.pad_token_id)
            self.device = self.device or _default_device()
            model.to(self.device).eval().requires_grad_(False)
            self.tokenizer, self.model = tokenizer, model

    def _encode(self, prompt: Any, completion: Any) -> list[int]:
        from align.chat_data import encode_prompt_completion, is_messages

        if not is_messages(completion):  # a string (or None / [] for an empty completion)
            completion = (
                "" if completion is None or isinstance(completion, (list, tuple)) else str(completion)
            )
        if isinstance(prompt, str) and self.chat_template:
            prompt = [{"role": "user", "content": prompt}]
        p, c = encode_prompt_completion(self.tokenizer, prompt, completion)
        ids = p + c
        if self.max_length and len(ids) > self.max_length:
            self._truncated += 1
            ids = ids[: self.max_length]
        return ids

    @torch.no_grad()
    def score(self, sequences: Sequence[list[int]]) -> list[float]:
        """Rewards of token sequences already in the reward model's format (right-padded in batches)."""
        pad = self.model.config.pad_token_id
        out: list[float] = []
        for i in range(0, len(sequences), self.batch_size):
            ids, attention = pad_rows(sequences[i : i + self.batch_size], pad)
            logits = self.model(
                input_ids=ids.to(self.device), attention_mask=attention.to(self.device), use_cache=False
            ).logits
            out += logits[:, 0].float().cpu().tolist()
        return out

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
        if self.model is None:
            self.load()
        return self.score([self._encode(p, c) for p, c in zip(prompts, completions)])

    def pop_stats(self) -> dict[str, float]:
        """``reward/<name>/truncated``: sequences cut at ``max_length`` since the last call."""
        n, self._truncated = self._truncated, 0
        return {f"reward/{self.__name__}/truncated": float(n)} if self.max_length else {}


def make_reward_model_reward(path: str | os.PathLike, **options: Any) -> RewardModelReward:
    """A reward function backed by the reward model saved at ``path``; ``options`` go to
    :class:`RewardModelReward`."""
    return RewardModelReward(path, **options)


def reward_model_from_name(arg: str | None) -> RewardModelReward:
    """The ``reward_model:<path>`` reward name of configs (``align.rewards.get_reward_funcs``): a relative path
    is tried from the working directory, then from the repository root."""
    if not arg:
        raise ValueError("'reward_model' needs a path, e.g. 'reward_model:outputs/reward_model/model'")
    path = Path(arg).expanduser()
    if not path.exists() and not path.is_absolute():
        from align.data import repo_root

        if (repo_root() / path).exists():
            path = repo_root() / path
    return make_reward_model_reward(path)
