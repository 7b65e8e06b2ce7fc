"""Checkpoint files that load without running code: tensors in safetensors, everything else in JSON.

accelerate's ``save_state`` pickles registered objects and ``load_state`` unpickles them
(``weights_only=False``), so a checkpoint downloaded from someone else could run code on resume. Here a
checkpoint holds only:

* ``model.safetensors`` (safetensors' ``save_model``, which handles tied weights);
* ``optimizer.pt``: the optimizer's and LR schedule's ``state_dict`` (tensors, numbers, lists), read back
  with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers;
* per process ``rank<r>.json`` + ``rank<r>.safetensors``: the loop's state, random generators, the
  trainer's extra state and the update steps still pending (:func:`pack` / :func:`unpack`);
* ``COMPLETE``, written last: a directory without it (a kill mid-write) is not a checkpoint.

Nothing here imports a class named in a file: dataclasses are rebuilt only from the types the trainer
lists (:func:`unpack`'s ``types``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or damaged; the message names the directory and the file."""


def pack(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """``obj`` as JSON, with each tensor (or numeric numpy array) moved into ``tensors`` under a fresh key.

    Handles dicts (string keys), lists, tuples, dataclass instances, numbers, strings, None, numpy scalars.
    """
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        key = f"{prefix}{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, np.generic):
        return {"__npscalar__": obj.item(), "dtype": str(obj.dtype)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: pack(getattr(obj, f.name), tensors, prefix) for f in dataclasses.fields(obj)}
        return {"__dataclass__": type(obj).__qualname__, "fields": fields}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            return {
                "__items__": [[pack(k, tensors, prefix), pack(v, tensors, prefix)] for k, v in obj.items()]
            }
        return {"__dict__": {k: pack(v, tensors, prefix) for k, v in obj.items()}}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [pack(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}: use tensors, numbers, strings, lists, dicts")


def unpack(data: Any, tensors: dict[str, torch.Tensor], types: dict[str, type] | None = None) -> Any:
    """Invert :func:`pack`. ``types`` maps a dataclass's ``__qualname__`` to the class allowed to be rebuilt."""
    if isinstance(data, list):
        return [unpack(v, tensors, types) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tensor__" in data:
        return tensors[data["__tensor__"]]
    if "__ndarray__" in data:
        return tensors[data["__ndarray__"]].numpy().copy()
    if "__npscalar__" in data:
        return np.dtype(data["dtype"]).type(data["__npscalar__"])
    if "__tuple__" in data:
        return tuple(unpack(v, tensors, types) for v in data["__tuple__"])
    if "__items__" in data:
        return {unpack(k, tensors, types): unpack(v, tensors, types) for k, v in data["__items__"]}
    if "__dict__" in data:
        return {k: unpack(v, tensors, types) for k, v in data["__dict__"].items()}
    if "__dataclass__" in data:
        name = data["__dataclass__"]
        cls = (types or {}).get(name)
        if cls is None:
            raise CheckpointError(f"checkpoint holds a {name!r}, which this trainer does not load")
        return cls(**{k: unpack(v, tensors, types) for k, v in data["fields"].items()})
    raise CheckpointError(f"unknown entry in checkpoint state: {sorted(data)}")


def save_state(path: Path, state: Any) -> None:
    """Write ``state`` as ``path.json`` + ``path.safetensors``."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = pack(state, tensors)
    save_file(tensors, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps(tree))


def load_state(path: Path, types: dict[str, type] | None = None) -> Any:
    """Read what :func:`save_state` wrote; a damaged file is a ``CheckpointError`` naming it."""
    from safetensors.torch import load_file

    for suffix in (".json", ".safetensors"):
        if not path.with_suffix(suffix).is_file():
            raise CheckpointError(f"{path.with_suffix(suffix)}: missing from the checkpoint")
    try:
        tensors = load_file(str(path.with_suffix(".safetensors")))
        tree = json.loads(path.with_suffix(".json").read_text())
    except Exception as e:  # safetensors and json raise several types for a truncated file
        raise CheckpointError(f"{path}.(json|safetensors): unreadable ({type(e).__name__}: {e})") from None
    return unpack(tree, tensors, types)


def load_torch_file(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never arbitrary objects."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not loadable as plain tensors ({type(e).__name__}: {e})") from None


# --- Random generators


def rng_state() -> dict[str, Any]:
    """Python's, numpy's global and torch's (CPU and CUDA) random states, as tensors and JSON values."""
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "python_version": random.getstate()[0],
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((state["python_version"], tuple(py[:-1]), py[-1]))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- Directories


def step_of(path: Path) -> int:
    """N of a ``step-N`` directory."""
    return int(_STEP_DIR.fullmatch(path.name).group(1))  # type: ignore[union-attr]


def list_checkpoints(root: Path, *, complete_only: bool = True) -> list[Path]:
    """``root/step-N`` directories sorted by N; by default only those with the ``COMPLETE`` marker."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name)]
    if complete_only:
        found = [p for p in found if (p / COMPLETE).is_file()]
    return sorted(found, key=step_of)


def temporary_dir(final: Path) -> Path:
    """A fresh sibling of ``final`` to write into before :func:`commit_dir` renames it into place."""
    tmp = final.parent / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path, marker: dict[str, Any]) -> None:
    """Write the completion marker last, then rename ``tmp`` to ``final`` (replacing an older one)."""
    (tmp / COMPLETE).write_text(json.dumps(marker) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
