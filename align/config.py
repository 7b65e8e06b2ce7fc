"""Dataclass configs: one per pipeline, parsed from a YAML file plus CLI overrides.

A pipeline config is a flat dataclass built from the mixins below (``TrainConfig`` for the loop,
``ModelConfig`` for the policy and LoRA, and the algorithm's own fields), so YAML files and the command
line use the same flat names: ``--config recipes/configs/grpo/smollm2.yaml --learning_rate 1e-6``.

The documentation of a field is the docstring written under it. ``field_docs`` reads those docstrings
with ``ast`` and hands them to argparse as help text, so ``--help`` and the source never disagree
(one source of truth, as CleanRL does with its comments).

Parsing is TRL's ``TrlParser`` (a ``transformers.HfArgumentParser``): we do not write a parser. We only
add what it lacks: errors that name the YAML file and the unknown key, ``validate()`` hooks that name the
field and its allowed range, and one type check (``check_types``) that every value passes through,
whether it comes from the YAML file, the command line or Python: argparse converts only the strings it
reads from the command line, so a YAML value used as a default would otherwise reach the trainer as
written (``max_steps: 1.5`` training 2 steps, ``reward_funcs: boxed_format`` read one letter at a time).
"""

import ast
import dataclasses
import functools
import inspect
import math
import numbers
import os
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the field (and file) and what is expected."""


# Validation helpers: each names the field and the allowed range, so users can fix their YAML at once.


def check_range(
    name: str,
    value: float | int | None,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_none: bool = False,
) -> None:
    """Raise ``ConfigError`` naming ``name`` unless ``low <= value <= high`` (bounds optional)."""
    if value is None:
        if allow_none:
            return
        raise ConfigError(f"{name} must be set (got None)")
    lo_ok = low is None or (value >= low if low_inclusive else value > low)
    hi_ok = high is None or (value <= high if high_inclusive else value < high)
    if not (lo_ok and hi_ok):
        lb = "-inf" if low is None else f"{low}"
        hb = "inf" if high is None else f"{high}"
        rng = f"{'[' if low_inclusive and low is not None else '('}{lb}, {hb}{']' if high_inclusive and high is not None else ')'}"
        raise ConfigError(f"{name} must be in {rng}, got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ``ConfigError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


# Types: every field's value is converted to and checked against its annotation, wherever it came from.
_TRUE = ("true", "yes", "y", "t", "1")
_FALSE = ("false", "no", "n", "f", "0")


class _Mismatch(Exception):
    """A value that does not fit a type: ``expected`` names the type, or ``choices`` a Literal's values."""

    def __init__(self, expected: str, choices: tuple[Any, ...] | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.choices = choices


class _FlagError(Exception):
    """Carries a ``ConfigError`` out of an argparse ``type`` function (argparse would turn a ``ValueError``
    into its own usage message and exit; this is not one, so it reaches ``parse_config``)."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["None"] if type(None) in args else []))
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        return f"list of {_type_name(inner)}"
    return getattr(hint, "__name__", str(hint))


def _convert(value: Any, hint: Any, *, text: bool, finite: bool = True) -> Any:
    """``value`` as type ``hint``, or ``_Mismatch``. Nothing is rounded or guessed: an int field refuses
    1.5 and 2.0, a float field accepts ints (as floats) and, when ``finite``, refuses NaN and inf; a
    ``list[X]`` field accepts a list of X or a single X (as a one-element list); ``X | None`` accepts None;
    a Literal its values. ``text``: strings are also read as the type (the command line, and YAML scalars
    that PyYAML leaves as strings, such as ``1e-5``); Python values are taken only as they are.
    Types this check does not know (``Any``, tensors, ...) are left to the config's ``validate()``."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return _convert_union(value, hint, text=text, finite=finite)
    if origin is Literal:
        choices = typing.get_args(hint)
        for c in choices:
            if (value == c and type(value) is type(c)) or (
                text and isinstance(value, str) and value == str(c)
            ):
                return c
        raise _Mismatch(_type_name(hint), choices)
    if origin is list or hint is list:
        (inner,) = typing.get_args(hint) or (Any,)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        try:
            return [_convert(v, inner, text=text, finite=finite) for v in items]
        except _Mismatch as m:
            raise _Mismatch(f"list of {m.expected}", m.choices) from None
    scalar = _SCALARS.get(hint)
    return value if scalar is None else scalar(value, text, finite)


def _convert_union(value: Any, hint: Any, *, text: bool, finite: bool) -> Any:
    """``X | Y | None``: None (or the word none/null as text, for a field that is not a string), else the
    first member type that takes the value."""
    args = typing.get_args(hint)
    others = [a for a in args if a is not type(None)]
    optional = len(others) < len(args)
    if optional and value is None:
        return None
    if (
        optional
        and text
        and str not in others
        and isinstance(value, str)
        and value.lower() in ("none", "null")
    ):
        return None  # "--eval_max_new_tokens None"; a str field keeps the word as written
    failures = []
    for a in others:
        try:
            return _convert(value, a, text=text, finite=finite)
        except _Mismatch as m:
            failures.append(m)
    if len(failures) == 1 and failures[0].choices is not None:
        raise failures[0]
    if len(failures) == 1 and optional:
        raise _Mismatch(f"{failures[0].expected} or None")
    raise _Mismatch(_type_name(hint))


def _to_bool(value: Any, text: bool, finite: bool) -> bool:
    if isinstance(value, bool):
        return value
    if text and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise _Mismatch("bool")


def _to_int(value: Any, text: bool, finite: bool) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)  # numpy's integers too
    if text and isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _Mismatch("int")


def _to_float(value: Any, text: bool, finite: bool) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif text and isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _Mismatch("float") from None
    else:
        raise _Mismatch("float")
    if finite and not math.isfinite(number):
        raise _Mismatch("finite float")
    return number


def _to_str(value: Any, text: bool, finite: bool) -> str:
    if isinstance(value, str):
        return value
    raise _Mismatch("str")


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Each field's declared type, resolved (``from __future__ import annotations`` leaves strings)."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name, f.type)
        out[f.name] = Any if isinstance(hint, str) else hint
    return out


def _mismatch_message(name: str, value: Any, m: _Mismatch, where: str | None) -> str:
    if m.choices is not None:  # check_choice's wording, which the configs' own checks use too
        message = f"{name} must be one of {list(m.choices)}, got {value!r}"
    else:
        message = f"{name}: expected {m.expected}, got {value!r}"
    return message + (f" ({where})" if where else "")


def _convert_field(cls: type, name: str, value: Any, *, text: bool, where: str | None) -> Any:
    """``value`` converted to field ``name``'s type of ``cls``; a ``ConfigError`` on one line names the
    field, the value, the expected type and ``where`` the value came from (a file or a flag)."""
    finite = name not in getattr(cls, "NONFINITE_FIELDS", ())
    try:
        return _convert(value, _field_types(cls)[name], text=text, finite=finite)
    except _Mismatch as m:
        raise ConfigError(_mismatch_message(name, value, m, where)) from None


def check_types(config: Any) -> None:
    """Convert every field of the dataclass ``config`` to its declared type, in place, or raise a
    ``ConfigError`` naming the field, the value and the type (see ``_convert`` for the rules).

    Called by ``TrainConfig.__post_init__`` before ``validate()``, so every config built on it is checked
    however it is made; ``parse_config`` also converts the YAML file's values and the command line's
    strings with the same rules, naming the file or the flag. Float fields must be finite unless the
    config class lists them in ``NONFINITE_FIELDS`` (and documents what inf or NaN means there)."""
    cls = type(config)
    for f in dataclasses.fields(config):
        if hasattr(config, f.name):
            value = _convert_field(cls, f.name, getattr(config, f.name), text=False, where=None)
            object.__setattr__(config, f.name, value)


def _flag_type(cls: type, name: str, flag: str) -> Callable[[str], Any]:
    """The argparse ``type`` of field ``name``: one command-line string (one item of a list field) read
    as the field's type, with errors naming the flag."""
    hint = _field_types(cls)[name]
    if typing.get_origin(hint) in (Union, types.UnionType):
        others = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(others) == 1 and typing.get_origin(others[0]) is list:
            hint = others[0]
    if typing.get_origin(hint) is list:
        (hint,) = typing.get_args(hint) or (Any,)
    finite = name not in getattr(cls, "NONFINITE_FIELDS", ())

    def convert(text: str) -> Any:
        try:
            return _convert(text, hint, text=True, finite=finite)
        except _Mismatch as m:
            raise _FlagError(ConfigError(_mismatch_message(name, text, m, flag))) from None

    convert.__name__ = _type_name(hint)
    return convert


# Mixins. Every field has a default, so dataclass inheritance composes them in any order.


@dataclass
class TrainConfig:
    """The loop: outputs, optimisation, logging, checkpoints. Shared by every trainer."""

    output_dir: str = "outputs/run"
    """Where metrics.jsonl, config.yaml, checkpoints/ and the final model go."""
    overwrite_output_dir: bool = False
    """Allow reusing an output_dir that holds a previous run (its align files are replaced)."""
    resume_from_checkpoint: str | None = None
    """Resume exactly from a checkpoint: a path to output_dir/checkpoints/step-N, or 'latest'."""
    seed: int = 42
    """Seed for torch, numpy and random (model init, data order, sampling)."""
    max_steps: int = 100
    """Number of optimizer steps (for RL trainers: training iterations)."""
    per_device_train_batch_size: int = 8
    """Micro-batch size on each process."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; the global batch is this x batch size x processes."""
    learning_rate: float = 1e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    lr_scheduler_type: str = "constant_with_warmup"
    """A transformers scheduler name: constant_with_warmup, linear, cosine, constant, ..."""
    warmup_steps: int = 0
    """Linear warm-up steps (overrides warmup_ratio when > 0)."""
    warmup_ratio: float = 0.0
    """Warm-up as a fraction of max_steps."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast mode: 'auto' is bf16 on a GPU that supports it and fp32 ('no') on CPU."""
    logging_steps: int = 1
    """Write averaged metrics every N steps to metrics.jsonl, trackers and the progress bar."""
    report_to: list[str] = field(default_factory=list)
    """accelerate trackers to log to as well: tensorboard, wandb, trackio, ... (empty = only JSONL)."""
    run_name: str | None = None
    """Tracker run / project name (default: the output_dir's name)."""
    save_steps: int = 0
    """Save a resumable checkpoint every N steps (0 = only at the end)."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints (oldest deleted first); 0 keeps all."""
    eval_steps: int = 0
    """Run evaluate() every N steps (0 = never during training)."""
    metric_for_best_model: str | None = None
    """An evaluate() metric (e.g. eval/return_mean): keep a copy of the weights where it was best and
    restore them at the end of training, as Stable-Baselines3's EvalCallback (empty = keep the last)."""
    greater_is_better: bool = True
    """Whether a larger metric_for_best_model is better."""
    max_consecutive_nonfinite: int = 5
    """Stop with an error after this many optimizer steps in a row with a non-finite loss or gradient."""
    disable_progress_bar: bool = False
    """Turn off the progress bar (logs still go to metrics.jsonl)."""

    # Monitors (align.monitors): computed from every logged row, logged as monitor/<name>/*, with one warning
    # the first time each fires. Windows count the logged rows that carry a monitor's input; a "change" is
    # the mean of the last window minus the mean of the window before it.
    monitors: bool = True
    """Run the reward-hacking and pathology monitors of align.monitors on every logged row."""
    monitor_window: int = 10
    """Logged rows (that carry the monitor's input) per monitor window; changes compare the last window
    with the one before."""
    monitor_length_change: float = 1.0
    """Length monitor: fire when the mean completion length of the last window is more than (1 + this)
    times, or less than 1 / (1 + this) times, that of the window before (1.0: doubled or halved)."""
    monitor_clipped_ratio: float = 0.2
    """Clipped monitor: fire when more than this fraction of completions hit max_new_tokens (window mean
    of completions/clipped_ratio, or 1 - completions/eos_fraction)."""
    monitor_rise: float = 0.1
    """Reward-vs-eval and proxy-vs-gold monitors: a reward is rising when its change (window means, or
    between evaluations for the training reward) is at least this, in reward units (rewards in [0, 1])."""
    monitor_flat: float = 0.0
    """Reward-vs-eval and proxy-vs-gold monitors: the held-out metric or gold reward is flat or falling
    when its change is at most this."""
    monitor_gold_rewards: list[str] = field(default_factory=lambda: ["reward/math/mean", "reward/*/correct"])
    """Proxy-vs-gold monitors: metric-key globs (* = one path segment) of the correctness reward; the first
    present is the gold (the math verifier, or a rubric's verifier criterion named 'correct')."""
    monitor_proxy_rewards: list[str] = field(default_factory=lambda: ["reward/*/mean", "reward/*/*"])
    """Proxy-vs-gold monitor: metric-key globs of the proxies watched against the gold. The default is
    every reward function (reward/<name>/mean: boxed_format, tags_format, length, rubrics) and every rubric
    criterion (reward/<rubric>/<criterion>), less the gold, the reward models and count/spread statistics."""
    monitor_reward_models: list[str] = field(default_factory=lambda: ["reward/reward_model/mean"])
    """Reward-model monitor: metric-key globs of learned reward models' scores, watched against the gold
    on the same completions (Gao et al. 2022)."""
    monitor_rm_rise: float = 0.5
    """Reward-model monitor: the reward model's score is rising when its window change is at least this
    (in its own units: a Bradley-Terry model's logits)."""
    monitor_repetition: float = 0.3
    """Repetition monitor: fire when the window mean of completions/repeated_ngram_rate (the fraction of a
    completion's word 4-grams that repeat an earlier one) exceeds this."""
    monitor_entropy_fraction: float = 0.1
    """Entropy monitor: fire when the window mean of the token entropy falls below this fraction of its
    mean over the run's first window."""
    monitor_entropy_floor: float = 0.01
    """Entropy monitor: fire when the window mean of the token entropy falls below this (nats)."""
    monitor_kl_spike: float = 5.0
    """KL monitor: fire when a row's kl exceeds this many times the median kl of the previous window."""
    monitor_kl_floor: float = 0.01
    """KL monitor: a spike must also exceed this kl (the first steps' KL grows from ~0 by large factors)."""
    monitor_zero_std_fraction: float = 0.75
    """Zero-variance monitor: fire when the window mean of reward/zero_std_group_fraction (GRPO groups whose
    completions all got the same reward) exceeds this."""
    monitor_flagged_fraction: float = 0.05
    """Injection monitor: fire when the fraction of completions a rubric's injection detector flagged
    (reward/<rubric>/flagged over completions/count) exceeds this."""

    def __post_init__(self) -> None:
        check_types(self)
        self.validate()

    def validate(self) -> None:
        """Check every field; subclasses extend this and call ``super().validate()``."""
        check_range("max_steps", self.max_steps, 1)
        check_range("per_device_train_batch_size", self.per_device_train_batch_size, 1)
        check_range("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        check_range("learning_rate", self.learning_rate, 0.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("adam_beta1", self.adam_beta1, 0.0, 1.0, high_inclusive=False)
        check_range("adam_beta2", self.adam_beta2, 0.0, 1.0, high_inclusive=False)
        check_range("adam_epsilon", self.adam_epsilon, 0.0, low_inclusive=False)
        check_range("warmup_steps", self.warmup_steps, 0)
        check_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        check_range("max_grad_norm", self.max_grad_norm, 0.0)
        check_range("logging_steps", self.logging_steps, 1)
        check_range("save_steps", self.save_steps, 0)
        check_range("save_total_limit", self.save_total_limit, 0)
        check_range("eval_steps", self.eval_steps, 0)
        if self.metric_for_best_model and not self.eval_steps:
            raise ConfigError(
                f"metric_for_best_model={self.metric_for_best_model!r} needs eval_steps > 0 (evaluations to compare)"
            )
        check_range("max_consecutive_nonfinite", self.max_consecutive_nonfinite, 1)
        check_range("monitor_window", self.monitor_window, 1)
        for name in ("monitor_length_change", "monitor_rm_rise", "monitor_entropy_floor", "monitor_kl_floor"):
            check_range(name, getattr(self, name), 0.0)
        check_range("monitor_rise", self.monitor_rise, 0.0, low_inclusive=False)
        check_range("monitor_kl_spike", self.monitor_kl_spike, 1.0)
        for name in (
            "monitor_clipped_ratio",
            "monitor_repetition",
            "monitor_entropy_fraction",
            "monitor_zero_std_fraction",
            "monitor_flagged_fraction",
        ):
            check_range(name, getattr(self, name), 0.0, 1.0)
        check_choice("mixed_precision", self.mixed_precision, ["auto", "no", "bf16", "fp16"])
        from transformers import SchedulerType

        allowed = [s.value for s in SchedulerType]
        check_choice("lr_scheduler_type", self.lr_scheduler_type, allowed)
        self.report_to = [r for r in self.report_to if r not in ("", "none")]


@dataclass
class ModelConfig:
    """Which model to train and how: dtype, LoRA adapters, memory options."""

    model_name_or_path: str | None = None
    """Hub id or local path; empty = the embedded SmolLM2-135M-Instruct (no download needed)."""
    dtype: str = "auto"
    """Weights dtype: auto (bf16 on a GPU with bf16 support, fp32 on CPU), float32, bfloat16, float16."""
    trust_remote_code: bool = False
    """Allow model repos to run their own Python code. Off unless you trust the repo."""
    attn_implementation: str | None = None
    """Attention kernel: eager, sdpa, flash_attention_2 (default: transformers' choice)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""
    use_lora: bool = False
    """Train a LoRA adapter instead of all weights (the reference policy is the adapter disabled)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters: names such as q_proj v_proj, or all-linear."""
    merge_lora_on_save: bool = False
    """Save merged full weights at the end instead of the adapter alone."""

    def validate(self) -> None:
        # Cooperative: a pipeline config mixes ModelConfig with TrainConfig and its own fields.
        parent = getattr(super(), "validate", None)
        if parent is not None:
            parent()
        check_choice("dtype", self.dtype, ["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"])
        check_range("lora_r", self.lora_r, 1)
        check_range("lora_alpha", self.lora_alpha, 0, low_inclusive=False)
        check_range("lora_dropout", self.lora_dropout, 0.0, 1.0, high_inclusive=False)
        if self.model_name_or_path == "":
            self.model_name_or_path = None

    def lora_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``align.models.apply_lora``."""
        targets: Any = self.lora_target_modules
        if list(targets) == ["all-linear"]:
            targets = "all-linear"
        return {
            "r": self.lora_r,
            "alpha": self.lora_alpha,
            "dropout": self.lora_dropout,
            "target_modules": targets,
        }


def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field of ``cls`` (and its bases) to the docstring written under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        tree = ast.parse(source)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:] + [None]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _attach_help(cls: type) -> None:
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in docs and "help" not in f.metadata:
            # argparse formats help with %-interpolation (``%(default)s``): a literal % must be %%.
            f.metadata = types.MappingProxyType({**f.metadata, "help": docs[f.name].replace("%", "%%")})


def _read_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file {path!r} does not exist")
    with open(p) as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected a YAML mapping of field: value, got {type(data).__name__}"
        )
    return data


def parse_config(cls: type[C], args: Sequence[str] | None = None) -> C:
    """Parse ``cls`` from ``--config FILE.yaml`` (optional) and CLI overrides; CLI wins over YAML.

    Unknown keys in the YAML file and unknown flags are errors that name the key. Every value is converted
    to its field's type (``check_types``'s rules), or a ``ConfigError`` names the field, the value, the
    type and the file or flag it came from; invalid values then raise ``ConfigError`` from the config's
    ``validate()``, naming the field and the allowed range.
    """
    from trl import TrlParser

    _attach_help(cls)
    aliases: dict[str, str] = getattr(cls, "ALIASES", {})
    given = list(sys.argv[1:] if args is None else args)
    argv = _translate_flags(given, aliases)
    known = {f.name for f in dataclasses.fields(cls)}
    data: dict[str, Any] = {}
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a path to a YAML file")
        config_path = argv[i + 1]
        del argv[i : i + 2]
        data = _translate_keys(_read_yaml(config_path), aliases, f"config file {config_path}")
        unknown = sorted(k for k in data if k not in known and k != "env")
        if unknown:
            close = {k: _close_match(k, known | set(aliases)) for k in unknown}
            hints = ", ".join(f"{k!r}" + (f" (did you mean {v!r}?)" if v else "") for k, v in close.items())
            raise ConfigError(f"config file {config_path}: unknown key(s) {hints} for {cls.__name__}")
        env = data.pop("env", {}) or {}
        if not isinstance(env, dict):
            raise ConfigError(f"config file {config_path}: 'env' must be a mapping of variable: value")
        # argparse converts only command-line strings: a YAML value would become a default as written.
        where = f"config file {config_path}"
        data = {k: _convert_field(cls, k, v, text=True, where=where) for k, v in data.items()}
        os.environ.update({str(k): str(v) for k, v in env.items()})
    parser = TrlParser(dataclass_types=[cls])
    parser.set_defaults_with_config(**data)
    flags = _flags_given(given, aliases)
    for action in parser._actions:
        if action.dest in known and action.type is not None:
            action.type = _flag_type(cls, action.dest, flags.get(action.dest, f"--{action.dest}"))
    try:
        (config,) = parser.parse_args_into_dataclasses(args=argv)
    except _FlagError as e:
        raise e.error from None
    except ConfigError:
        raise
    except ValueError as e:
        where = f" (config file {config_path})" if config_path else ""
        raise ConfigError(f"{e}{where}") from e
    return config  # type: ignore[return-value]


def _translate_keys(data: dict[str, Any], aliases: dict[str, str], where: str) -> dict[str, Any]:
    """YAML keys with TRL's names (``aliases``: alias -> our field) under our names; both is an error."""
    out = dict(data)
    for alias, name in aliases.items():
        if alias in out:
            if name in out:
                raise ConfigError(f"{where}: {alias!r} and {name!r} are the same field ({name}); give one")
            out[name] = out.pop(alias)
    return out


def _translate_flags(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """``--alias value`` / ``--alias=value`` as ``--field``; both spellings of one field is an error."""
    out, seen = [], {}
    for tok in argv:
        if tok.startswith("--"):
            flag, eq, value = tok[2:].partition("=")
            name = aliases.get(flag, flag)
            if name in seen and seen[name] != flag:
                raise ConfigError(f"--{seen[name]} and --{flag} set the same field ({name}); give one")
            seen[name] = flag
            tok = f"--{name}{eq}{value}"
        out.append(tok)
    return out


def _flags_given(argv: list[str], aliases: dict[str, str]) -> dict[str, str]:
    """Field name -> the flag as the user spelled it (``--beta`` for kl_coef), for error messages."""
    out = {}
    for tok in argv:
        if tok.startswith("--"):
            flag = tok[2:].partition("=")[0]
            out[aliases.get(flag, flag).replace("-", "_")] = f"--{flag}"
    return out


def _close_match(key: str, known: set[str]) -> str | None:
    import difflib

    m = difflib.get_close_matches(key, sorted(known), n=1)
    return m[0] if m else None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain dict of the config's fields (YAML-safe types)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (the file reloads with ``--config``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(config), f, sort_keys=False)
    return path


def load_config(cls: type[C], path: str | Path) -> C:
    """Rebuild a config from a saved ``config.yaml`` (unknown keys are errors)."""
    return parse_config(cls, ["--config", str(path)])
