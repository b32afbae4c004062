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
