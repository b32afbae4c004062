"""Writing finished results to disk: PNGs, raw arrays, JSON, CSV and HTML pages (`writer`), and
one `save_<result>` per kind of result (`results`). Nothing here runs a model."""

from convlens._io import write_checkpoint, write_json
from convlens.report.writer import (
    write_image,
    write_images,
    write_jpeg,
    write_npz,
    write_page,
    write_png,
    write_pngs,
    write_smaller,
    write_text,
)

__all__ = [
    "write_checkpoint",
    "write_image",
    "write_images",
    "write_jpeg",
    "write_json",
    "write_npz",
    "write_page",
    "write_png",
    "write_pngs",
    "write_smaller",
    "write_text",
]
