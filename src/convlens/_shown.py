"""How a result shows itself in a notebook, without the result knowing how it is drawn.

Results inherit `Shown`, whose `_repr_mimebundle_` asks `shown(result)` for a `Picture` (a
captioned PNG, or JPEG when that is much smaller) or a `Page` (escaped HTML). The drawing lives above every method, in
`convlens.report.display`, which registers one drawer per result type on `shown`
(`functools.singledispatch`): methods never import the report, and a figure is made in one
place for the CLI, the atlas and the notebook. One mimebundle draws the figure once, where
separate `_repr_png_` and `_repr_html_` would each draw it.
"""

from __future__ import annotations

import base64
import functools
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convlens._io import encode_image

MAX_IMAGES = 8
"""Images of a batch a picture draws (its title says how many there were): results keep a
copy of that many of their inputs, never the whole batch."""


@dataclass(frozen=True)
class Picture:
    """A finished figure: `array` uint8 (H, W, 3) with its title drawn above it, and the title
    as text (also written into the PNG as its "Title", into the JPEG as its comment)."""

    array: np.ndarray
    title: str

    def png(self) -> bytes:
        """The figure as PNG bytes, titled."""
        return encode_image(self.array, "PNG", title=self.title)

    def jpeg(self) -> bytes:
        """The figure as JPEG bytes (quality 85, no chroma subsampling), titled in its comment."""
        return encode_image(self.array, "JPEG", title=self.title)

    def encoded(self) -> tuple[str, bytes]:
        """(MIME type, bytes): the PNG, or the JPEG when it is under half the PNG's size
        (photographs, t-SNE mosaics), so that notebooks which keep their outputs stay light."""
        png = self.png()
        jpeg = self.jpeg()
        return ("image/jpeg", jpeg) if 2 * len(jpeg) < len(png) else ("image/png", png)

    def save(self, path: str | Path) -> Path:
        """Write the PNG to `path`."""
        path = Path(path)
        path.write_bytes(self.png())
        return path

    def html(self) -> str:
        """The figure as an inline <img> (base64 PNG) with an escaped alt text."""
        mime, data = self.encoded()
        text = base64.b64encode(data).decode("ascii")
        return f'<img src="data:{mime};base64,{text}" alt="{html.escape(self.title)}">'

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict:
        mime, data = self.encoded()
        return {mime: data, "text/plain": self.title}


@dataclass(frozen=True)
class Page:
    """A result shown as HTML (a table, with figures inline): `body` is already escaped."""

    title: str
    body: str

    def html(self) -> str:
        return f"<div><strong>{html.escape(self.title)}</strong>{self.body}</div>"

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict:
        return {"text/html": self.html(), "text/plain": self.title}


@functools.singledispatch
def shown(result: object) -> Picture | Page:
    """The picture (or page) of `result`; drawers are registered by `convlens.report.display`."""
    raise TypeError(f"convlens does not know how to show a {type(result).__name__}")


class Shown:
    """Mixin for results: shown inline by Jupyter as `shown(self)`."""

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict:
        return shown(self)._repr_mimebundle_(include, exclude)
