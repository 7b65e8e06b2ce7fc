r"""Bradley-Terry reward model: a sequence classifier with one score head, trained on preference pairs.

    P(y_w > y_l | x) = sigmoid(r(x, y_w) - r(x, y_l))
    L = -mean log sigmoid(r(x, y_w) - r(x, y_l) - m) + c * mean((r(x, y_w) + r(x, y_l))^2)

(Ouyang et al. 2022, eq. 1; the margin ``m`` of Llama 2, Touvron et al. 2023, eq. 2; the centring term of
Eisenstein et al. 2023.) The loss is ``align.losses.bradley_terry_loss``, the same likelihood that DPO
maximises with the implicit reward ``beta * log(pi / pi_ref)`` (``align.trainers.dpo``).

The model is ``AutoModelForSequenceClassification`` with ``num_labels=1`` on a causal LM backbone
(``align.models.load_sequence_classifier``): a fresh linear ``score`` head reads the hidden state of each
row's last non-pad token. A pair's chosen and rejected sequences share their prompt, and chat-templated
prompts (system prompt, turn markers) are most of the tokens: by default (``share_prompt``) each pair is one
row, ``[prompt | chosen | rejected]``, under ``align.forward.pair_attention_mask``, so the prompt runs once
and the head reads each completion's last non-pad token. Rewards and gradients equal the plain forward's
(2B rows of prompt + completion, right-padded) to float rounding (tested), with about a third fewer token
positions on data/prefs. (Running the prompt once with a KV cache
gathered for both completions, as ``align.forward`` does for GRPO, saves less here: the completions' padding
and a second forward's weight-gradient and embedding-gradient passes.) The plain forward remains behind the
flag, for DeepSpeed / FSDP, for attention implementations without custom 4D masks (flash attention), and
for classifiers without a per-position ``score`` head. Under LoRA (``task_type="SEQ_CLS"``) the head trains
in full next to the adapters and is saved with them.

A trained reward model serves as a reward function for GRPO / PPO: ``align.rewards.reward_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from align.config import ModelConfig, TrainConfig, check_range
from align.forward import base_model, pair_attention_mask
from align.losses import bradley_terry_loss
from align.trainer import Trainer
from align.trainers.common import PairTrainerMixin, PreferenceDataConfig, disable_dropout

__all__ = ["RewardModelConfig", "RewardModelTrainer", "pair_rewards"]


@dataclass
class RewardModelConfig(PreferenceDataConfig, ModelConfig, TrainConfig):
    """A Bradley-Terry reward model on preference pairs."""

    output_dir: str = "outputs/reward_model"
    """Where metrics.jsonl, config.yaml, checkpoints/, summary.json and the final model go."""
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW (the fresh score head learns at the same rate)."""
    use_margin: bool = False
    """Require r_w - r_l to exceed each pair's margin: its `margin` column, else score_chosen - score_rejected."""
    center_rewards_coefficient: float = 0.0
    """Weight of mean((r_w + r_l)^2), which keeps rewards centred on 0 (TRL: e.g. 0.01); 0 = off."""

    def validate(self) -> None:
        """The shared checks, then ``center_rewards_coefficient >= 0``; a ``ConfigError`` names the field."""
        super().validate()
        check_range("center_rewards_coefficient", self.center_rewards_coefficient, 0.0)


def pair_rewards(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, share_prompt: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar rewards ``(B,)`` of the chosen and the rejected rows of a preference batch (one forward).

    Plain: the 2B whole sequences (``input_ids``, right-padded). With ``share_prompt`` (and a batch from
    ``collate_preferences``, which has ``shared_ids``): one row per pair, its prompt once (see the module
    docstring). The same numbers either way; the plain forward whenever the shared one does not apply.
    """
    if share_prompt and "shared_ids" in batch:
        rewards = _shared_prompt_rewards(model, batch)
        if rewards is not None:
            return rewards
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    rewards = out.logits.squeeze(-1).float()  # (2B,)
    chosen, rejected = rewards.chunk(2)
    return chosen, rejected


def _shared_prompt_rewards(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rewards from one row per pair, ``[prompt | chosen | rejected]`` (``align.forward.pair_attention_mask``).
    ``None`` (use the plain forward) where that does not give the plain forward's numbers."""
    head = base_model(model)
    score = getattr(head, "score", None)  # transformers' classifiers: a linear head on every position
    if not isinstance(score, torch.nn.Module):
        return None
    ids, branch = batch["shared_ids"], batch["shared_branch"]  # (B, S)
    config = head.config.get_text_config() if hasattr(head.config, "get_text_config") else head.config
    pad = getattr(config, "pad_token_id", None)
    # The classifier reads each sequence's last non-pad token: the completion's, which is the whole sequence's
    # only when the completion has one (a completion of padding alone is read in the prompt: plain forward).
    col = torch.arange(ids.shape[1], device=ids.device)
    last = []
    for which in (1, 2):
        counts = (branch == which) & (ids != pad) if pad is not None else branch == which
        if not bool(counts.any(1).all()):
            return None
        last.append((col * counts).argmax(1))  # (B,) rightmost such token
    mask = pair_attention_mask(model, branch)
    if mask is None:
        return None
    captured: list[torch.Tensor] = []
    hook = score.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        # Through the (DDP / peft) wrapper: one forward per backward, as DDP needs.
        model(input_ids=ids, attention_mask=mask, position_ids=batch["shared_positions"], use_cache=False)
    finally:
        hook.remove()
    scores = captured[-1].squeeze(-1).float()  # (B, S): the head at every position
    rows = torch.arange(ids.shape[0], device=ids.device)
    return scores[rows, last[0]], scores[rows, last[1]]


class RewardModelTrainer(PairTrainerMixin, Trainer):
    """Bradley-Terry reward-model training on the Trainer base; ``model`` is a sequence classifier with
    ``num_labels=1`` and ``config.pad_token_id`` set (optionally LoRA)."""

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
        self.prepare_data(train_dataset, eval_dataset, tokenizer, what="pairs")
        if config.disable_dropout:
            disable_dropout(model)
        super().__init__(config, model, tokenizer=tokenizer, callbacks=callbacks)

    @property
    def use_margin(self) -> bool:  # type: ignore[override]
        """The config's ``use_margin``: whether tokenising keeps each pair's margin for the loss (a property,
        as ``PairTrainerMixin`` reads a class attribute where the trainer has no such option)."""
        return self.config.use_margin

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Bradley-Terry loss of the micro-batch's pairs (mean over pairs)."""
        chosen, rejected = pair_rewards(self.model, batch, share_prompt=self.share_prompt)
        loss, metrics = bradley_terry_loss(
            chosen, rejected, margin=batch.get("margin"), center_coef=self.config.center_rewards_coefficient
        )
        metrics["rewards/chosen"] = chosen.detach().mean()
        metrics["rewards/rejected"] = rejected.detach().mean()
        return loss, metrics

    def evaluate(self) -> dict[str, float]:
        """Held-out ``eval/accuracy`` (share of pairs with r_w > r_l), ``eval/loss``, ``eval/margin``."""
        if not self.eval_rows:
            return {}

        def sums(batch: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:  # loss, correct, margin, n
            chosen, rejected = pair_rewards(self.model, batch, share_prompt=self.share_prompt)
            diff = (chosen - rejected).double()
            margin = batch.get("margin")
            logits = diff if margin is None else diff - margin.double()
            w = w.double()
            return torch.stack([
                (-torch.nn.functional.logsigmoid(logits) * w).sum(), ((diff > 0).double() * w).sum(),
                (diff * w).sum(), w.sum(),
            ])  # fmt: skip

        total = self.eval_sums(4, sums)
        n = float(total[3].clamp(min=1))
        return {
            "eval/loss": float(total[0]) / n,
            "eval/accuracy": float(total[1]) / n,
            "eval/margin": float(total[2]) / n,
            "eval/pairs": float(total[3]),
        }
