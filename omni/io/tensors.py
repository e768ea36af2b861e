"""Weight files (safetensors) that never hold NaN or infinity, in either direction.

A weight whose bytes were damaged (a flipped 0xFF run reads as NaN) loads without complaint in
safetensors, and the model then decodes ``<|pad|>`` forever or fails inside ``torch.multinomial``.
Every omni path that reads or writes weights goes through :func:`load_tensors` /
:func:`save_tensors` (or calls :func:`check_finite` on a state it built itself, e.g. from a GGUF
file), so a bad tensor is refused by name where it enters or would leave.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

Tensor = torch.Tensor


class NonFiniteWeights(ValueError):
    """Floating-point tensors hold NaN or infinite values; the message names them."""


def nonfinite(tensors: Mapping[str, Tensor]) -> list[str]:
    """Names of floating-point (or complex) tensors holding a NaN or an infinity, in order."""
    return [k for k, v in tensors.items()
            if (v.is_floating_point() or v.is_complex()) and v.numel() and not bool(torch.isfinite(v).all())]


def check_finite(tensors: Mapping[str, Tensor], where: str) -> None:
    """Raise :class:`NonFiniteWeights` naming every non-finite tensor of ``tensors`` (from ``where``)."""
    bad = nonfinite(tensors)
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise NonFiniteWeights(f"{where}: tensor(s) {shown} hold NaN or infinite values; the weights are corrupt "
                               "or training diverged — use an earlier checkpoint")


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file, after :func:`check_finite`. Raises :class:`NonFiniteWeights`,
    or ValueError for a file that is not safetensors."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e}); the file is corrupt") from e
    check_finite(tensors, str(path))
    return tensors


def save_tensors(tensors: Mapping[str, Tensor], path: str | Path) -> None:
    """Write ``tensors`` (moved to CPU, made contiguous) to ``path``; refuses non-finite ones first."""
    check_finite(tensors, f"refusing to write {path}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_sha256(folder: str | Path, expected: Mapping[str, str], remedy: str) -> None:
    """Check the sha256 of each file ``folder / name`` against ``expected[name]`` (hex digests), as a
    shipped asset's model card records them. Raises ValueError naming the first file that differs or
    is missing; ``remedy`` (what the user can do) ends the message."""
    folder = Path(folder)
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path} is missing: the shipped weights in {folder} are incomplete. {remedy}")
        found = file_sha256(path)
        if found != digest:
            raise ValueError(f"{path} has sha256 {found}, expected {digest}: the file is damaged, or was replaced "
                             f"without updating the recorded digest and the model card. {remedy}")
