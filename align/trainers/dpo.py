r"""Direct Preference Optimization: the Bradley-Terry likelihood of preferences under the implicit reward.

Rafailov et al. (2023), eq. 7:

    r(x, y) = beta * log pi_theta(y | x) / pi_ref(y | x)
    L = -mean log sigmoid(r(x, y_w) - r(x, y_l))

with conservative label smoothing (cDPO) or the IPO loss (Azar et al. 2023) as options; the losses are
``align.losses.dpo_loss`` and ``align.losses.ipo_loss``. This file computes their inputs:

- ``log pi(y | x)``, the summed log-probs of a completion's tokens, for the chosen and rejected completions
  of B pairs in one forward pass, with logits computed only where they predict a completion token: by
  default (``share_prompt``) one row per pair, ``[prompt | chosen | rejected]``, the prompt run once under
  a mask that hides each completion from the other (``align.forward.pair_logprob_sums``, the same numbers
  as the reward model's ``pair_rewards``), else 2B rows of whole sequences, right-padded
  (``align.forward.logprob_sums``);
- ``log pi_ref(y | x)`` from the reference policy: with LoRA the policy with its adapter disabled (no extra
  memory), else a frozen copy made before training, or, with ``precompute_ref_logprobs``, once over the
  data before the first step (stored with each pair, after which no reference model is kept at all: for
  full fine-tuning the policy before training *is* the reference).

Metrics (TRL's names): ``rewards/chosen``, ``rewards/rejected`` (mean implicit rewards), ``rewards/margins``,
``rewards/accuracy`` (share of pairs with a positive margin), ``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from align.chat_data import collate_preferences
from align.config import ConfigError, ModelConfig, TrainConfig, check_range
from align.forward import logprob_sums, pair_logprob_sums
from align.losses import dpo_loss, ipo_loss
from align.models import eval_mode, make_reference, reference_model
from align.trainer import Trainer
from align.trainers.common import PairTrainerMixin, PreferenceDataConfig, disable_dropout, eval_shards

logger = logging.getLogger(__name__)

__all__ = ["DPOConfig", "DPOTrainer", "pair_logprobs"]


@dataclass
class DPOConfig(PreferenceDataConfig, ModelConfig, TrainConfig):
    """Direct Preference Optimization (sigmoid, label-smoothed or IPO) on preference pairs."""

    output_dir: str = "outputs/dpo"
    """Where metrics.jsonl, config.yaml, checkpoints/, summary.json and the final model go."""
    learning_rate: float = 1e-6
    """Peak learning rate of AdamW (TRL's DPO default; LoRA usually wants 10-50x more)."""
    per_device_eval_batch_size: int = 8
    """Pairs per evaluation (and reference precomputation) forward pass."""
    beta: float = 0.1
    """KL strength: the implicit reward is beta * log(pi / pi_ref); larger keeps the policy closer to pi_ref."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """sigmoid: DPO (with label_smoothing: cDPO); ipo: IPO's squared loss on per-token log-ratios."""
    label_smoothing: float = 0.0
    """cDPO: the probability that a preference label is flipped, in [0, 0.5) (sigmoid loss only)."""
    precompute_ref_logprobs: bool = False
    """Compute the reference log-probs once over the training (and eval) pairs before training, then keep no
    reference model: saves a forward pass per step and, for full fine-tuning, the reference copy's memory."""

    def validate(self) -> None:
        """The shared checks, then ``beta > 0``, ``loss_type``, and ``label_smoothing`` in [0, 0.5) for the
        sigmoid loss only (IPO has no labels to smooth); a ``ConfigError`` names the field."""
        super().validate()
        check_range("beta", self.beta, 0.0, low_inclusive=False)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5, high_inclusive=False)
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ConfigError(
                "label_smoothing applies to loss_type 'sigmoid' only (IPO has no labels to smooth)"
            )


def pair_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, share_prompt: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs ``(2B,)`` (chosen rows, then rejected rows) and token counts ``(2B,)``.

    With ``share_prompt``, from one row per pair, its prompt once (``pair_logprob_sums``; the same numbers),
    where that applies; else from the 2B whole sequences.
    """
    if share_prompt and "shared_ids" in batch:
        out = pair_logprob_sums(model, batch)
        if out is not None:
            return out
    return logprob_sums(model, batch["input_ids"], batch["attention_mask"], batch["mask"])


def _is_peft(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    from align.models import unwrap_model

    return isinstance(unwrap_model(model), PeftModel)


class DPOTrainer(PairTrainerMixin, Trainer):
    """DPO on the Trainer base. ``ref_model`` defaults to none for LoRA (the adapter off) or
    ``precompute_ref_logprobs``, else to a copy of the policy made here, before training."""

    progress_keys = ("loss", "rewards/accuracy", "rewards/margins", "eval/rewards/accuracy")

    def __init__(
        self,
        config: DPOConfig,
        model: torch.nn.Module,
        tokenizer: Any,
        train_dataset: Any,
        *,
        eval_dataset: Any = None,
        ref_model: torch.nn.Module | None = None,
        callbacks: list | None = None,
    ) -> None:
        self.config: DPOConfig = config
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.prepare_data(train_dataset, eval_dataset, tokenizer, what="pairs")
        if config.disable_dropout:
            # Before the reference copy below is made, so that it has none either
            for module in (model, ref_model):
                if module is not None:
                    disable_dropout(module)
        super().__init__(config, model, tokenizer=tokenizer, callbacks=callbacks)
        ref = ref_model
        if ref is None and not config.precompute_ref_logprobs:
            ref = make_reference(self.model)  # None under LoRA: the adapter disabled is the reference
        self.ref_model = (
            self.accelerator.prepare_model(ref, evaluation_mode=True) if ref is not None else None
        )
        if config.precompute_ref_logprobs:
            # Before any step (and before a resume loads trained weights): the policy is still pi_ref.
            self.precompute_reference(self.train_rows)
            if self.eval_rows:
                self.precompute_reference(self.eval_rows)

    @torch.no_grad()
    def reference_logprobs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ref_chosen_logps, ref_rejected_logps)``, each ``(B,)``, for a collated batch."""
        if "ref_chosen_logps" in batch:
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.ref_model is None and not _is_peft(self.model):
            if self.state.step > 0 or not self.config.precompute_ref_logprobs:
                raise RuntimeError(
                    "no reference model: full fine-tuning needs ref_model or precompute_ref_logprobs"
                )
            # precompute_ref_logprobs before the first step: the policy itself is still the reference
            with eval_mode(self.model):
                logps, _ = pair_logprobs(self.model, batch, share_prompt=self.share_prompt)
            return logps.chunk(2)
        with reference_model(self.model, self.ref_model) as ref:
            logps, _ = pair_logprobs(ref, batch, share_prompt=self.share_prompt)
        return logps.chunk(2)

    @torch.no_grad()
    def precompute_reference(self, rows: list[dict]) -> None:
        """Store ``ref_chosen_logps`` / ``ref_rejected_logps`` in each row (sharded over processes)."""
        acc = self.accelerator
        W = acc.num_processes
        index = list(range(len(rows)))
        mine: list[tuple[int, float, float]] = []
        for chunk, w in eval_shards(index, self.config.per_device_eval_batch_size, acc):
            batch = collate_preferences([rows[i] for i in chunk], self.pad_token_id)
            batch = {
                k: v.to(acc.device)
                for k, v in batch.items()
                if k not in ("ref_chosen_logps", "ref_rejected_logps")
            }
            c, r = self.reference_logprobs(batch)
            mine += [(i, float(a), float(b)) for i, a, b, keep in zip(chunk, c, r, w) if keep > 0]
        if W > 1:
            from accelerate.utils import gather_object

            mine = gather_object(mine)
        for i, c, r in mine:
            rows[i]["ref_chosen_logps"] = c
            rows[i]["ref_rejected_logps"] = r
        missing = sum("ref_chosen_logps" not in r for r in rows)
        if missing:
            raise RuntimeError(f"precompute_reference: {missing} rows got no reference log-probs")

    def _pair_loss(
        self,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        ref_chosen: torch.Tensor,
        ref_rejected: torch.Tensor,
        n_chosen: torch.Tensor,
        n_rejected: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        if cfg.loss_type == "ipo":
            return ipo_loss(
                chosen, rejected, ref_chosen, ref_rejected, beta=cfg.beta,
                chosen_lengths=n_chosen, rejected_lengths=n_rejected,
            )  # fmt: skip
        return dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, beta=cfg.beta, label_smoothing=cfg.label_smoothing
        )

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The DPO (or IPO) loss of the micro-batch's pairs (mean over pairs)."""
        # Reference first: its activations are freed before the policy's, which backward needs, are made.
        ref_chosen, ref_rejected = self.reference_logprobs(batch)
        logps, counts = pair_logprobs(self.model, batch, share_prompt=self.share_prompt)
        chosen, rejected = logps.chunk(2)
        loss, metrics = self._pair_loss(chosen, rejected, ref_chosen, ref_rejected, *counts.chunk(2))
        metrics["logps/chosen"] = chosen.detach().mean()
        metrics["logps/rejected"] = rejected.detach().mean()
        return loss, metrics

    def evaluate(self) -> dict[str, float]:
        """Held-out ``eval/loss`` and ``eval/rewards/{chosen,rejected,margins,accuracy}`` (means over pairs)."""
        if not self.eval_rows:
            return {}
        keys = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy"]

        def sums(batch: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:  # keys, then pairs
            out = torch.zeros(len(keys) + 1, dtype=torch.float64, device=w.device)
            ref_chosen, ref_rejected = self.reference_logprobs(batch)
            logps, counts = pair_logprobs(self.model, batch, share_prompt=self.share_prompt)
            real = w > 0  # padding rows of the last shard do not count
            n = int(real.sum())
            if n == 0:
                return out
            (chosen, rejected), (n_chosen, n_rejected) = logps.chunk(2), counts.chunk(2)
            pairs = (chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected)
            loss, m = self._pair_loss(*(t[real] for t in pairs))
            values = {"loss": loss, **m}
            for k, key in enumerate(keys):
                out[k] = float(values[key]) * n  # batch means back to sums
            out[-1] = n
            return out

        total = self.eval_sums(len(keys) + 1, sums)
        n_all = float(total[-1].clamp(min=1))
        out = {f"eval/{key}": float(total[k]) / n_all for k, key in enumerate(keys)}
        out["eval/pairs"] = float(total[-1])
        return out
