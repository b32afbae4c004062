"""Resuming inside a stage: an atlas build interrupted in the middle of its top-9 figures or its
unit images redoes only the units it had not finished, and ends with the same files as a build
that was never interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import Subset

from convlens.atlas import AtlasConfig, stages, unit_images, write_atlas
from convlens.atlas.ledger import clear_ledgers, open_ledger
from convlens.atlas.stages import SKIPPABLE
from convlens.data import FashionMNIST
from convlens.data.fashion_mnist import DEBIAN_DIR
from convlens.synthesis import optimize
from tests.conftest import random_builtin

CHUNK = 12  # units synthesised at once (32 and 64 units: 3 and 6 chunks)


def test_a_ledger_keeps_the_units_logged_under_the_same_settings(tmp_path):
    ledger = open_ledger(tmp_path, "units", {"steps": 4}, rank=0)
    assert not ledger.done
    ledger.record("features.1", [0, 1])
    open_ledger(tmp_path, "units", {"steps": 4}, rank=1).record("features.13", [5])
    with ledger.path.open("a") as log:
        log.write("features.1\t2")  # cut off by an interruption before its newline
    again = open_ledger(tmp_path, "units", {"steps": 4}, rank=0)
    assert again.done == {"features.1\t0", "features.1\t1", "features.13\t5"}
    assert again.finished("features.13", 5) and not again.finished("features.1", 2)
    again.record("features.1", [3])  # starts its own line: the cut-off one is gone
    for _ in range(2):
        reopened = open_ledger(tmp_path, "units", {"steps": 4}, rank=0)
        assert reopened.finished("features.1", 3) and not reopened.finished("features.1", 2)
    assert not open_ledger(tmp_path, "units", {"steps": 8}, rank=2).done  # other settings
    clear_ledgers(tmp_path, "units", keep={"steps": 8})
    assert [p.name for p in tmp_path.glob("units.*.log")] == ["units.2.log"]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """`build(out, resume)`: the atlas of two layers' units (the top-9 figures and the unit
    images, nothing else), with small passes and chunks so that each stage has several."""
    if not DEBIAN_DIR.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    loaded = random_builtin()
    data = Subset(FashionMNIST("test", transform=loaded.transform), range(40))
    config = AtlasConfig(
        layers=["features.1", "features.13"],
        images=0,
        skip=[name for name in SKIPPABLE if name != "synthesis"],
        synthesis_steps=3,
        data_description="fashion-mnist test, first 40",
    )

    def run(
        out: Path, resume: bool = False, steps: int = 3, progress: bool = False, **changes
    ) -> Path:
        settings = AtlasConfig(**{**config.__dict__, "synthesis_steps": steps, **changes})
        return write_atlas(loaded, data, out, settings, resume=resume, progress=progress)

    return run


@pytest.fixture
def small_passes(monkeypatch):
    monkeypatch.setattr(stages, "PROJECTION_PIXELS", 28 * 28 * 9 * 8)  # 8 channels a pass
    monkeypatch.setattr(unit_images, "budget_chunk", lambda side: CHUNK)


def counted(monkeypatch, module, name: str, stop_at: int | None = None) -> list[int]:
    """Count the calls of `module.name`; the call numbered `stop_at` raises KeyboardInterrupt."""
    calls, real = [], getattr(module, name)

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def unit_files(out: Path) -> dict[str, bytes]:
    files = (out / "img/units").rglob("*")
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files if p.is_file()}


def test_an_interrupted_build_redoes_only_unfinished_units_and_equals_an_uninterrupted_one(
    build, small_passes, monkeypatch, tmp_path
):
    build(tmp_path / "whole")
    broken = tmp_path / "broken"
    with monkeypatch.context() as patch:  # the top-9 figures stop in their 6th pass of 12
        counted(patch, stages, "top_examples_of", stop_at=6)
        with pytest.raises(KeyboardInterrupt):
            build(broken)
    assert not (broken / ".stages" / "units.json").exists()
    with monkeypatch.context() as patch:
        passes = counted(patch, stages, "top_examples_of")
        counted(patch, optimize, "_step", stop_at=4 * 3 + 2)  # Ctrl-C in chunk 5 of 9, step 2
        with pytest.raises(KeyboardInterrupt):
            build(broken, resume=True)
    assert len(passes) == 12 - 5
    assert (broken / ".stages" / "units.json").exists()
    assert not list((broken / ".stages").glob("units.*.log"))  # cleared once it finished
    chunks = counted(monkeypatch, unit_images, "layer_images")
    build(broken, resume=True, progress=True)  # features.1 done: its time is not estimated
    assert len(chunks) == 9 - 4 + 1  # and one chunk of features.13 timed for the estimate
    assert unit_files(broken) == unit_files(tmp_path / "whole")
    assert (broken / "units/features.13/0063.html").exists()


def test_other_settings_or_no_resume_redo_every_unit(build, small_passes, monkeypatch, tmp_path):
    out = tmp_path / "atlas"
    for resume, steps in ((True, 2), (False, 3)):
        with monkeypatch.context() as patch:  # 4 chunks of 9 finished with 3 steps
            counted(patch, unit_images, "layer_images", stop_at=5)
            with pytest.raises(KeyboardInterrupt):
                build(out)
        with monkeypatch.context() as patch:
            chunks = counted(patch, unit_images, "layer_images")
            build(out, resume=resume, steps=steps)
        assert len(chunks) == 9, (resume, steps)


def test_a_finished_stage_rebuilt_under_other_settings_is_not_trusted_after_an_interruption(
    build, small_passes, monkeypatch, tmp_path
):
    out = tmp_path / "atlas"
    build(out)  # finished with 3 steps
    with monkeypatch.context() as patch:  # a rebuild with 2 steps rewrites 4 chunks, then stops
        counted(patch, unit_images, "layer_images", stop_at=5)
        with pytest.raises(KeyboardInterrupt):
            build(out, resume=True, steps=2)
    chunks = counted(monkeypatch, unit_images, "layer_images")
    build(out, resume=True)  # 3 steps again: the old marker must not pass for these files
    assert len(chunks) == 9


def test_pages_show_no_stage_of_other_settings_and_no_stale_dataset_image(build, tmp_path):
    out = tmp_path / "atlas"
    build(out)
    page = out / "units" / "features.13" / "0005.html"
    assert "0005-synthesis.png" in page.read_text()
    build(out, resume=True, steps=2, skip=SKIPPABLE)  # the 3-step images are not this build's
    assert "0005-synthesis.png" not in page.read_text()
    shown = sorted((out / "img" / "data").iterdir())
    for path in shown:
        path.write_bytes(b"an image of another atlas")
    build(out, resume=True, data_description="fashion-mnist test, first 40, again", skip=SKIPPABLE)
    assert all(Image.open(path).size == (56, 56) for path in shown)  # each rewritten, enlarged
