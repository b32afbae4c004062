"""Pure image-making: tensors in, uint8 arrays (H, W, 3) out. Nothing here runs a model or
touches a file; `convlens.report` writes what these functions return."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

# Anchor colours of a perceptually ordered dark-to-bright heat map (close to matplotlib's
# "inferno"), interpolated to 256 entries.
_HEAT_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
HEAT_LUT = np.stack(
    [
        np.interp(
            np.linspace(0, 1, 256), np.linspace(0, 1, len(_HEAT_ANCHORS)), _HEAT_ANCHORS[:, c]
        )
        for c in range(3)
    ],
    axis=1,
).astype(np.uint8)


@torch.no_grad()
def minmax(x: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """Scale to [0, 1] over `dims` (all by default); a constant input becomes mid-grey (0.5)."""
    dims = dims if dims is not None else tuple(range(x.dim()))
    low = x.amin(dim=dims, keepdim=True)
    high = x.amax(dim=dims, keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), torch.full_like(x, 0.5))


@torch.no_grad()
def signed_stretch(
    x: torch.Tensor, dims: tuple[int, ...] | None = None, quantile: float = 1.0
) -> torch.Tensor:
    """Map a signed tensor to [0, 1] with zero at 0.5 and the `quantile` of |value| over `dims`
    (1.0: the largest) at 0 or 1, clipping beyond: the display of deconvnet projections and
    gradients (grey means no signal)."""
    dims = dims if dims is not None else tuple(range(x.dim()))
    magnitude = x.abs()
    if quantile >= 1.0:
        scale = magnitude.amax(dim=dims, keepdim=True)
    else:
        moved = magnitude.movedim(dims, tuple(range(-len(dims), 0))).flatten(-len(dims))
        scale = moved.quantile(quantile, dim=-1).reshape(
            [1 if d in dims else n for d, n in enumerate(x.shape)]
        )
    return (0.5 + 0.5 * x / scale.clamp_min(1e-12)).clamp(0, 1)


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[0, 1] image (C, H, W) or (H, W) → uint8 (H, W, 3)."""
    array = (
        image.detach().cpu().float().numpy()
        if isinstance(image, torch.Tensor)
        else np.asarray(image, dtype=np.float32)
    )
    array = array.transpose(1, 2, 0) if array.ndim == 3 else array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)


def heatmap(values: torch.Tensor) -> np.ndarray:
    """A [0, 1] map (H, W) coloured dark (0) to bright (1): uint8 (H, W, 3)."""
    index = (values.detach().cpu().float().clamp(0, 1).numpy() * 255 + 0.5).astype(np.int64)
    return HEAT_LUT[index]


def heat_bar(width: int, height: int = 10) -> np.ndarray:
    """The heat map's colour scale, dark (left, 0) to bright (right, 1), as a strip."""
    return heatmap(torch.linspace(0, 1, width).expand(height, width))


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a heat map over a uint8 image of the same size."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)
    return blended.round().astype(np.uint8)


def enlarge(tiles: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement of (..., h, w) tiles by an integer factor (keeps pixels crisp)."""
    return (
        tiles.repeat_interleave(factor, -2).repeat_interleave(factor, -1) if factor > 1 else tiles
    )


def grid(
    tiles: torch.Tensor, columns: int | None = None, padding: int = 1, background: float = 1.0
) -> np.ndarray:
    """Lay [0, 1] tiles (N, C, h, w) out in a grid: uint8 (H, W, 3)."""
    if tiles.shape[0] == 0:
        raise ValueError("no tiles to lay out")
    columns = columns or int(np.ceil(np.sqrt(tiles.shape[0])))
    if tiles.shape[1] == 1:
        tiles = tiles.expand(-1, 3, -1, -1)
    laid = make_grid(tiles.float().cpu(), nrow=columns, padding=padding, pad_value=background)
    return to_uint8(laid)


def display_scale(height: int, target: int = 96) -> int:
    """The integer enlargement that brings a small tile close to `target` pixels."""
    return max(1, target // max(height, 1))


def fit(tiles: torch.Tensor, size: int) -> torch.Tensor:
    """Tiles (N, C, h, w) brought near `size` pixels: small ones enlarged by an integer factor
    (crisp pixels), large ones (over twice `size`, e.g. a 435-pixel receptive field) shrunk
    with antialiasing, so figures stay small on disk."""
    side = tiles.shape[-1]
    if side <= 2 * size:
        return enlarge(tiles, display_scale(side, size))
    height = max(1, round(tiles.shape[-2] * size / side))
    return torch.nn.functional.interpolate(
        tiles.float(), size=(height, size), mode="bilinear", antialias=True
    ).clamp(0, 1)


STRONGEST_INPUTS = 8
"""Input channels shown per deeper filter."""


def strongest_inputs(weight: torch.Tensor, count: int = STRONGEST_INPUTS) -> torch.Tensor:
    """Deeper filters (O, I, k, k) as (O * count, 1, k, k) grey tiles: each filter's `count`
    input channels of largest RMS, strongest first, all of one filter stretched together
    around zero (grey is zero), so its strongest slices and their signs show. Most of a deep
    filter's I slices are weak: drawn all alike they read as noise."""
    weight = weight.detach().float().cpu()
    count = min(count, weight.shape[1])
    order = weight.pow(2).mean(dim=(2, 3)).argsort(dim=1, descending=True, stable=True)[:, :count]
    chosen = torch.gather(weight, 1, order[:, :, None, None].expand(-1, -1, *weight.shape[-2:]))
    return signed_stretch(chosen, dims=(1, 2, 3), quantile=1.0).reshape(-1, 1, *weight.shape[-2:])


def filter_grid(weight: torch.Tensor, first_tile: int = 48, deeper_tile: int = 24) -> np.ndarray:
    """Conv filters (O, I, k, k) as a grid image. First-layer filters (I of 1 or 3) are one tile
    each, contrast-normalised on their own, in colour for RGB; deeper filters get one row per
    filter: its strongest input channels (`strongest_inputs`).

    Example:
        >>> filter_grid(torch.randn(8, 3, 5, 5)).shape
        (139, 139, 3)
    """
    if weight.shape[1] in (1, 3):
        tiles = minmax(weight.detach().float().cpu(), dims=(1, 2, 3))
        return grid(enlarge(tiles, display_scale(weight.shape[-1], first_tile)))
    tiles = strongest_inputs(weight)
    enlarged = enlarge(tiles, display_scale(weight.shape[-1], deeper_tile))
    return grid(enlarged, columns=min(STRONGEST_INPUTS, weight.shape[1]))


def map_grid(maps: torch.Tensor, shared_scale: bool = True, tile: int = 64) -> np.ndarray:
    """Feature maps (C, h, w) of one image as a grid of grey tiles. With `shared_scale` all maps
    share the layer's maximum, so weak and dead maps look dark as they are (Yosinski's toolbox);
    otherwise each map is stretched on its own."""
    maps = maps.detach().float().cpu()
    if shared_scale:
        tiles = (
            (maps / maps.abs().amax().clamp_min(1e-12)).clamp(0, 1)
            if maps.min() >= 0
            else signed_stretch(maps)
        )
    else:
        tiles = minmax(maps, dims=(1, 2))
    return grid(enlarge(tiles.unsqueeze(1), display_scale(maps.shape[-1], tile)))


def caption(image: np.ndarray, text: str, height: int = 14, lines: int = 1) -> np.ndarray:
    """The image with a white strip of black text above it, wrapped to more lines (`height`
    pixels each) when the text is wider than the image; the strip is at least `lines` high."""
    font = ImageFont.load_default()
    wrapped = _wrapped(text, image.shape[1] - 4, font)
    strip = Image.new("RGB", (image.shape[1], height * max(lines, len(wrapped))), "white")
    draw = ImageDraw.Draw(strip)
    for row, line in enumerate(wrapped):
        draw.text((2, 1 + row * height), line, fill="black", font=font)
    return np.concatenate([np.asarray(strip), image], axis=0)


def _wrapped(text: str, width: int, font: ImageFont.ImageFont) -> list[str]:
    """`text` broken between words into lines at most `width` pixels wide in `font` (a word
    longer than that keeps a line of its own)."""
    lines, line = [], ""
    for word in text.split(" "):
        longer = f"{line} {word}" if line else word
        if line and font.getlength(longer) > width:
            lines.append(line)
            longer = word
        line = longer
    return [*lines, line]


def side_by_side(images: list[np.ndarray], gap: int = 8) -> np.ndarray:
    """Images placed left to right, top-aligned on white."""
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    left = 0
    for image in images:
        canvas[: image.shape[0], left : left + image.shape[1]] = image
        left += image.shape[1] + gap
    return canvas


def stacked(images: list[np.ndarray], gap: int = 6) -> np.ndarray:
    """Images placed top to bottom, left-aligned on white."""
    width = max(image.shape[1] for image in images)
    rows = [
        np.pad(i, ((0, gap), (0, width - i.shape[1]), (0, 0)), constant_values=255) for i in images
    ]
    return np.concatenate(rows)[:-gap] if gap else np.concatenate(rows)


def signed_image(attribution: torch.Tensor, size: int = 224) -> np.ndarray:
    """A signed (C, H, W) map (deconvnet projection, gradient) for display: contrast-stretched
    around zero (grey is zero) so that the 99.5th percentile of |value| reaches black or white,
    enlarged to about `size` pixels."""
    shown = signed_stretch(attribution.detach().float().cpu(), quantile=0.995)
    return to_uint8(enlarge(shown, display_scale(shown.shape[-1], size)))


def saliency_images(
    values: torch.Tensor, image: torch.Tensor, size: int = 224, top: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A non-negative map (H, W) (saliency, a class activation map) as a heat map, and as a heat
    map laid over the [0, 1] image (C, H, W). The colour scale runs from the map's minimum to
    its maximum, or from 0 to `top` (values above it saturate) when given."""
    factor = display_scale(values.shape[-1], size)
    values = values.detach().float().cpu()
    scaled = minmax(values) if top is None else values / max(top, 1e-30)
    heat = heatmap(enlarge(scaled, factor))
    return heat, overlay(to_uint8(enlarge(image.detach().float().cpu(), factor)), heat)


def mass_share(values: torch.Tensor) -> torch.Tensor:
    """Each pixel's share of a map's total |value| (summed over channels for (C, H, W)): a unit-
    free (H, W) map summing to 1, so maps of different methods can share one colour scale."""
    magnitude = values.detach().float().cpu().abs()
    magnitude = magnitude.sum(0) if magnitude.dim() == 3 else magnitude
    total = float(magnitude.sum())
    return magnitude / total if total > 0 else magnitude


def picture(image: torch.Tensor, size: int = 224) -> np.ndarray:
    """A [0, 1] image (C, H, W) enlarged to about `size` pixels, as uint8 (H, W, 3)."""
    return to_uint8(enlarge(image.detach().float().cpu(), display_scale(image.shape[-1], size)))


def crop_padded(
    image: torch.Tensor, box: tuple[int, int, int, int], fill: float = 0.0
) -> torch.Tensor:
    """The (C, bottom - top, right - left) crop of `image` (C, H, W) at `box`; parts of the box
    outside the image are filled with `fill` (padded, never shifted)."""
    top, left, bottom, right = box
    height, width = image.shape[-2:]
    patch = torch.full((image.shape[0], bottom - top, right - left), fill, dtype=image.dtype)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(bottom, height), min(right, width)
    if y1 > y0 and x1 > x0:
        patch[:, y0 - top : y1 - top, x0 - left : x1 - left] = image[:, y0:y1, x0:x1].cpu()
    return patch


def top_examples_figure(
    patches: torch.Tensor, projections: torch.Tensor, columns: int = 3, size: int = 64
) -> np.ndarray:
    """Zeiler & Fergus Fig. 2 for one feature map: the grid of deconvnet projections beside the
    grid of image patches. `patches` (k, C, s, s) in [0, 1]; `projections` (k, C, s, s) signed,
    each stretched around zero on its own."""
    shown = signed_stretch(projections.float(), dims=(1, 2, 3), quantile=0.995)
    left = grid(fit(shown, size), columns, padding=2)
    right = grid(fit(patches.float(), size), columns, padding=2)
    return side_by_side([left, right])


def position_map(values: torch.Tensor, size: int = 224, scale: tuple[float, float] | None = None):
    """A map over occluder positions (Py, Px) as an enlarged heat map; `scale` fixes the value
    range shown dark to bright (e.g. (0, 1) for probabilities), default: the map's own range."""
    values = values.detach().float().cpu()
    shown = minmax(values) if scale is None else (values - scale[0]) / (scale[1] - scale[0])
    return heatmap(enlarge(shown, display_scale(values.shape[-1], size)))


def occluder_grid(
    image: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    window: int,
    square: tuple[int, int],
    size: int = 224,
) -> np.ndarray:
    """The [0, 1] image (C, H, W) enlarged, with a dot at the centre of every occluder position
    and the grey occluder drawn at `square` (y, x) — panel (a) of Zeiler & Fergus Fig. 7."""
    factor = display_scale(image.shape[-1], size)
    canvas = Image.fromarray(to_uint8(enlarge(image.detach().float().cpu(), factor)))
    draw = ImageDraw.Draw(canvas, "RGBA")
    y, x = square
    draw.rectangle(
        [x * factor, y * factor, (x + window) * factor - 1, (y + window) * factor - 1],
        fill=(128, 128, 128, 200),
        outline=(255, 255, 255, 255),
    )
    half = window * factor / 2
    for cy in ys.tolist():
        for cx in xs.tolist():
            centre = (cx * factor + half, cy * factor + half)
            draw.point(centre, fill=(255, 64, 64, 255))
    return np.asarray(canvas)


def panel_row(panels: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Captioned panels left to right, their images aligned (every caption as tall as the
    longest): a figure row such as Fig. 7's (a)-(e)."""
    font = ImageFont.load_default()
    lines = max(len(_wrapped(title, image.shape[1] - 4, font)) for title, image in panels)
    return side_by_side([caption(image, title, lines=lines) for title, image in panels])


def labelled_tiles(
    images: torch.Tensor, labels: list[str], columns: int = 5, size: int = 112
) -> np.ndarray:
    """[0, 1] images (N, C, H, W) enlarged to about `size` pixels, each captioned with its
    label, in rows of `columns` (class-model grids with class names)."""
    tiles = [
        caption(picture(image, size), label[: max(4, size // 6)])
        for image, label in zip(images, labels)
    ]
    rows = [side_by_side(tiles[i : i + columns], gap=4) for i in range(0, len(tiles), columns)]
    return stacked(rows, gap=4)


def mosaic(tiles: torch.Tensor, layout: np.ndarray, tile: int = 28) -> np.ndarray:
    """[0, 1] tiles (N, C, h, w) placed at their cells of `layout` (rows, cols) of tile indices
    (-1: an empty cell, left white), each resized to `tile` pixels."""
    rows, cols = layout.shape
    tiles = torch.nn.functional.interpolate(
        tiles.float().cpu(), size=(tile, tile), mode="bilinear", antialias=True
    ).clamp(0, 1)
    if tiles.shape[1] == 1:
        tiles = tiles.expand(-1, 3, -1, -1)
    canvas = torch.ones(3, rows * tile, cols * tile)
    for (row, col), index in np.ndenumerate(layout):
        if index >= 0:
            canvas[:, row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] = tiles[index]
    return to_uint8(canvas)
