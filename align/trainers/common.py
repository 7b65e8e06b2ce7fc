r"""What the SFT, reward-model and DPO trainers share (and what PPO can reuse): the chat-data config fields,
dropout off, sharded evaluation, the final save, and a mixin with the supervised trainers' data plumbing
(tokenise once, a shuffled loader, a token count per step, evaluation sums over all processes). Their
forward passes (logits only where a label counts, per-sequence log-probs) are in ``align.forward``.

Each trainer keeps only its algorithm: which tokeniser and collator its rows need (``tokenize_rows``,
``collate``), how a batch becomes a loss (``batch_loss``) and which sums its evaluation reports.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from align.chat_data import TRUNCATION_POLICIES, DataStats, collate_preferences, tokenize_preferences
from align.config import check_choice, check_range
from align.models import eval_mode
from align.trainer import Trainer

__all__ = [
    "ChatDataConfig",
    "PairTrainerMixin",
    "PreferenceDataConfig",
    "SupervisedTrainerMixin",
    "disable_dropout",
    "eval_shards",
    "save_final_model",
]


@dataclass
class ChatDataConfig:
    """Data and evaluation fields shared by the SFT, reward-model and DPO configs (mixed in before
    ``ModelConfig`` and ``TrainConfig``; a pipeline redefines a field to change its default or its help)."""

    dataset_name: str | None = None
    """Training data: a local JSONL/JSON/Parquet file or folder, or a hub dataset; empty = the shipped data."""
    dataset_split: str = "train"
    """Split of dataset_name to train on."""
    eval_dataset_name: str | None = None
    """Held-out data for evaluation (default: dataset_name)."""
    eval_split: str = "test"
    """Split of the evaluation dataset."""
    eval_limit: int = 200
    """Evaluate on the first N held-out rows (0 = all)."""
    per_device_eval_batch_size: int = 8
    """Batch size of evaluation forward passes."""
    max_length: int = 1024
    """Most tokens per example; longer examples follow `truncation`."""
    truncation: str = "skip"
    """Policy for examples over max_length: skip (drop and count), keep_start (cut the end), keep_end (cut
    the start), error."""

    def validate(self) -> None:
        """Check the data fields (``max_length``, ``truncation``, ``eval_limit``, eval batch size), raising
        ``ConfigError`` naming the field, after the checks of the classes later in the config's MRO."""
        # Cooperative, as ModelConfig: the pipeline config's MRO continues to ModelConfig and TrainConfig.
        parent = getattr(super(), "validate", None)
        if parent is not None:
            parent()
        check_range("max_length", self.max_length, 2)
        check_choice("truncation", self.truncation, list(TRUNCATION_POLICIES))
        check_range("eval_limit", self.eval_limit, 0)
        check_range("per_device_eval_batch_size", self.per_device_eval_batch_size, 1)


@dataclass
class PreferenceDataConfig(ChatDataConfig):
    """``ChatDataConfig`` for preference pairs, and how the pair trainers (reward model, DPO) run a pair."""

    dataset_name: str | None = None
    """Preference pairs: a local JSONL/JSON/Parquet file or folder, or a hub dataset (prompt/chosen/rejected,
    or chosen/rejected conversations with a shared prompt); empty = the shipped data/prefs."""
    eval_dataset_name: str | None = None
    """Held-out pairs for evaluation (default: dataset_name)."""
    eval_limit: int = 200
    """Evaluate on the first N held-out pairs (0 = all)."""
    per_device_eval_batch_size: int = 8
    """Pairs per evaluation forward pass."""
    max_length: int = 1024
    """Most tokens of prompt + completion (each of chosen and rejected); longer pairs follow `truncation`."""
    truncation: str = "skip"
    """Policy for pairs over max_length: skip (default, as TRL: cutting could remove what decides the
    preference), keep_start, keep_end (cut the prompt's start), error."""
    share_prompt: bool = True
    """Run each pair as one row, its prompt once, both completions masked from each other (same numbers and
    gradients, fewer tokens); off, or under DeepSpeed / FSDP or flash attention, each sequence runs whole."""
    disable_dropout: bool = True
    """Set the model's (and DPO's reference's) dropout to 0, as TRL does: with dropout on, the chosen and
    rejected scores are noised differently, and DPO's log-ratios against the eval-mode reference are noise at
    step 0, not 0, so the gradient chases the masks (a reward model also scores in eval mode for GRPO / PPO)."""


_DROPOUT_MODULES = (
    torch.nn.Dropout,
    torch.nn.Dropout1d,
    torch.nn.Dropout2d,
    torch.nn.Dropout3d,
    torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout,
)


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability in ``model`` to 0, in place; the model stays in train mode.

    TRL's ``disable_dropout=True`` (PPO, DPO, reward model): a loss that compares the trained model's outputs
    with a reference's (eval mode, no dropout) or with its own earlier outputs (PPO's ratio) is then exactly
    the comparison intended at step 0, not noise from dropout masks. Besides ``nn.Dropout`` modules (TRL's
    ``disable_dropout_in_model``), this zeroes ``nn.MultiheadAttention.dropout`` and transformers' float
    ``attention_dropout`` (Llama, Qwen2, Mistral, ...), which their forward reads in train mode and which
    TRL's version leaves on. The model's config is not changed, so a saved model keeps its dropout.
    """
    for module in model.modules():
        if isinstance(module, _DROPOUT_MODULES):
            module.p = 0.0
        elif isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def eval_shards(
    rows: list[Any], batch_size: int, accelerator: Any
) -> Iterator[tuple[list[Any], torch.Tensor]]:
    """This process's share of ``rows`` in batches, with weights ``(b,)``: 1 = counts, 0 = padding row.

    Every process gets the same number of batches of the same size (padding rows repeat the first row with
    weight 0), so sharded models (DeepSpeed ZeRO-3, FSDP), whose forward is collective, never wait forever.
    """
    W, rank = accelerator.num_processes, accelerator.process_index
    per = math.ceil(len(rows) / W)
    mine = rows[rank * per : (rank + 1) * per]
    weights = [1.0] * len(mine)
    while len(mine) < per:
        mine.append(rows[0])
        weights.append(0.0)
    for i in range(0, per, batch_size):
        yield mine[i : i + batch_size], torch.tensor(weights[i : i + batch_size], device=accelerator.device)


def save_final_model(trainer: Trainer, path: str | Path, *, merge_lora: bool = False) -> Path:
    """Save the trained model: the LoRA adapter (or, with ``merge_lora``, merged full weights) or full weights.

    Merging goes through :func:`align.models.save_pretrained` on the main process (not for ZeRO-3/FSDP,
    whose weights are sharded: merge the saved adapter afterwards there).
    """
    from peft import PeftModel

    from align.models import save_pretrained, unwrap_model

    path = Path(path)
    inner = unwrap_model(trainer.model)
    if merge_lora and isinstance(inner, PeftModel):
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            save_pretrained(inner, trainer.tokenizer, path, merge_lora=True, exist_ok=True)
        trainer.accelerator.wait_for_everyone()
        return path
    return trainer.save_model(path)


class SupervisedTrainerMixin:
    """What the SFT, reward-model and DPO trainers share on top of the ``Trainer`` base (list it first:
    ``class SFTTrainer(SupervisedTrainerMixin, Trainer)``).

    A subclass sets ``collate`` (rows, pad id -> batch) and ``pretokenized_key`` (a column that marks rows
    already tokenised), defines ``tokenize_rows(dataset, tokenizer, name)`` and ``batch_loss(batch)``, sets
    ``self.pad_token_id`` and calls :meth:`prepare_data` before ``Trainer.__init__``. It gets:

    - ``self.train_rows`` / ``self.eval_rows`` (first ``eval_limit``) and ``self.data_metrics``
      (``data/kept``, ``data/skipped/<reason>``, ``data/eval/...``), added to every step's metrics;
    - ``train_dataloader`` (shuffled, dynamic padding) and ``compute_loss`` (counts the step's tokens for
      ``throughput/tokens_per_second``, then ``batch_loss``);
    - :meth:`eval_sums`, the sharded, no-grad, eval-mode loop over ``eval_rows`` that evaluations share;
    """

    collate: Callable[..., dict[str, Any]]
    pretokenized_key: str = "input_ids"
    pad_token_id: int
    train_rows: list[dict]
    eval_rows: list[dict] | None = None
    data_metrics: dict[str, float]
    _step_tokens: float = 0.0

    def tokenize_rows(self, dataset: Any, tokenizer: Any, name: str) -> tuple[list[dict], DataStats]:
        """Tokenise raw rows into the rows ``collate`` takes, with counts of kept / cut / skipped rows; each
        trainer's rows differ (SFT sequences, preference pairs), so each defines it. ``name`` names the
        rows in errors."""
        raise NotImplementedError

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The algorithm's loss of one collated micro-batch (a mean over its ``num_items``) and its metrics;
        ``compute_loss`` calls it after counting the batch's tokens."""
        raise NotImplementedError

    def _rows(self, dataset: Any, tokenizer: Any, name: str) -> tuple[list[dict], DataStats | None]:
        if isinstance(dataset, list) and dataset and self.pretokenized_key in dataset[0]:
            return dataset, None
        return self.tokenize_rows(dataset, tokenizer, name)

    def prepare_data(
        self, train_dataset: Any, eval_dataset: Any, tokenizer: Any, *, what: str = "data"
    ) -> None:
        """Tokenise the training and held-out rows once and record what was kept, cut and skipped.

        ``what`` names the rows in messages ("data", "pairs"); the configured file or hub name is added, so
        a bad row's error or warning says where it comes from.
        """
        cfg: Any = self.config  # type: ignore[attr-defined]
        train_src = getattr(cfg, "dataset_name", None)
        eval_src = getattr(cfg, "eval_dataset_name", None) or train_src
        self.train_rows, stats = self._rows(train_dataset, tokenizer, _data_name(f"train {what}", train_src))
        self.data_metrics = stats.metrics("data") if stats else {}
        self.eval_rows = None
        if eval_dataset is not None:
            self.eval_rows, eval_stats = self._rows(
                eval_dataset, tokenizer, _data_name(f"eval {what}", eval_src)
            )
            if cfg.eval_limit:
                self.eval_rows = self.eval_rows[: cfg.eval_limit]
            if eval_stats:
                self.data_metrics.update(eval_stats.metrics("data/eval"))

    def train_dataloader(self) -> DataLoader:
        """Shuffled micro-batches of ``per_device_train_batch_size`` tokenised rows, padded per batch (to
        the batch's longest row, not ``max_length``) by the trainer's ``collate``."""
        return DataLoader(
            self.train_rows,
            batch_size=self.config.per_device_train_batch_size,  # type: ignore[attr-defined]
            shuffle=True,
            collate_fn=functools.partial(type(self).collate, pad_token_id=self.pad_token_id),
        )

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The algorithm's ``batch_loss``, after adding the batch's non-padding tokens to the step's count."""
        n = batch.get("num_tokens")  # packed SFT rows have no attention mask to count from
        if n is None:
            mask = batch["attention_mask"]
            n = mask.sum() if mask is not None else batch["input_ids"].numel()
        self._step_tokens += float(n)
        return self.batch_loss(batch)

    @torch.no_grad()
    def eval_sums(
        self, n: int, batch_sums: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``(n,)`` float64 sums of ``batch_sums(batch, weights)`` over ``eval_rows``, over all processes.

        Each process collates its shard (:func:`eval_shards`; ``weights`` ``(b,)`` is 0 for padding rows,
        which must not count) and moves it to the device; the model is in eval mode meanwhile.
        """
        acc = self.accelerator  # type: ignore[attr-defined]
        model = self.model  # type: ignore[attr-defined]
        sums = torch.zeros(n, device=acc.device, dtype=torch.float64)
        with eval_mode(model):
            for rows, weights in eval_shards(
                self.eval_rows or [], self.config.per_device_eval_batch_size, acc
            ):  # type: ignore[attr-defined]
                batch = type(self).collate(rows, self.pad_token_id)
                batch = {k: (v.to(acc.device) if v is not None else None) for k, v in batch.items()}
                sums += batch_sums(batch, weights)
        return acc.reduce(sums, "sum") if acc.num_processes > 1 else sums

    def on_step_end(self, metrics: dict[str, float]) -> None:
        """Add ``train/tokens`` (this process's non-padding tokens in the step), ``throughput/tokens_per_second``
        and the data counts (``data/kept``, ``data/skipped/<reason>``, ...) to the step's metrics."""
        seconds = metrics.get("time/step_seconds")
        if seconds:
            metrics["throughput/tokens_per_second"] = self._step_tokens / seconds
        metrics["train/tokens"] = self._step_tokens
        self._step_tokens = 0.0
        metrics.update(getattr(self, "data_metrics", {}))


def _data_name(what: str, source: str | None) -> str:
    return f"{what} ({source})" if source else what


class PairTrainerMixin(SupervisedTrainerMixin):
    """``SupervisedTrainerMixin`` for preference pairs (reward model, DPO): rows from
    ``align.chat_data.tokenize_preferences``, batches of 2B rows (chosen, then rejected), losses that are
    means over pairs. ``use_margin`` (class attribute or property) keeps each pair's margin."""

    collate = staticmethod(collate_preferences)
    pretokenized_key = "chosen_ids"
    use_margin: bool = False

    def tokenize_rows(self, dataset: Any, tokenizer: Any, name: str) -> tuple[list[dict], DataStats]:
        """Preference rows -> ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` (``tokenize_preferences``)
        under the config's ``max_length`` and ``truncation``, with each pair's margin if ``use_margin``."""
        cfg: Any = self.config  # type: ignore[attr-defined]
        return tokenize_preferences(
            dataset,
            tokenizer,
            max_length=cfg.max_length,
            truncation=cfg.truncation,
            use_margin=self.use_margin,
            name=name,
        )

    def num_items(self, batch: dict[str, torch.Tensor]) -> int:
        """Pairs in the batch (half its 2B rows): the loss is a mean over pairs, so micro-batches of unequal
        size (the last of an epoch) are weighed by their pairs."""
        return batch["input_ids"].shape[0] // 2

    @property
    def share_prompt(self) -> bool:
        """The config's ``share_prompt`` (one row per pair, its prompt once), except under DeepSpeed and FSDP,
        where that forward (a custom mask, a hook on a sharded head) is untested: whole sequences there."""
        return bool(getattr(self.config, "share_prompt", False)) and self._plain_ddp()  # type: ignore[attr-defined]
