"""Checkpoints: safetensors + JSON, written atomically, never unpickled.

A run folder::

    runs/NAME/
      config.yaml                       the run's config
      latest                            text: "checkpoints/step_0000200", the newest complete checkpoint
      checkpoints/step_0000200/
        config.yaml                     config that produced these weights
        model.safetensors               full (gathered) model state dict
        optimizer.{safetensors,json}    full optimizer state (single process / FSDP2), or
        optimizer_rank00000.{...}       one per rank (DeepSpeed ZeRO partitions)
        rng_rank00000.{...}             torch / CUDA / numpy / python RNG of each rank
        trainer.json                    step, LR schedule, sampler (epoch, position, seed), engine
        tokenizer/ ...                  whatever Task.on_save writes

Nested state (optimizer, RNG) is split into a safetensors file of its tensors and a JSON tree that
names them (:func:`save_state` / :func:`load_state`), so loading never runs pickle.

Atomicity: a checkpoint is assembled in ``checkpoints/.tmp_step_XXXXXXX``, every file and the folder
are fsynced, the folder is renamed into place, then ``latest`` is replaced (write + fsync + rename).
A crash at any point leaves the previous checkpoint and ``latest`` intact; stale ``.tmp_*`` folders are
removed by the next save.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omni.config import Config, config_from_dict
from omni.io import tensors as tensor_io

Tensor = torch.Tensor
STEP_PREFIX = "step_"
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the run."""


def step_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:07d}"


# ---- nested state <-> (tensors, JSON) ----------------------------------------------------------
def flatten_state(obj: Any, tensors: dict[str, Tensor], path: str = "") -> Any:
    """A JSON-able tree of ``obj`` whose tensors are moved into ``tensors`` (keyed by their path)."""
    if isinstance(obj, Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(obj.copy())
        return {"__ndarray__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: flatten_state(v, tensors, f"{path}.{k}") for k, v in obj.items()}}
        return {"__items__": [[k, flatten_state(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [flatten_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} at {path or '<root>'} in a checkpoint (tensors, numbers, "
                    "strings, lists and dicts only)")


def unflatten_state(tree: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__ndarray__" in tree:
        return tensors[tree["__ndarray__"]].numpy()
    if "__tuple__" in tree:
        return tuple(unflatten_state(v, tensors) for v in tree["__tuple__"])
    if "__items__" in tree:
        return {k: unflatten_state(v, tensors) for k, v in tree["__items__"]}
    return {k: unflatten_state(v, tensors) for k, v in tree["__dict__"].items()}


def save_state(folder: Path, name: str, obj: Any) -> None:
    """Write ``name.safetensors`` (tensors) and ``name.json`` (everything else) into ``folder``."""
    tensors: dict[str, Tensor] = {}
    tree = flatten_state(obj, tensors)
    try:
        tensor_io.save_tensors(tensors, folder / f"{name}.safetensors")
    except tensor_io.NonFiniteWeights as e:
        raise CheckpointError(str(e)) from e
    (folder / f"{name}.json").write_text(json.dumps(tree))


def load_state(folder: Path, name: str) -> Any:
    """Read what :func:`save_state` wrote."""
    try:
        tensors = tensor_io.load_tensors(folder / f"{name}.safetensors")
        tree = json.loads((folder / f"{name}.json").read_text())
    except tensor_io.NonFiniteWeights as e:
        raise CheckpointError(str(e)) from e
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder}: cannot read {name} state ({e}); the checkpoint is incomplete or corrupt") from e
    return unflatten_state(tree, tensors)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may touch, as tensors and plain values."""
    state = {"torch": torch.get_rng_state(), "numpy": list(np.random.get_state()), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(tuple(state["numpy"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---- atomic writing ----------------------------------------------------------------------------
def _fsync_tree(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def begin_save(run_dir: str | Path, step: int) -> Path:
    """Create (fresh) the temporary folder a checkpoint of ``step`` is assembled in. Rank 0 only."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".tmp_*"):  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = ckpt_dir / f".tmp_{step_name(step)}"
    tmp.mkdir()
    return tmp


def tmp_folder(run_dir: str | Path, step: int) -> Path:
    """Where every rank writes its part of the checkpoint of ``step`` (after rank 0's begin_save)."""
    return Path(run_dir) / "checkpoints" / f".tmp_{step_name(step)}"


def finish_save(run_dir: str | Path, step: int, keep: int) -> Path:
    """fsync, move the temporary folder into place, point ``latest`` at it, prune old ones. Rank 0 only."""
    run_dir = Path(run_dir)
    tmp, final = tmp_folder(run_dir, step), run_dir / "checkpoints" / step_name(step)
    _fsync_tree(tmp)
    if final.exists():  # re-saving a step (e.g. after a resume): replace it only once the new one is complete
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    latest_tmp = run_dir / f".{LATEST}.tmp"
    with open(latest_tmp, "w") as fh:
        fh.write(f"checkpoints/{final.name}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(latest_tmp, run_dir / LATEST)
    _fsync_dir(run_dir)
    if keep > 0:
        steps = step_folders(final.parent)
        for old in steps[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def step_folders(checkpoints: Path) -> list[Path]:
    """Complete step folders in ``checkpoints``, oldest first by step number (not by name: past
    9,999,999 steps the zero-padded names stop sorting numerically)."""
    steps = [p for p in checkpoints.glob(f"{STEP_PREFIX}*") if p.is_dir() and p.name[len(STEP_PREFIX):].isdigit()]
    return sorted(steps, key=lambda p: int(p.name[len(STEP_PREFIX):]))


# ---- reading -----------------------------------------------------------------------------------
REQUIRED = ("model.safetensors", "config.yaml", "trainer.json")


def resolve_checkpoint(path: str | Path, required: tuple[str, ...] = REQUIRED) -> Path:
    """A run folder (follows ``latest``), its ``checkpoints/`` folder (newest step) or a step folder
    -> the step folder. ``required``: the files it must hold; ``("model.safetensors",)`` also admits
    a folder of weights alone, such as a shipped tokenizer (omni/assets/codec-tiny). Raises
    :class:`CheckpointError` saying what is missing."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if (path / LATEST).is_file():
        target = (path / (path / LATEST).read_text().strip()).resolve()
        if not target.is_dir():
            raise CheckpointError(f"{path / LATEST} names {target}, which does not exist: the run folder is damaged")
        path = target
    elif path.name == "checkpoints" or (path / "checkpoints").is_dir():
        base = path if path.name == "checkpoints" else path / "checkpoints"
        steps = step_folders(base)
        if not steps:
            raise CheckpointError(f"{path} holds no complete checkpoint (no {base}/{STEP_PREFIX}* folder)")
        path = steps[-1]
    missing = [f for f in required if not (path / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{path} is not a complete checkpoint (missing {', '.join(missing)}); pass a run folder "
            f"(runs/NAME) or a step folder (runs/NAME/checkpoints/{STEP_PREFIX}XXXXXXX)"
        )
    return path


def load_config_file(path: Path) -> Config:
    try:
        return config_from_dict(yaml.safe_load(path.read_text()) or {}, saved=True)
    except (yaml.YAMLError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable config ({e})") from e


def load_tensors(path: Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file; :class:`CheckpointError` if unreadable or non-finite (named)."""
    try:
        return tensor_io.load_tensors(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """Write a checkpoint file; :class:`CheckpointError` naming any NaN/inf tensor (nothing is written)."""
    try:
        tensor_io.save_tensors(tensors, path)
    except tensor_io.NonFiniteWeights as e:
        raise CheckpointError(str(e)) from e


def load_model_state(path: str | Path) -> tuple[Config, dict[str, Tensor]]:
    """Config and model weights of a checkpoint (run folder or step folder)."""
    step_dir = resolve_checkpoint(path)
    return load_config_file(step_dir / "config.yaml"), load_tensors(step_dir / "model.safetensors")


def read_trainer_state(step_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((step_dir / "trainer.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{step_dir}/trainer.json is unreadable ({e}); the checkpoint is corrupt") from e


def config_mismatch(saved: Config, current: Config, sections: tuple[str, ...]) -> list[str]:
    """Keys (``section.field``, or top-level ``key``) whose values differ between two configs."""
    a, b = saved.to_dict(), current.to_dict()
    out = []
    for s in sections:
        x, y = a.get(s), b.get(s)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [f"{s}.{k}: checkpoint {x.get(k)!r} vs now {y.get(k)!r}"
                    for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
        elif x != y:
            out.append(f"{s}: checkpoint {x!r} vs now {y!r}")
    return out
