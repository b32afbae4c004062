"""Charts drawn with PIL, as uint8 arrays (H, W, 3): the t-SNE scatter and the line plots of
Zeiler & Fergus Fig. 5, and maps in class colours (Fig. 7 (e), the activation atlas). Pure,
like `convlens.render`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from convlens.render import display_scale

# Twenty distinguishable colours for class maps (Kelly's / tab20-like order).
CLASS_COLOURS = np.array(
    [
        [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
        [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
        [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
        [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229],
    ],
    dtype=np.uint8,
)  # fmt: skip


def scatter(xy: np.ndarray, labels: np.ndarray, names: list[str], size: int = 640) -> np.ndarray:
    """2-D points coloured by class, with a legend: the t-SNE map beside its mosaic."""
    xy = np.asarray(xy, dtype=np.float64)
    low, high = xy.min(axis=0), xy.max(axis=0)
    unit = (xy - low) / np.where(high > low, high - low, 1.0)
    margin, line = 10, 14
    present = sorted(set(np.asarray(labels).tolist()))
    canvas = Image.new("RGB", (size + 150, size), "white")
    draw = ImageDraw.Draw(canvas)
    for (x, y), label in zip(unit * (size - 2 * margin) + margin, np.asarray(labels)):
        colour = tuple(int(c) for c in CLASS_COLOURS[int(label) % len(CLASS_COLOURS)])
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    font = ImageFont.load_default()
    for row, label in enumerate(present):
        top = margin + row * line
        colour = tuple(int(c) for c in CLASS_COLOURS[int(label) % len(CLASS_COLOURS)])
        draw.rectangle([size + 4, top + 2, size + 14, top + 12], fill=colour)
        name = names[label] if 0 <= label < len(names) else str(label)
        draw.text((size + 18, top), name[:20], fill="black", font=font)
    return np.asarray(canvas)


def line_plot(
    xs: list[float],
    lines: np.ndarray,
    title: str,
    x_label: str,
    size: tuple[int, int] = (320, 220),
    names: Sequence[str] = (),
) -> np.ndarray:
    """One line per row of `lines` (L, len(xs)) over `xs`, in class-map colours, with the
    y range printed (the panels of Zeiler & Fergus Fig. 5), and a legend of `names` at the
    right when given."""
    lines = np.asarray(lines, dtype=np.float64)
    width, height = size
    left, top, right, bottom = 40, 18, 8, 22
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    low, high = float(np.nanmin(lines)), float(np.nanmax(lines))
    high = high if high > low else low + 1.0
    span_x = (max(xs) - min(xs)) or 1.0

    def point(x: float, y: float) -> tuple[float, float]:
        px = left + (x - min(xs)) / span_x * (width - left - right)
        py = height - bottom - (y - low) / (high - low) * (height - top - bottom)
        return px, py

    draw.rectangle([left, top, width - right, height - bottom], outline=(160, 160, 160))
    for row, values in enumerate(lines):
        colour = tuple(int(c) for c in CLASS_COLOURS[row % len(CLASS_COLOURS)])
        draw.line([point(x, y) for x, y in zip(xs, values)], fill=colour, width=2)
    draw.text((2, 2), title, fill="black", font=font)
    draw.text((2, top), f"{high:.3g}", fill="black", font=font)
    draw.text((2, height - bottom - 10), f"{low:.3g}", fill="black", font=font)
    draw.text((left, height - bottom + 4), f"{min(xs):g}", fill="black", font=font)
    draw.text((width - right - 30, height - bottom + 4), f"{max(xs):g}", fill="black", font=font)
    draw.text((width // 2 - 20, height - bottom + 4), x_label, fill="black", font=font)
    return _with_legend(np.asarray(canvas), names)


def _with_legend(chart: np.ndarray, names: Sequence[str], width: int = 120) -> np.ndarray:
    """`chart` with a column of colour keys and `names` at its right (unchanged without names)."""
    if not names:
        return chart
    legend = Image.new("RGB", (width, chart.shape[0]), "white")
    draw = ImageDraw.Draw(legend)
    for row, name in enumerate(names):
        colour = tuple(int(c) for c in CLASS_COLOURS[row % len(CLASS_COLOURS)])
        draw.rectangle([4, 20 + row * 14, 14, 30 + row * 14], fill=colour)
        draw.text((18, 18 + row * 14), name[:16], fill="black", font=ImageFont.load_default())
    return np.concatenate([chart, np.asarray(legend)], axis=1)


def signed_bars(values: Sequence[float], names: Sequence[str], width: int = 320) -> np.ndarray:
    """One horizontal bar per value from a zero line, labelled with its name and value: positive
    bars blue to the right, negative orange to the left (the top channels of a decision)."""
    values = np.asarray(values, dtype=np.float64)
    line, left, right = 14, 64, 56
    canvas = Image.new("RGB", (width, line * len(values) + 4), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    top = float(np.abs(values).max()) if len(values) else 1.0
    span = (width - left - right) / 2
    zero = left + span
    draw.line([zero, 0, zero, canvas.height], fill=(160, 160, 160))
    for row, (value, name) in enumerate(zip(values, names)):
        y = 2 + row * line
        length = span * value / top if top > 0 else 0.0
        colour = tuple(int(c) for c in CLASS_COLOURS[0 if value >= 0 else 1])
        draw.rectangle(
            [min(zero, zero + length), y + 2, max(zero, zero + length), y + 11], fill=colour
        )
        draw.text((2, y), name[:10], fill="black", font=font)
        draw.text((width - right + 4, y), f"{value:+.3g}", fill="black", font=font)
    return np.asarray(canvas)


def class_map(
    classes: torch.Tensor, names: list[str], size: int = 224, legend: int | None = None
) -> np.ndarray:
    """Most-probable-class map (Py, Px) in categorical colours (negative: no class, white),
    with a legend of the classes that occur (colour swatch + name) below it: the `legend` most
    frequent of them (at most as many as there are colours), and how many more there are, all
    drawn in grey. Classes below the number of colours keep their own colour in every figure;
    otherwise the listed classes take the colours in order."""
    classes = classes.detach().cpu().long()
    found = Counter(c for c in classes.flatten().tolist() if c >= 0)
    shown = min(legend or len(CLASS_COLOURS), len(CLASS_COLOURS))
    listed = sorted(c for c, _ in found.most_common(shown))
    stable = all(c < len(CLASS_COLOURS) for c in listed)
    colour_of = {c: (c if stable else rank) for rank, c in enumerate(listed)}
    palette = np.vstack([CLASS_COLOURS, [[160, 160, 160], [255, 255, 255]]])  # others, none
    index = np.vectorize(lambda c: colour_of.get(c, len(CLASS_COLOURS) + (c < 0)))(classes.numpy())
    factor = display_scale(classes.shape[-1], size)
    tiles = np.repeat(np.repeat(palette[index], factor, axis=0), factor, axis=1).astype(np.uint8)
    lines = [(colour_of[c], f"{c}: {names[c] if c < len(names) else c}") for c in listed]
    if len(found) > len(listed):
        lines.append((len(CLASS_COLOURS), f"and {len(found) - len(listed)} more classes"))
    return np.concatenate([tiles, _legend(lines, tiles.shape[1], palette)], axis=0)


def _legend(
    lines: list[tuple[int, str]], width: int, palette: np.ndarray, line: int = 14
) -> np.ndarray:
    """A colour swatch (a row of `palette`) and a text per line."""
    legend = Image.new("RGB", (width, line * len(lines) + 4), "white")
    draw = ImageDraw.Draw(legend)
    for row, (colour, text) in enumerate(lines):
        top = 2 + row * line
        draw.rectangle([2, top + 1, 12, top + 11], fill=tuple(int(c) for c in palette[colour]))
        draw.text((16, top), text, fill="black", font=ImageFont.load_default())
    return np.asarray(legend)
