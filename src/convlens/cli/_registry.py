"""The command registry: every subcommand is registered once with `@command`; the parser, `--help`
and the README's list all read `COMMANDS`, in registration order."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, how to add its arguments, and what it runs."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


COMMANDS: dict[str, Command] = {}


def command(
    name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None
):
    """Register the decorated function as subcommand `name` (a name is registered once)."""

    def decorate(run: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is registered twice")
        COMMANDS[name] = Command(name, help, arguments, run)
        return run

    return decorate


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `<prog>: error: <message>`, with exit status
    2 (no usage block); `--help` is unchanged. Subparsers are of the same class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")
