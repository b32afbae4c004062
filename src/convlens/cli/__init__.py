"""The `convlens` command. Each subcommand is registered once in `COMMANDS` (`_registry`), by the
module of its group; argparse, `--help` and the README's list all read that registry. The shared
options and the typed converters that refuse bad values are in `_options`. Each subcommand only
parses, calls the library and prints."""

from __future__ import annotations

import sys
import warnings

from convlens import __version__
from convlens._errors import ConvlensError
from convlens.cli._registry import COMMANDS, Command, Parser, command

# isort: off
from convlens.cli import (
    _model,
    _image,
    _attribute,
    _trust,
    _synthesis,
    _codes,
    _analysis,
    _dataset,
    _atlas,
)

# isort: on

GROUPS = (
    _model,
    _image,
    _attribute,
    _trust,
    _synthesis,
    _codes,
    _analysis,
    _dataset,
    _atlas,
)
"""The modules of the command groups, in the order their commands are registered and listed."""


def build_parser() -> Parser:
    """The argument parser, with one subparser per registered command."""
    parser = Parser(prog="convlens", description="See what a convolutional network has learned.")
    parser.add_argument("--version", action="version", version=f"convlens {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in COMMANDS.values():
        sub = subparsers.add_parser(entry.name, help=entry.help, description=entry.help)
        entry.arguments(sub)
        sub.set_defaults(run=entry.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit status: 0, or 2 with one line on stderr for a
    bad value (refused while parsing) or a domain error, 130 when interrupted."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse: 0 after --help or --version, 2 for a bad value
        return int(stop.code or 0)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, *rest, **kw: f"convlens: {message}\n"
    try:
        args.run(args)
    except ConvlensError as error:
        print(f"convlens {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convlens: interrupted; finished work is kept", file=sys.stderr)
        return 130
    return 0


__all__ = ["COMMANDS", "Command", "build_parser", "command", "main"]
