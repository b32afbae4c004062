"""Where convlens keeps its cache (trained models, downloaded data)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$CONVLENS_CACHE`, else `$XDG_CACHE_HOME/convlens`, else `~/.cache/convlens`."""
    if os.environ.get("CONVLENS_CACHE"):
        return Path(os.environ["CONVLENS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "convlens"


def default_model_dir(name: str = "zfnet-fashion") -> Path:
    """Where the trained built-in model `name` and its epoch checkpoints live in the user cache."""
    return cache_dir() / "models" / name


def epoch_checkpoints(folder: str | Path) -> list[str]:
    """The epoch checkpoints (`epoch-NNN.safetensors`) of a training folder, in epoch order."""
    return sorted(str(p) for p in Path(folder).glob("epoch-*.safetensors"))
