"""The ground floor of every file convlens writes or resumes from: atomic writes, and checkpoints
(safetensors with their metadata embedded) with one writer and one reader."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from convlens._errors import ConvlensError


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write` on a temporary name beside `path`, then rename it into place, so an
    interrupted run never leaves a half-written file that a later resume would trust. The
    temporary name carries the process id: processes writing the same file (ranks under
    torchrun) never write into one another's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    write(partial)
    partial.replace(path)
    return path


def safe_name(name: str) -> str:
    """A layer or stage name usable in a file name (dots kept, anything else odd replaced)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def write_json(path: str | Path, data: object) -> Path:
    """Save JSON-serialisable data, indented, atomically."""
    return replace_atomically(path, lambda p: p.write_text(json.dumps(data, indent=2)))


def write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Tensors as safetensors with `meta` embedded (one atomic file, so a reader never sees
    tensors and metadata from different moments), and `meta` again as JSON beside it."""
    path = Path(path)
    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
    replace_atomically(
        path, lambda p: save_file(contiguous, str(p), metadata={"convlens": json.dumps(meta)})
    )
    write_json(path.with_suffix(".json"), meta)
    return path


def read_checkpoint_meta(path: str | Path) -> dict:
    """The convlens metadata embedded in a safetensors file (empty dict if none)."""
    try:
        with safe_open(str(path), framework="pt") as file:
            raw = (file.metadata() or {}).get("convlens")
    except (SafetensorError, OSError) as error:
        raise ConvlensError(f"cannot read {path} as safetensors: {error}") from None
    return json.loads(raw) if raw else {}


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and embedded metadata of a file written by `write_checkpoint`."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ConvlensError(f"cannot read {path} as safetensors: {error}") from None
    return tensors, read_checkpoint_meta(path)


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint and its JSON twin, if present."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)
