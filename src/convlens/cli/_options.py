"""The options several commands share, each defined once, and the typed converters every numeric
or list option goes through. A bad value stops argparse with one line that names the option, the
value and what is allowed (exit status 2), before any model is loaded or any file written.

Every converter is a `Converter`: callable as an argparse `type`, with `bad`, example values it
refuses (the tests feed each of them to every option that uses it)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from convlens.targets import Unit

Adder = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Converter:
    """An argparse `type`: `parse` turns the text into the value or raises ValueError (or
    TypeError); the refusal reads "expected <expected>, got '<text>'"."""

    expected: str
    parse: Callable[[str], object]
    bad: tuple[str, ...]

    def __call__(self, text: str) -> object:
        try:
            return self.parse(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text!r}") from None


def _bounds(noun: str, low: float | None, high: float | None, *, above: bool = False) -> str:
    def show(value: float) -> str:
        return str(value) if isinstance(value, int) else f"{value:g}"

    if low is not None and high is not None:
        return f"{noun} from {show(low)} to {show(high)}"
    if low is not None:
        return f"{noun} {'>' if above else '>='} {show(low)}"
    return f"{noun} <= {show(high)}" if high is not None else noun


def _within(value: float, low: float | None, high: float | None, above: bool = False) -> float:
    too_low = low is not None and (value <= low if above else value < low)
    if too_low or (high is not None and value > high):
        raise ValueError(value)
    return value


def int_range(low: int | None = None, high: int | None = None) -> Converter:
    """An integer with optional bounds (both included)."""
    outside = [str(low - 1)] if low is not None else []
    outside += [str(high + 1)] if high is not None else []
    return Converter(
        _bounds("an integer", low, high),
        lambda text: int(_within(int(text), low, high)),
        (*outside, "x", "1.5"),
    )


def float_range(low: float | None = None, high: float | None = None, *, above: bool = False):
    """A finite number with optional bounds (`above`: strictly greater than `low`)."""

    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return _within(value, low, high, above)

    outside = [f"{low if above else low - 1:g}"] if low is not None else []
    outside += [f"{high + 0.5:g}"] if high is not None else []
    noun = "a number" if (low, high) != (None, None) else "a finite number"
    return Converter(_bounds(noun, low, high, above=above), parse, (*outside, "x", "nan"))


def listing(item: Converter, expected: str, *, empty: bool = False) -> Converter:
    """Comma-separated values, each converted by `item` (`empty`: "" is the empty list)."""

    def parse(text: str) -> list:
        if not text.strip() and empty:
            return []
        return [item.parse(part.strip()) for part in text.split(",")]

    return Converter(expected, parse, (*(() if empty else ("",)), "1,,2", f"1,{item.bad[0]}"))


def _name(text: str) -> str:
    if not text:
        raise ValueError(text)
    return text


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    """A parser accepting one of `choices`."""

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(text)
        return text

    return parse


def choices_list(choices: Sequence[str], *, empty: bool = False) -> Converter:
    """Comma-separated names, each one of `choices`."""
    item = Converter("", _choice(choices), ("nope",))
    return listing(item, f"comma-separated names from {', '.join(choices)}", empty=empty)


def _unit(text: str) -> Unit:
    unit = Unit.parse(text)
    if min(v for v in (unit.channel, unit.y, unit.x) if v is not None) < 0:
        raise ValueError(text)
    return unit


def _objective(text: str) -> str:
    if text.startswith("class:"):
        non_negative_int.parse(text.removeprefix("class:"))
    else:
        _unit(text)
    return text


def _box(text: str) -> tuple[int, int, int, int]:
    top, left, bottom, right = (non_negative_int.parse(v.strip()) for v in text.split(","))
    if bottom <= top or right <= left:
        raise ValueError(text)
    return top, left, bottom, right


def _device(text: str) -> str:
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise ValueError(text)
    return text


device = Converter("cpu, cuda, cuda:N or mps", _device, ("gpu", "cuda:x"))
positive_int = int_range(1)
non_negative_int = int_range(0)
seed = int_range(0, 2**32 - 1)
positive_float = float_range(0, above=True)
non_negative_float = float_range(0)
probability = float_range(0, 1)
finite_float = float_range()
positive_ints = listing(positive_int, "comma-separated integers >= 1")
non_negative_ints = listing(non_negative_int, "comma-separated integers >= 0")
probabilities = listing(probability, "comma-separated numbers from 0 to 1")
names = Converter(
    "comma-separated names", lambda text: [_name(p.strip()) for p in text.split(",")], ("", ",")
)
unit = Converter(
    "LAYER:CHANNEL or LAYER:CHANNEL:Y:X (integers >= 0)",
    _unit,
    ("features.1", "features.1:x", "features.1:-1", ":3"),
)
objective = Converter(
    "LAYER:CHANNEL, LAYER:CHANNEL:Y:X or class:C (integers >= 0)",
    _objective,
    ("class:x", "class:-1", "features.1", "features.1:x"),
)
boxes = Converter(
    "TOP,LEFT,BOTTOM,RIGHT (integers >= 0, BOTTOM > TOP, RIGHT > LEFT), boxes separated by ';'",
    lambda text: [_box(box) for box in text.split(";")],
    ("", "0,0,4", "0,0,4,x", "4,4,0,0", "-1,0,4,4", "0,0,4,4;"),
)


class InputSize(argparse.Action):
    """`--input-size H W` or `--input-size S` (square), stored as (H, W)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if len(values) > 2:
            shown = " ".join(map(str, values))
            parser.error(f"argument {option_string}: expected H W or one side S, got {shown!r}")
        setattr(namespace, self.dest, (values[0], values[-1]))


def model_options(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    """The model spec (`--model`, or a positional MODEL), `--weights` and `--trust-pickle`."""
    parser.add_argument(
        *(["model"] if positional else ["--model"]),
        **({"nargs": "?"} if positional else {}),
        default="zfnet-fashion",
        help="built-in name, torchvision:<name> or a checkpoint file (default: zfnet-fashion)",
    )
    parser.add_argument(
        "--weights",
        help="weights file (.safetensors or .pt state dict), or DEFAULT for torchvision's download",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling a full module (runs code from the file: only for files you trust)",
    )
    device_option(parser)


def device_option(parser: argparse.ArgumentParser) -> None:
    """`--device`: where the model and all work go (cpu, cuda, cuda:N, mps)."""
    parser.add_argument(
        "--device",
        type=device,
        default="cpu",
        help="cpu (default), cuda, cuda:N or mps: the model is moved there and all work follows it",
    )


def out_option(default: str) -> Adder:
    """`--out`, the output folder, defaulting to `default`."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--out", type=Path, default=Path(default), help=f"output folder (default: {default})"
        )

    return add


def data_option(parser: argparse.ArgumentParser, help: str = "dataset spec (default: test)"):
    """`--data`, a dataset spec, defaulting to the Fashion-MNIST test split."""
    parser.add_argument("--data", default="fashion-mnist", help=help)


def image_option(parser: argparse.ArgumentParser, help: str = "image file or sample:<name>"):
    """`--image` (required): one image file or sample photo."""
    parser.add_argument("--image", required=True, help=help)


def layers_option(
    parser: argparse.ArgumentParser,
    help: str = "comma-separated layers (default: every conv output)",
) -> None:
    """`--layers`, comma-separated layer names (default: the command's own)."""
    parser.add_argument("--layers", type=names, help=help)


def indices_option(parser: argparse.ArgumentParser, help: str, **kwargs: object) -> None:
    """`--indices`, comma-separated dataset indices (checked against the data before loading)."""
    parser.add_argument("--indices", type=non_negative_ints, help=help, **kwargs)
