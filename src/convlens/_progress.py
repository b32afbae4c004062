"""The progress bar of every long job: tqdm's widget in Jupyter when ipywidgets is installed,
its text bar otherwise. (`tqdm.auto` falls back to the text bar too, but warns in every
notebook without ipywidgets, and that warning lands in the user's cell output.)"""

from __future__ import annotations

from importlib.util import find_spec

if find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm
else:
    from tqdm.std import tqdm

__all__ = ["tqdm"]
