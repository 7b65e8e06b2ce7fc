"""Held-out reward and KL to the reference: the two axes of the reward-KL frontier (Rafailov et al. 2023, Fig. 2).

For each held-out prompt, completions are sampled from the policy at temperature 1 (the distribution the
KL is about), scored by a reward function (a reward model, or a verifier), and the sequence KL is
estimated on the same samples:

    KL(pi || pi_ref)(x) = E_{y ~ pi(.|x)} [ sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t) ]

an unbiased Monte-Carlo estimate (k1 summed over tokens). PPO and DPO policies are evaluated by the same
function, so their points fall on one plot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from align.forward import rollout_logprobs
from align.generation import Generator, SamplingParams, make_generator
from align.models import eval_mode, reference_model

__all__ = ["reward_and_kl"]


@torch.no_grad()
def reward_and_kl(
    policy: nn.Module,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    reward_fn: Callable,
    *,
    reference: nn.Module | None = None,
    max_new_tokens: int = 48,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    generator: Generator | None = None,
) -> dict[str, float]:
    """Mean held-out reward and mean sequence KL(pi || pi_ref) of ``policy`` on ``rows``' prompts: ``score``
    (mean reward), ``score_std``, ``kl`` (nats), ``mean_length`` and ``n``.

    ``rows`` have a ``prompt`` (messages or text) and the columns ``reward_fn`` (a TRL-contract reward or a
    ``CombinedReward``, whose ``total`` is used) reads. ``reference`` ``None`` is ``policy`` with its LoRA
    adapter disabled. The same ``seed`` gives the same ``num_samples`` samples per prompt for one policy.
    """
    if not rows:
        raise ValueError("reward_and_kl: no held-out rows")
    gen = generator or make_generator("hf", policy, tokenizer)
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        num_generations=num_samples,
        seed=seed,
        return_logprobs=False,
    )
    scores: list[float] = []
    kls: list[float] = []
    lengths: list[float] = []
    with eval_mode(policy):
        per_call = max(1, batch_size // num_samples)
        for start in range(0, len(rows), per_call):
            chunk = list(rows[start : start + per_call])
            rollout = gen.generate([r["prompt"] for r in chunk], params)
            scores += _scores(reward_fn, chunk, rollout, num_samples)
            lp = rollout_logprobs(policy, rollout, batch_size)
            with reference_model(policy, reference) as ref:
                ref_lp = rollout_logprobs(ref, rollout, batch_size)
            kls += (lp - ref_lp).sum(-1).tolist()
            lengths += rollout.completion_lengths.float().tolist()
    return _summary(scores, kls, lengths)


def _scores(reward_fn: Callable, chunk: list[dict[str, Any]], rollout: Any, num_samples: int) -> list[float]:
    """The rewards of a rollout of ``chunk``'s prompts (``num_samples`` each), NaN where not applicable."""
    completions: list[Any] = rollout.completion_texts
    if isinstance(chunk[0]["prompt"], list):
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    columns = {k: [r[k] for r in chunk for _ in range(num_samples)] for k in chunk[0] if k != "prompt"}
    out = reward_fn(rollout.prompts, completions, **columns)
    return [float("nan") if s is None else float(s) for s in getattr(out, "total", out)]


def _summary(scores: list[float], kls: list[float], lengths: list[float]) -> dict[str, float]:
    """Means over the samples (the score over its finite values only: NaN = not applicable)."""
    s = torch.tensor(scores)
    finite = s[torch.isfinite(s)]
    return {
        "score": float(finite.mean()) if finite.numel() else float("nan"),
        "score_std": float(finite.std()) if finite.numel() > 1 else 0.0,
        "kl": float(torch.tensor(kls).mean()),
        "mean_length": float(torch.tensor(lengths).mean()),
        "n": float(len(scores)),
    }


def reward_kl_evaluator(
    dataset: Any, *, limit: int | None, num_samples: int = 1
) -> Callable[[Any], dict[str, float]]:
    """PPO-RLHF's in-training evaluation (``Trainer(evaluator=...)``): ``reward_and_kl`` of the trainer's
    policy against its reference on the first ``limit`` held-out prompts, scored by the trainer's reward,
    sampled at temperature 1 with the run's seed; metrics ``eval/score``, ``eval/kl``, ..."""
    rows = [dataset[i] for i in range(len(dataset) if not limit else min(limit, len(dataset)))]

    def evaluate(trainer: Any) -> dict[str, float]:
        cfg = trainer.config
        res = reward_and_kl(
            trainer.policy,
            trainer.tokenizer,
            rows,
            trainer.reward,
            reference=trainer.ref_model,
            max_new_tokens=cfg.max_new_tokens,
            num_samples=num_samples,
            seed=cfg.seed,
            batch_size=cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
            generator=trainer.generator,
        )
        return {f"eval/{k}": v for k, v in res.items()}

    return evaluate
