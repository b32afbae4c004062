"""File writers for finished arrays: PNGs, raw arrays and HTML pages. Every write is atomic
(`convlens._io`), so an interrupted run never leaves a half-written file that `--resume` trusts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from convlens._io import replace_atomically

_TEMPLATES = Environment(
    loader=PackageLoader("convlens.report", "templates"),
    autoescape=select_autoescape(["html", "j2"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Save a uint8 (H, W, 3) or (H, W) array as a PNG (zlib level 6: Pillow's `optimize`
    made files 1 % smaller at 2.5x the time, and an atlas writes thousands)."""
    if image.dtype != np.uint8:
        raise TypeError(f"write_png takes uint8 arrays (render them first), got {image.dtype}")
    return replace_atomically(
        path, lambda p: Image.fromarray(image).save(p, format="PNG", compress_level=6)
    )


def write_jpeg(path: str | Path, image: np.ndarray, quality: int = 85) -> Path:
    """Save a uint8 (H, W, 3) array as a JPEG without chroma subsampling: for photographs
    (patches of natural images, synthesised images of photo models), a third to a fifth of the
    PNG's size (measured on resnet18 atlas figures: Fig. 2 76 -> 24 KB at quality 85)."""
    if image.dtype != np.uint8:
        raise TypeError(f"write_jpeg takes uint8 arrays (render them first), got {image.dtype}")
    picture = Image.fromarray(image).convert("RGB")
    return replace_atomically(
        path, lambda p: picture.save(p, format="JPEG", quality=quality, subsampling=0)
    )


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Save as a JPEG when `path` ends in .jpg, else as a PNG."""
    return (write_jpeg if Path(path).suffix == ".jpg" else write_png)(path, image)


def write_pngs(folder: str | Path, figures: dict[str, np.ndarray]) -> list[Path]:
    """Save each named figure as `<folder>/<name>.png`."""
    return [write_png(Path(folder) / f"{name}.png", image) for name, image in figures.items()]


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Save named arrays as a compressed `.npz`."""

    def save(partial: Path) -> None:
        with open(partial, "wb") as file:
            np.savez_compressed(file, **arrays)

    return replace_atomically(path, save)


def write_text(path: str | Path, text: str) -> Path:
    """Save UTF-8 text (a CSV, a page)."""
    return replace_atomically(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_page(path: str | Path, template: str, **context: object) -> Path:
    """Render one of the package's Jinja2 templates (autoescaped) to `path`."""
    return write_text(path, _TEMPLATES.get_template(template).render(**context))
