"""What the LLM recipes (``recipes/sft.py``, ``reward_model.py``, ``dpo.py``, ``grpo_math.py``, ...) share: parse
the config, load the model, tokenizer and LoRA adapter it names, load the training and held-out data, and at
the end save the model and write ``summary.json``. A recipe's ``main()`` is then its algorithm's trainer and
its summary (the classic-RL recipes share the first step, :func:`parse_recipe_config`)::

    cfg = parse_recipe_config(DPOConfig, args)
    model, tokenizer = load_policy_and_tokenizer(cfg)
    train, heldout = load_chat_datasets(cfg, default="prefs")
    trainer = DPOTrainer(cfg, model, tokenizer, train, eval_dataset=heldout)
    trainer.train()
    return finish_recipe(trainer, cfg, {"steps": trainer.state.step}, message="done")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from align.config import ModelConfig, parse_config

__all__ = [
    "check_before_loading",
    "finish_recipe",
    "load_chat_datasets",
    "load_classifier_and_tokenizer",
    "load_policy_and_tokenizer",
    "parse_recipe_config",
    "reset_accelerate_state",
]

C = TypeVar("C")


def parse_recipe_config(
    cls: type[C], args: Sequence[str] | None = None, *, default_config: str | Path | None = None
) -> C:
    """The recipe's config: ``parse_config(cls, args)`` (YAML from ``--config``, then CLI flags), or with
    ``default_config`` (a classic-RL recipe's YAML, used without ``--config``)
    ``align.rl.common.parse_rl_config``; then the checks that need no model (:func:`check_before_loading`).
    A bad config raises ``ConfigError`` naming the field; the recipe's ``run_main`` reports it on one line.
    """
    if default_config is None:
        cfg = parse_config(cls, args)
    else:
        from align.rl.common import parse_rl_config

        cfg = parse_rl_config(cls, args, default_config)
    check_before_loading(cfg)
    return cfg


def check_before_loading(cfg: Any) -> None:
    """What can be refused before any model loads, refused now, with nothing written: the output directory
    (a previous run without ``--resume_from_checkpoint`` / ``--overwrite_output_dir``, a file in its place,
    no write permission; ``align.trainer.check_output_dir`` with ``check_only``) and a
    ``model_name_or_path`` that is neither a model folder nor a hub id (``align.models.check_model_path``).
    The trainer runs the same output-directory guard again when it starts, and then makes the folder."""
    from align.trainer import check_output_dir

    check_output_dir(
        cfg.output_dir,
        resume=bool(cfg.resume_from_checkpoint),
        overwrite=cfg.overwrite_output_dir,
        check_only=True,
    )
    if getattr(cfg, "model_name_or_path", None):
        from align.models import EMBEDDED_ALIASES, check_model_path

        if str(cfg.model_name_or_path).strip() not in EMBEDDED_ALIASES:
            check_model_path(cfg.model_name_or_path)


def _seed_init(cfg: ModelConfig) -> None:
    """Seed the random generators with the run's ``seed`` before new weights (a LoRA adapter, a score head)
    are drawn: ``--seed`` then decides them, and two runs in one process start alike."""
    seed = getattr(cfg, "seed", None)
    if seed is not None:
        from accelerate.utils import set_seed

        set_seed(seed)


def load_policy_and_tokenizer(cfg: ModelConfig) -> tuple[Any, Any]:
    """The causal LM and tokenizer of ``cfg.model_name_or_path`` (empty: the embedded model), with the
    config's dtype, attention kernel, gradient checkpointing and ``trust_remote_code``; wrapped in a fresh
    LoRA adapter when ``cfg.use_lora`` (``cfg.lora_kwargs()``). Returns ``(model, tokenizer)``."""
    from align.models import apply_lora, load_causal_lm, load_tokenizer

    _seed_init(cfg)
    tokenizer = load_tokenizer(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    model = load_causal_lm(
        cfg.model_name_or_path,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
        gradient_checkpointing=cfg.gradient_checkpointing,
        attn_implementation=cfg.attn_implementation,
    )
    if cfg.use_lora:
        model = apply_lora(model, **cfg.lora_kwargs())
    return model, tokenizer


def load_classifier_and_tokenizer(cfg: ModelConfig, *, num_labels: int = 1) -> tuple[Any, Any]:
    """A sequence classifier (a fresh ``score`` head of ``num_labels`` outputs on the causal LM backbone of
    ``cfg.model_name_or_path``, ``config.pad_token_id`` set from the tokenizer) and its tokenizer: the
    reward model, or a value model. Honours dtype, gradient checkpointing and ``trust_remote_code``; with
    ``cfg.use_lora`` a LoRA adapter of task ``SEQ_CLS`` (the head trains in full and is saved with it).
    Returns ``(model, tokenizer)``."""
    from align.models import apply_lora, load_sequence_classifier, load_tokenizer

    _seed_init(cfg)
    tokenizer = load_tokenizer(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    model = load_sequence_classifier(
        cfg.model_name_or_path,
        num_labels=num_labels,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
        pad_token_id=tokenizer.pad_token_id,
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.use_lora:
        model = apply_lora(model, task_type="SEQ_CLS", **cfg.lora_kwargs())
    return model, tokenizer


def load_chat_datasets(cfg: Any, *, default: str) -> tuple[Any, Any]:
    """``(train, heldout)`` rows for a config with ``dataset_name``, ``dataset_split``, ``eval_dataset_name``
    and ``eval_split`` (``align.trainers.common.ChatDataConfig``): see ``align.chat_data.load_train_and_eval``.
    ``default`` is the shipped folder used when ``dataset_name`` is empty: ``"sft"`` or ``"prefs"``.
    ``heldout`` is ``None`` when there is no held-out split (a single training file)."""
    from align.chat_data import load_train_and_eval

    return load_train_and_eval(
        cfg.dataset_name, cfg.dataset_split, cfg.eval_dataset_name, cfg.eval_split, default=default
    )


def finish_recipe(
    trainer: Any, cfg: Any, summary: dict[str, Any], message: str | None = None
) -> dict[str, Any]:
    """End a recipe: save the final model to ``<output_dir>/model`` (the LoRA adapter, or merged weights with
    ``cfg.merge_lora_on_save``; ``align.trainers.common.save_final_model``), add the trainer's data counts
    (``data/skipped/<reason>``, ``data/truncated``, ... from ``trainer.data_metrics``, if it has them) to
    ``summary``, write it to ``<output_dir>/summary.json`` and print ``message`` on the main process.
    Returns the summary."""
    from align.trainers.common import save_final_model

    save_final_model(
        trainer, Path(cfg.output_dir) / "model", merge_lora=getattr(cfg, "merge_lora_on_save", False)
    )
    counts = getattr(trainer, "data_metrics", {})
    summary = {**summary, **{k: v for k, v in counts.items() if "skipped" in k or "truncated" in k}}
    if trainer.accelerator.is_main_process:
        Path(cfg.output_dir, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if message:
            print(message)
    trainer.record_outputs()
    return summary


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide singletons (``AcceleratorState``, ``GradientState``,
    ``PartialState``), so the next ``Accelerator`` in this process starts clean. For running several
    trainers or recipes one after another in one process, as the PPO-RLHF pipeline runs its stages; each
    would otherwise inherit the first one's mixed precision and accumulation settings."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
