"""Resume checkpoints: written atomically, read with `weights_only=True` (bundle.load_checkpoint) only.

A checkpoint is one dict of tensors and plain values (model and optimizer state, step, epoch, RNG state,
the recipe as a dict). Shared models are not these files: `export` writes safetensors bundles.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from voiceclone.bundle import load_checkpoint as load  # the one reader; inference code owns it

__all__ = ["save_atomic", "load", "all_finite"]


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash leaves the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def all_finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())
