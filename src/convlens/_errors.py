"""The one domain error of convlens and helpers that build helpful messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConvlensError(ValueError):
    """A problem with the user's model, data or request, with a message that says how to fix it."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates that look most like `name`, best first (substring matches count too)."""
    candidates = list(candidates)
    similar = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    containing = [c for c in candidates if name and name in c and c not in similar]
    return (similar + containing)[:n]


def unknown_name_error(kind: str, name: str, candidates: Iterable[str]) -> ConvlensError:
    """A ConvlensError for an unknown `kind` called `name`, naming the closest known names."""
    candidates = list(candidates)
    matches = close_matches(name, candidates)
    if matches:
        hint = "closest: " + ", ".join(repr(m) for m in matches)
    else:
        shown = ", ".join(repr(c) for c in candidates[:12])
        hint = f"known: {shown}" + (", ..." if len(candidates) > 12 else "")
    return ConvlensError(f"unknown {kind} {name!r}; {hint}")
