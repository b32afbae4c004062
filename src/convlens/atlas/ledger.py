"""What a long stage has finished so far, so that an interrupted build resumes inside the stage
instead of redoing it: the units stage's top-9 figures and the synthesis stage's unit images of
a resnet50 take hours. Each rank appends the units whose files it has written (atomically) to
`.stages/<stage>.<rank>.log`, under a first line holding the stage's settings; a resumed build
with the same settings skips the units of every rank's log."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Ledger:
    """The units of one stage finished before this run (`done`, as "layer<TAB>channel" keys)
    and the log this rank appends its own to."""

    path: Path
    done: frozenset[str]

    def finished(self, layer: str, channel: int) -> bool:
        """Whether `channel` of `layer` was finished by an earlier run with the same settings."""
        return _key(layer, channel) in self.done

    def record(self, layer: str, channels: Iterable[int]) -> None:
        """Note `channels` of `layer` as finished; call it once their files are written."""
        with self.path.open("a") as log:
            log.write("".join(_key(layer, c) + "\n" for c in channels))


def _key(layer: str, channel: int) -> str:
    return f"{layer}\t{channel}"


def _header(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


def _logs(folder: Path, stage: str) -> list[Path]:
    return sorted(folder.glob(f"{stage}.*.log"))


def open_ledger(folder: Path, stage: str, settings: dict, rank: int) -> Ledger:
    """This rank's ledger of `stage` in `folder`: `done` gathers every rank's finished units
    logged under the same `settings` (a line cut off by an interruption counts for nothing)."""
    header, done = _header(settings), set()
    for path in _logs(folder, stage):
        lines = path.read_text().split("\n")[:-1]  # the last piece has no newline: unfinished
        if lines and lines[0] == header:
            done.update(lines[1:])
    own = folder / f"{stage}.{rank}.log"
    text = own.read_text() if own.exists() else ""
    if text.split("\n", 1)[0] != header:
        folder.mkdir(parents=True, exist_ok=True)
        own.write_text(header + "\n")
    elif not text.endswith("\n"):  # end the cut-off line, so the next key starts its own
        with own.open("a") as log:
            log.write("\n")
    return Ledger(own, frozenset(done))


def clear_ledgers(folder: Path, stage: str, keep: dict | None = None) -> None:
    """Remove the logs of `stage` in `folder`, but those written under the settings `keep`."""
    for path in _logs(folder, stage):
        if keep is None or path.read_text().split("\n", 1)[0] != _header(keep):
            path.unlink()
