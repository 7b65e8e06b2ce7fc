r"""Bradley-Terry reward model: a sequence classifier with one score head, trained on preference pairs.

    P(y_w > y_l | x) = sigmoid(r(x, y_w) - r(x, y_l))
    L = -mean log sigmoid(r(x, y_w) - r(x, y_l) - m) + c * mean((r(x, y_w) + r(x, y_l))^2)

(Ouyang et al. 2022, eq. 1; the margin ``m`` of Llama 2, Touvron et al. 2023, eq. 2; the centring term of
Eisenstein et al. 2023.) The loss is ``align.losses.bradley_terry_loss``, the same likelihood that DPO
maximises with the implicit reward ``beta * log(pi / pi_ref)`` (``align.trainers.dpo``).

The model is ``AutoModelForSequenceClassification`` with ``num_labels=1`` on a causal LM backbone
(``align.models.load_sequence_classifier``): a fresh linear ``score`` head reads the hidden state of each
row's last non-pad token. Chosen and rejected sequences go through one forward pass (2B rows, right
padding to the batch's longest). Under LoRA (``task_type="SEQ_CLS"``) the head trains in full next to the
adapters and is saved with them.

A trained reward model serves as a reward function for GRPO / PPO: ``align.rewards.reward_model``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from align.chat_data import TRUNCATION_POLICIES, DataStats, collate_preferences, tokenize_preferences
from align.config import ModelConfig, TrainConfig, check_choice, check_range
from align.losses import bradley_terry_loss
from align.trainer import Trainer
from align.trainers.sft import _SupervisedMixin, eval_shards

__all__ = ["RewardModelConfig", "RewardModelTrainer", "pair_rewards"]


@dataclass
class RewardModelConfig(ModelConfig, TrainConfig):
    """A Bradley-Terry reward model on preference pairs."""

    output_dir: str = "outputs/reward_model"
    """Where metrics.jsonl, config.yaml, checkpoints/, summary.json and the final model go."""
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW (the fresh score head learns at the same rate)."""
    dataset_name: str | None = None
    """Preference pairs: a local JSONL/JSON/Parquet file or folder, or a hub dataset (prompt/chosen/rejected,
    or chosen/rejected conversations with a shared prompt); empty = the shipped data/prefs."""
    dataset_split: str = "train"
    """Split of dataset_name to train on."""
    eval_dataset_name: str | None = None
    """Held-out pairs for eval/accuracy (default: dataset_name)."""
    eval_split: str = "test"
    """Split of the evaluation dataset."""
    eval_limit: int = 200
    """Evaluate on the first N held-out pairs (0 = all)."""
    per_device_eval_batch_size: int = 8
    """Pairs per evaluation forward pass."""
    max_length: int = 1024
    """Most tokens of prompt + completion (each of chosen and rejected); longer pairs follow `truncation`."""
    truncation: str = "skip"
    """Policy for pairs over max_length: skip (default, as TRL: cutting could remove what decides the
    preference), keep_start, keep_end (cut the prompt's start), error."""
    use_margin: bool = False
    """Require r_w - r_l to exceed each pair's margin: its `margin` column, else score_chosen - score_rejected."""
    center_rewards_coefficient: float = 0.0
    """Weight of mean((r_w + r_l)^2), which keeps rewards centred on 0 (TRL: e.g. 0.01); 0 = off."""

    def validate(self) -> None:
        super().validate()
        check_range("max_length", self.max_length, 2)
        check_choice("truncation", self.truncation, list(TRUNCATION_POLICIES))
        check_range("eval_limit", self.eval_limit, 0)
        check_range("per_device_eval_batch_size", self.per_device_eval_batch_size, 1)
        check_range("center_rewards_coefficient", self.center_rewards_coefficient, 0.0)


def pair_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar rewards ``(B,)`` of the chosen and the rejected rows of a preference batch (one forward)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    rewards = out.logits.squeeze(-1).float()  # (2B,)
    chosen, rejected = rewards.chunk(2)
    return chosen, rejected


class RewardModelTrainer(_SupervisedMixin, Trainer):
    """Bradley-Terry reward-model training on the Trainer base.

    Args:
        config: a ``RewardModelConfig``.
        model: a sequence classifier with ``num_labels=1`` and ``config.pad_token_id`` set (optionally LoRA).
        tokenizer: its tokenizer (fast; chat template for conversational pairs).
        train_dataset: preference rows (see ``align.chat_data``), or rows already tokenised
            (``prompt_ids``, ``chosen_ids``, ``rejected_ids``).
        eval_dataset: optional held-out pairs for ``evaluate()``: ``eval/accuracy``, ``eval/loss``,
            ``eval/margin``.
    """

    progress_keys = ("loss", "reward/accuracy", "eval/accuracy")

    def __init__(
        self,
        config: RewardModelConfig,
        model: torch.nn.Module,
        tokenizer: Any,
        train_dataset: Any,
        *,
        eval_dataset: Any = None,
        callbacks: list | None = None,
    ) -> None:
        self.config: RewardModelConfig = config
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        if pad is None:
            raise ValueError(
                "the reward model's config.pad_token_id is not set, so it cannot find each row's last token; "
                "load it with align.models.load_sequence_classifier"
            )
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else pad
        self.train_rows, stats = self._tokenize(train_dataset, tokenizer, "train pairs")
        self.data_metrics = stats.metrics("data") if stats else {}
        self.eval_rows: list[dict] | None = None
        if eval_dataset is not None:
            self.eval_rows, eval_stats = self._tokenize(eval_dataset, tokenizer, "eval pairs")
            if config.eval_limit:
                self.eval_rows = self.eval_rows[: config.eval_limit]
            if eval_stats:
                self.data_metrics.update(eval_stats.metrics("data/eval"))
        super().__init__(config, model, tokenizer=tokenizer, callbacks=callbacks)

    def _tokenize(self, dataset: Any, tokenizer: Any, name: str) -> tuple[list[dict], DataStats | None]:
        if isinstance(dataset, list) and dataset and "chosen_ids" in dataset[0]:
            return dataset, None
        cfg = self.config
        return tokenize_preferences(
            dataset,
            tokenizer,
            max_length=cfg.max_length,
            truncation=cfg.truncation,
            use_margin=cfg.use_margin,
            name=name,
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_rows,
            batch_size=self.config.per_device_train_batch_size,
            shuffle=True,
            collate_fn=functools.partial(collate_preferences, pad_token_id=self.pad_token_id),
        )

    def num_items(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2  # pairs: the loss is a mean over pairs

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        chosen, rejected = pair_rewards(self.model, batch)
        loss, metrics = bradley_terry_loss(
            chosen, rejected, margin=batch.get("margin"), center_coef=self.config.center_rewards_coefficient
        )
        metrics["rewards/chosen"] = chosen.detach().mean()
        metrics["rewards/rejected"] = rejected.detach().mean()
        return loss, metrics

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Bradley-Terry loss of the micro-batch's pairs (mean over pairs)."""
        self._count_tokens(batch["attention_mask"], batch["input_ids"])
        return self._loss(batch)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out ``eval/accuracy`` (share of pairs with r_w > r_l), ``eval/loss``, ``eval/margin``."""
        if not self.eval_rows:
            return {}
        acc = self.accelerator
        was_training = self.model.training
        self.model.eval()
        sums = torch.zeros(4, device=acc.device, dtype=torch.float64)  # loss, correct, margin, pairs
        try:
            for rows, w in eval_shards(self.eval_rows, self.config.per_device_eval_batch_size, acc):
                batch = {k: v.to(acc.device) for k, v in collate_preferences(rows, self.pad_token_id).items()}
                chosen, rejected = pair_rewards(self.model, batch)
                diff = (chosen - rejected).double()
                margin = batch.get("margin")
                logits = diff if margin is None else diff - margin.double()
                w = w.double()
                sums[0] += (-torch.nn.functional.logsigmoid(logits) * w).sum()
                sums[1] += ((diff > 0).double() * w).sum()
                sums[2] += (diff * w).sum()
                sums[3] += w.sum()
        finally:
            self.model.train(was_training)
        sums = acc.reduce(sums, "sum") if acc.num_processes > 1 else sums
        n = float(sums[3].clamp(min=1))
        return {
            "eval/loss": float(sums[0]) / n,
            "eval/accuracy": float(sums[1]) / n,
            "eval/margin": float(sums[2]) / n,
            "eval/pairs": float(sums[3]),
        }
