"""What a long stage has finished so far, so that an interrupted build resumes inside the stage
instead of redoing it: the units stage's top-9 figures and the synthesis stage's unit images of
a resnet50 take hours. Each rank appends the units whose files it has written (atomically) to
`.stages/<stage>.<rank>.log`, under a first line holding the stage's settings; a resumed build
with the same settings skips the units of every rank's log (the unit images skip a chunk when
all its units are logged)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from convlens._io import replace_atomically


@dataclass(frozen=True)
class Ledger:
    """The units of one stage finished before this run (`done`, as "layer<TAB>channel" keys)
    and the log this rank appends its own to."""

    path: Path
    done: frozenset[str]

    def finished(self, layer: str, channel: int) -> bool:
        """Whether `channel` of `layer` was finished by an earlier run with the same settings."""
        return _key(layer, channel) in self.done

    def all_finished(self, layer: str, channels: Iterable[int]) -> bool:
        """Whether every one of `channels` of `layer` was finished by such a run."""
        return all(self.finished(layer, c) for c in channels)

    def record(self, layer: str, channels: Iterable[int]) -> None:
        """Note `channels` of `layer` as finished; call it once their files are written."""
        with self.path.open("a") as log:
            log.write("".join(_key(layer, c) + "\n" for c in channels))


def _key(layer: str, channel: int) -> str:
    return f"{layer}\t{channel}"


def _header(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


def _logs(folder: Path, stage: str) -> dict[Path, list[str]]:
    """Each log of `stage` in `folder` and its whole lines (the header first; a last line cut
    off by an interruption, without its newline, is left out)."""
    return {
        path: path.read_text().split("\n")[:-1] for path in sorted(folder.glob(f"{stage}.*.log"))
    }


def open_ledger(folder: Path, stage: str, settings: dict, rank: int) -> Ledger:
    """This rank's ledger of `stage` in `folder`: `done` gathers every rank's finished units
    logged under the same `settings`; this rank's log is started afresh under other settings,
    or kept without a cut-off last line."""
    header, done = _header(settings), set()
    logs = _logs(folder, stage)
    for lines in logs.values():
        if lines[:1] == [header]:
            done.update(lines[1:])
    own = folder / f"{stage}.{rank}.log"
    kept = logs.get(own, [])
    text = "".join(line + "\n" for line in kept) if kept[:1] == [header] else header + "\n"
    replace_atomically(own, lambda path: path.write_text(text))
    return Ledger(own, frozenset(done))


def clear_ledgers(folder: Path, stage: str, keep: dict | None = None) -> None:
    """Remove the logs of `stage` in `folder`, but those written under the settings `keep`."""
    for path, lines in _logs(folder, stage).items():
        if keep is None or lines[:1] != [_header(keep)]:
            path.unlink()
