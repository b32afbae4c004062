"""Writing finished arrays to disk: PNGs, raw arrays, JSON and HTML pages. Nothing here computes."""

from convlens.report.writer import write_checkpoint, write_json, write_npz, write_page, write_png

__all__ = ["write_checkpoint", "write_json", "write_npz", "write_page", "write_png"]
