"""File writers. Every write goes to a temporary name first and is renamed into place, so an
interrupted run never leaves a half-written file that a later `--resume` would trust."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image
from safetensors.torch import save_file

_TEMPLATES = Environment(
    loader=PackageLoader("convlens.report", "templates"),
    autoescape=select_autoescape(["html", "j2"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _replace(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    partial.replace(path)
    return path


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Save a uint8 (H, W, 3) or (H, W) array as a compressed PNG."""
    if image.dtype != np.uint8:
        raise TypeError(f"write_png takes uint8 arrays (render them first), got {image.dtype}")
    return _replace(
        Path(path), lambda p: Image.fromarray(image).save(p, format="PNG", optimize=True)
    )


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Save named arrays as a compressed `.npz`."""

    def save(partial: Path) -> None:
        with open(partial, "wb") as file:
            np.savez_compressed(file, **arrays)

    return _replace(Path(path), save)


def write_json(path: str | Path, data: object) -> Path:
    """Save JSON-serialisable data, indented."""
    return _replace(Path(path), lambda p: p.write_text(json.dumps(data, indent=2)))


def write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Tensors as safetensors with `meta` embedded (one atomic file, so a reader never sees
    tensors and metadata from different moments), and `meta` again as JSON beside it."""
    path = Path(path)
    _replace(path, lambda p: save_file(tensors, str(p), metadata={"convlens": json.dumps(meta)}))
    write_json(path.with_suffix(".json"), meta)
    return path


def write_page(path: str | Path, template: str, **context: object) -> Path:
    """Render one of the package's Jinja2 templates (autoescaped) to `path`."""
    html = _TEMPLATES.get_template(template).render(**context)
    return _replace(Path(path), lambda p: p.write_text(html, encoding="utf-8"))
