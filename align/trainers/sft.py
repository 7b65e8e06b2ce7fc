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

The helpers here (``selected_logits``, ``completion_logprobs``, ``eval_shards``) are shared by the reward
model and DPO trainers.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from align.chat_data import TRUNCATION_POLICIES, DataStats, collate_sft, pack_examples, tokenize_sft
from align.config import ModelConfig, TrainConfig, check_choice, check_range
from align.losses import selective_log_softmax, sft_loss
from align.trainer import Trainer

logger = logging.getLogger(__name__)

__all__ = [
    "SFTConfig",
    "SFTTrainer",
    "completion_logprobs",
    "eval_shards",
    "label_positions",
    "save_final_model",
    "selected_logits",
]


@dataclass
class SFTConfig(ModelConfig, TrainConfig):
    """Supervised fine-tuning on conversations or prompt/completion pairs."""

    output_dir: str = "outputs/sft"
    """Where metrics.jsonl, config.yaml, checkpoints/, summary.json and the final model go."""
    learning_rate: float = 2e-5
    """Peak learning rate of AdamW (TRL's SFT default; LoRA usually wants about 10x more)."""
    dataset_name: str | None = None
    """Training data: a local JSONL/JSON/Parquet file or folder, or a hub dataset (messages, prompt/completion,
    Alpaca or text schema); empty = the shipped data/sft."""
    dataset_split: str = "train"
    """Split of dataset_name to train on."""
    eval_dataset_name: str | None = None
    """Held-out data for eval/loss and eval/perplexity (default: dataset_name)."""
    eval_split: str = "test"
    """Split of the evaluation dataset."""
    eval_limit: int = 200
    """Evaluate on the first N held-out rows (0 = all)."""
    per_device_eval_batch_size: int = 8
    """Batch size of evaluation forward passes."""
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

    def validate(self) -> None:
        super().validate()
        check_range("max_length", self.max_length, 2)
        check_choice("truncation", self.truncation, list(TRUNCATION_POLICIES))
        check_range("eval_limit", self.eval_limit, 0)
        check_range("per_device_eval_batch_size", self.per_device_eval_batch_size, 1)


# --------------------------------------------------------------------------------------------------
# Shared helpers: logits only where they are needed, sequence log-probs, sharded evaluation.
# --------------------------------------------------------------------------------------------------


def label_positions(mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` bool: position ``t`` is kept when token ``t + 1`` counts (its logits predict it)."""
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[:, :-1] = mask[:, 1:].bool()
    return keep


@functools.lru_cache(maxsize=32)
def _takes_bool_logits_to_keep(forward_cls: type) -> bool:
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401  (boolean masks: 5.x)
    except ImportError:
        return False
    return "logits_to_keep" in inspect.signature(forward_cls.forward).parameters


def _base_class(model: torch.nn.Module) -> type:
    from align.models import unwrap_model

    inner = unwrap_model(model)
    get_base = getattr(inner, "get_base_model", None)  # peft
    return type(get_base() if callable(get_base) else inner)


def selected_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    keep: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits ``(N, V)`` at the ``N`` positions where ``keep`` ``(B, T)`` is True, in row-major order.

    The lm_head projects only those hidden states (boolean ``logits_to_keep``) when the model supports it;
    otherwise the logits from the first kept column on are computed and indexed. ``position_ids`` default
    to ``cumsum(attention_mask) - 1``, right for left and right padding alike.
    """
    if position_ids is None and attention_mask is not None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if _takes_bool_logits_to_keep(_base_class(model)):
        logits = model(**kwargs, logits_to_keep=keep).logits
        if logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
            return logits
        if logits.dim() == 3 and logits.shape[:2] == keep.shape:  # the model ignored the mask
            return logits[keep]
        raise RuntimeError(
            f"{type(model).__name__} returned logits of shape {tuple(logits.shape)} for a boolean logits_to_keep "
            f"of shape {tuple(keep.shape)} with {int(keep.sum())} positions kept"
        )
    cols = keep.any(0).nonzero()
    first = int(cols.min()) if cols.numel() else keep.shape[1] - 1
    try:
        logits = model(**kwargs, logits_to_keep=keep.shape[1] - first).logits
    except TypeError:  # a model without logits_to_keep
        logits = model(**kwargs).logits[:, first:]
    return logits[keep[:, first:]]


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the log-probs of the tokens where ``mask`` is 1, per row: ``(B,)``, and their counts ``(B,)``.

    ``log pi(y | x) = sum_t log softmax(logits_{t-1})[y_t]`` over completion tokens ``t``; padding on either
    side is fine (positions come from the attention mask unless ``position_ids`` are given, as for packed
    rows). Log-probs are float32 even for bf16 logits
    (``selective_log_softmax``).
    """
    keep = label_positions(mask)
    logits = selected_logits(model, input_ids, attention_mask, keep, position_ids)
    counted = mask[:, 1:].bool()
    labels = input_ids[:, 1:][counted]
    token_logps = selective_log_softmax(logits.unsqueeze(0), labels.unsqueeze(0)).squeeze(0)  # (N,)
    B = input_ids.shape[0]
    rows = torch.arange(B, device=input_ids.device)[:, None].expand_as(counted)[counted]
    logps = torch.zeros(B, dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)
    return logps, counted.sum(-1)


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


_FUSED_DEVICES = ("cpu", "cuda")
_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _SupervisedMixin:
    """What the SFT, reward-model and DPO trainers share on top of the base: a token count per step for
    ``throughput/tokens_per_second``, and torch's fused AdamW kernel.

    The fused kernel updates every parameter in one pass and makes no per-parameter temporaries; torch's
    default AdamW on CPU loops over parameters with several temporaries each. On the embedded 135M model
    (fp32, CPU) one optimizer step takes 0.8 s fused against 22 s unfused on the shared 2-core machine, so
    full fine-tuning would otherwise spend most of its time in the optimizer (TRL / transformers default
    to the fused kernel too). Used for single- and multi-process runs on CPU or CUDA; DeepSpeed and FSDP
    keep the base's optimizer.
    """

    _step_tokens: float = 0.0

    def create_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer | None:
        from accelerate.utils import DistributedType

        optimizer = super().create_optimizer(model)  # type: ignore[misc]
        acc = getattr(self, "accelerator", None)
        plain = acc is None or acc.distributed_type in (
            DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU,
        )  # fmt: skip
        if type(optimizer) is not torch.optim.AdamW or not plain:
            return optimizer
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if not all(p.device.type in _FUSED_DEVICES and p.dtype in _FUSED_DTYPES for p in params):
            return optimizer
        keep = ("params", "lr", "betas", "eps", "weight_decay")
        groups = [{k: g[k] for k in keep} for g in optimizer.param_groups]
        d = optimizer.defaults
        return torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], fused=True)

    def _count_tokens(self, attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> None:
        n = attention_mask.sum() if attention_mask is not None else torch.tensor(input_ids.numel())
        self._step_tokens += float(n)

    def on_step_end(self, metrics: dict[str, float]) -> None:
        """Add ``train/tokens`` (this process's non-padding tokens in the step), ``throughput/tokens_per_second``
        and the data counts (``data/kept``, ``data/skipped/<reason>``, ...) to the step's metrics."""
        seconds = metrics.get("time/step_seconds")
        if seconds:
            metrics["throughput/tokens_per_second"] = self._step_tokens / seconds
        metrics["train/tokens"] = self._step_tokens
        self._step_tokens = 0.0
        metrics.update(getattr(self, "data_metrics", {}))


# --------------------------------------------------------------------------------------------------
# The trainer.
# --------------------------------------------------------------------------------------------------


class SFTTrainer(_SupervisedMixin, Trainer):
    """SFT on the Trainer base.

    Args:
        config: an ``SFTConfig``.
        model: a causal LM (optionally a peft LoRA model).
        tokenizer: its tokenizer (a fast one; the chat template formats conversations).
        train_dataset: rows in an SFT schema (``datasets.Dataset`` or list of dicts), or rows already
            tokenised (``input_ids`` and ``mask``).
        eval_dataset: optional held-out rows for ``evaluate()``: ``eval/loss`` (token mean) and
            ``eval/perplexity``.
    """

    progress_keys = ("loss", "eval/loss", "throughput/tokens_per_second")

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
        self.train_rows, stats = self._tokenize(train_dataset, tokenizer, "train data")
        if config.packing:
            n = len(self.train_rows)
            self.train_rows = pack_examples(self.train_rows, config.max_length)
            logger.info(
                "packed %d examples into %d rows of at most %d tokens",
                n,
                len(self.train_rows),
                config.max_length,
            )
        self.data_metrics = stats.metrics("data") if stats else {}
        self.eval_rows: list[dict] | None = None
        if eval_dataset is not None:
            self.eval_rows, eval_stats = self._tokenize(eval_dataset, tokenizer, "eval data")
            if config.eval_limit:
                self.eval_rows = self.eval_rows[: config.eval_limit]
            if eval_stats:
                self.data_metrics.update(eval_stats.metrics("data/eval"))
        super().__init__(config, model, tokenizer=tokenizer, callbacks=callbacks)

    def _tokenize(self, dataset: Any, tokenizer: Any, name: str) -> tuple[list[dict], DataStats | None]:
        if isinstance(dataset, list) and dataset and "input_ids" in dataset[0]:
            return dataset, None
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

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_rows,
            batch_size=self.config.per_device_train_batch_size,
            shuffle=True,
            collate_fn=functools.partial(collate_sft, pad_token_id=self.pad_token_id),
        )

    def num_items(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["mask"][:, 1:].sum())

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch["mask"]
        keep = label_positions(mask)
        logits = selected_logits(
            self.model, batch["input_ids"], batch["attention_mask"], keep, batch["position_ids"]
        )  # (N, V)
        labels = batch["input_ids"][:, 1:][mask[:, 1:].bool()]
        ones = torch.ones_like(labels)
        return sft_loss(logits.unsqueeze(0), labels.unsqueeze(0), ones.unsqueeze(0))

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Token-mean cross-entropy over the micro-batch's counted tokens (weighted by ``num_items``)."""
        self._count_tokens(batch["attention_mask"], batch["input_ids"])
        return self._loss(batch)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """``eval/loss``: the token-mean cross-entropy over the whole held-out set; ``eval/perplexity``."""
        if not self.eval_rows:
            return {}
        acc = self.accelerator
        was_training = self.model.training
        self.model.eval()
        t0 = time.perf_counter()
        total = torch.zeros(2, device=acc.device, dtype=torch.float64)  # [sum of NLL, tokens]
        try:
            for rows, weights in eval_shards(self.eval_rows, self.config.per_device_eval_batch_size, acc):
                batch = collate_sft(rows, self.pad_token_id)
                batch = {k: (v.to(acc.device) if v is not None else None) for k, v in batch.items()}
                logps, counts = completion_logprobs(
                    self.model,
                    batch["input_ids"],
                    batch["attention_mask"],
                    batch["mask"],
                    batch["position_ids"],
                )
                w = weights.to(torch.float64)
                total[0] -= (logps.to(torch.float64) * w).sum()
                total[1] += (counts.to(torch.float64) * w).sum()
        finally:
            self.model.train(was_training)
        total = acc.reduce(total, "sum") if acc.num_processes > 1 else total
        mean = float(total[0] / total[1].clamp(min=1))
        return {
            "eval/loss": mean,
            "eval/perplexity": math.exp(min(mean, 50.0)),
            "eval/tokens": float(total[1]),
            "time/eval_seconds": time.perf_counter() - t0,
        }
