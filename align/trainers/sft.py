r"""Supervised fine-tuning: next-token cross-entropy on the assistant (or completion) tokens.

    L(theta) = - sum_{t in counted} log pi_theta(x_t | x_{<t}) / |counted|

The mean is over every counted token of the optimizer step, across micro-batches and processes
(``num_items``): batch 8 x accumulation 1 and batch 2 x accumulation 4 give the same update, as with
one big batch. ``counted`` is the loss mask of ``align.chat_data.tokenize_sft``: the assistant turns of a
conversation (content + end token) or the completion of a prompt/completion pair, or every token.

Speed and memory, since SFT is as fast as its forward pass:

- dynamic padding per batch (no fixed length, no sorting);
- logits only where a label counts: the model's lm_head projects just those hidden states (transformers'
  boolean ``logits_to_keep``), so a long prompt costs no ``(T, vocab)`` logits (the vocabulary is 49152
  for SmolLM2: the head is a fifth of the model's forward FLOPs);
- optional packing of short examples into rows of ``max_length`` (best-fit decreasing, no example split),
  with position ids that restart per example so they do not attend to each other.

Its forward passes (``selected_logits``, ``logprob_sums``) are in ``align.forward``; the helpers it shares
with the reward model and DPO (``eval_shards``, ``save_final_model``, the data plumbing) in
``align.trainers.common``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from align.chat_data import DataStats, collate_sft, pack_examples, tokenize_sft
from align.config import ModelConfig, TrainConfig
from align.forward import label_positions, logprob_sums, selected_logits
from align.losses import sft_loss
from align.trainer import Trainer
from align.trainers.common import ChatDataConfig, SupervisedTrainerMixin

logger = logging.getLogger(__name__)

__all__ = ["SFTConfig", "SFTTrainer"]


@dataclass
class SFTConfig(ChatDataConfig, ModelConfig, TrainConfig):
    """Supervised fine-tuning on conversations or prompt/completion pairs."""

    output_dir: str = "outputs/sft"
    """Where metrics.jsonl, config.yaml, checkpoints/, summary.json and the final model go."""
    learning_rate: float = 2e-5
    """Peak learning rate of AdamW (TRL's SFT default; LoRA usually wants about 10x more)."""
    dataset_name: str | None = None
    """Training data: a local JSONL/JSON/Parquet file or folder, or a hub dataset (messages, prompt/completion,
    Alpaca or text schema); empty = the shipped data/sft."""
    eval_dataset_name: str | None = None
    """Held-out data for eval/loss and eval/perplexity (default: dataset_name)."""
    max_length: int = 1024
    """Most tokens per example (and per packed row); longer examples follow `truncation`."""
    truncation: str = "keep_start"
    """Policy for examples over max_length: keep_start (cut the end; default, as TRL), keep_end (cut the
    start), skip (drop and count), error."""
    assistant_only_loss: bool = True
    """Conversations: train only on assistant turns (content + end token); false trains on every token."""
    completion_only_loss: bool = True
    """Prompt/completion data: train only on the completion; false trains on the prompt too."""
    packing: bool = False
    """Pack short examples into rows of max_length tokens (best-fit decreasing; examples do not attend to
    each other)."""


class SFTTrainer(SupervisedTrainerMixin, Trainer):
    """SFT on the Trainer base, on rows in an SFT schema or already tokenised (``input_ids`` and ``mask``)."""

    progress_keys = ("loss", "eval/loss", "throughput/tokens_per_second")
    collate = staticmethod(collate_sft)
    pretokenized_key = "input_ids"

    def __init__(
        self,
        config: SFTConfig,
        model: torch.nn.Module,
        tokenizer: Any,
        train_dataset: Any,
        *,
        eval_dataset: Any = None,
        callbacks: list | None = None,
    ) -> None:
        self.config: SFTConfig = config
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.prepare_data(train_dataset, eval_dataset, tokenizer, what="data")
        if config.packing:
            n = len(self.train_rows)
            self.train_rows = pack_examples(self.train_rows, config.max_length)
            logger.info(
                "packed %d examples into %d rows of at most %d tokens",
                n,
                len(self.train_rows),
                config.max_length,
            )
        super().__init__(config, model, tokenizer=tokenizer, callbacks=callbacks)

    def tokenize_rows(self, dataset: Any, tokenizer: Any, name: str) -> tuple[list[dict], DataStats]:
        """SFT rows -> ``input_ids`` and the loss ``mask`` (``tokenize_sft``) under the config's
        ``max_length``, ``truncation`` and which tokens count (``assistant_only_loss``,
        ``completion_only_loss``)."""
        cfg = self.config
        return tokenize_sft(
            dataset,
            tokenizer,
            max_length=cfg.max_length,
            truncation=cfg.truncation,
            assistant_only_loss=cfg.assistant_only_loss,
            completion_only_loss=cfg.completion_only_loss,
            name=name,
        )

    def num_items(self, batch: dict[str, torch.Tensor]) -> int:
        """Counted label tokens in the batch (a first token has no prediction, so it never counts): the loss
        is a token mean, so accumulated micro-batches are weighed by their tokens, as one large batch."""
        return int(batch["mask"][:, 1:].sum())

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token-mean cross-entropy over the micro-batch's counted tokens (weighted by ``num_items``)."""
        mask = batch["mask"]
        keep = label_positions(mask)
        logits = selected_logits(
            self.model, batch["input_ids"], batch["attention_mask"], keep, batch["position_ids"]
        )  # (N, V)
        labels = batch["input_ids"][:, 1:][mask[:, 1:].bool()]
        ones = torch.ones_like(labels)
        return sft_loss(logits.unsqueeze(0), labels.unsqueeze(0), ones.unsqueeze(0))

    def evaluate(self) -> dict[str, float]:
        """``eval/loss``: the token-mean cross-entropy over the whole held-out set; ``eval/perplexity``."""
        if not self.eval_rows:
            return {}
        t0 = time.perf_counter()

        def sums(batch: dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:  # [NLL, tokens]
            logps, counts = logprob_sums(
                self.model, batch["input_ids"], batch["attention_mask"], batch["mask"], batch["position_ids"]
            )
            w = weights.to(torch.float64)
            return torch.stack([-(logps.to(torch.float64) * w).sum(), (counts.to(torch.float64) * w).sum()])

        total = self.eval_sums(2, sums)
        mean = float(total[0] / total[1].clamp(min=1))
        return {
            "eval/loss": mean,
            "eval/perplexity": math.exp(min(mean, 50.0)),
            "eval/tokens": float(total[1]),
            "time/eval_seconds": time.perf_counter() - t0,
        }
