"""Every bad command-line value is refused cleanly: exit status 2 and one line naming the option,
the value and what is allowed, with no traceback, no output and no model loaded. The walk over
the registry feeds each converter's own bad examples to every option that uses it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from test_loading import cache_random_default

import convlens.training
from convlens.cli import COMMANDS, build_parser, command, main
from convlens.cli._options import Converter, boxes, non_negative_ints, positive_float, unit

# a harmless value for each option some command requires
HARMLESS = {
    "--image": "sample:coffee",
    "--layer": "features.1",
    "--target-class": "0",
    "--indices": "0",
    "--boxes": "0,0,4,4",
}
# options that are free text (specs, names, paths): everything else goes through a Converter
TEXT = {"model", "weights", "data", "image", "layer", "queries", "gallery", "out"}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(found.choices)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def required_arguments(parser: argparse.ArgumentParser, leave_out: str) -> list[str]:
    argv = []
    for action in options(parser):
        flag = action.option_strings[0] if action.option_strings else None
        if action.required and flag != leave_out:
            argv += [flag, HARMLESS[flag]]
    return argv


BAD_VALUES = [
    (name, action.option_strings[0], bad)
    for name, parser in subparsers().items()
    for action in options(parser)
    if isinstance(action.type, Converter)
    for bad in action.type.bad
]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A fresh, empty working folder; the model loader refuses to run."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(convlens.training, "load_model", refuse)
    return folder


def with_out(argv: list[str], folder: Path) -> list[str]:
    """`argv` with `--out` inside `folder`, for a command that has `--out`."""
    parser = subparsers()[argv[0]]
    has_out = any("--out" in a.option_strings for a in options(parser))
    return [*argv, "--out", str(folder / "out")] if has_out else argv


def refused(argv: list[str], capsys) -> str:
    """The one error line of a run of `argv` that must exit with status 2."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err.strip()


def test_the_walk_covers_every_command_with_numbers():
    walked = {name for name, _, _ in BAD_VALUES}
    assert set(COMMANDS) - walked == {"models"}
    assert len(BAD_VALUES) > 150


@pytest.mark.parametrize(("name", "option", "bad"), BAD_VALUES, ids=lambda v: str(v))
def test_a_bad_value_exits_2_with_one_line_and_writes_nothing(name, option, bad, work, capsys):
    parser = subparsers()[name]
    argv = [name, *required_arguments(parser, option), f"{option}={bad}"]
    line = refused(with_out(argv, work), capsys)
    assert line.startswith(f"convlens {name}: error: argument {option}: expected ")
    assert line.endswith(f", got {bad!r}")
    assert list(work.iterdir()) == []


def test_every_number_and_list_goes_through_a_converter():
    for name, parser in subparsers().items():
        for action in options(parser):
            assert action.type not in (int, float, str, str.split), (name, action.dest)
            typed = isinstance(action.type, Converter) or action.type is Path
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction))
            assert typed or flag or action.choices or action.dest in TEXT, (name, action.dest)


def test_converters_read_good_values():
    assert non_negative_ints("0, 3,12") == [0, 3, 12]
    assert positive_float("0.5") == 0.5
    assert boxes("0,1,4,5;2,2,9,9") == [(0, 1, 4, 5), (2, 2, 9, 9)]
    assert unit("features.12:3:4:5") == convlens.Unit("features.12", 3, 4, 5)


def test_a_command_name_is_registered_once():
    with pytest.raises(ValueError, match="'maps' is registered twice"):
        command("maps", "again")(lambda args: None)


@pytest.mark.parametrize(
    "argv",
    [
        ["scan", "--nope"],
        ["correspondence", "--indices", "0"],
        ["layers", "--input-size", "1", "2", "3"],
        ["attribute", "--image", "x.png", "--target", "1", "--unit", "features.1:0"],
    ],
)
def test_argparse_errors_are_one_line_too(argv, work, capsys):
    line = refused(argv, capsys)
    assert line.startswith("convlens") and ": error: " in line
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    ("command_line", "message"),
    [
        (
            "occlude --image sample:coffee --indices 99",
            "--indices 99 is outside the data, which has 1 item(s) (0..0)",
        ),
        (
            "occlude --image sample:coffee,chelsea --indices 1,2",
            "--indices 2 is outside the data, which has 2 item(s)",
        ),
        ("invariance --data sample:coffee --indices 0,3", "--indices 3 is outside"),
        ("correspondence --data sample:coffee --indices 5 --boxes 0,0,4,4", "--indices 5 is"),
        (
            "correspondence --data sample:coffee,chelsea --indices 0,1,0 --boxes 0,0,4,4;1,1,5,5",
            "--boxes gives 2 boxes for 3 --indices",
        ),
        (
            "neighbours --queries sample:coffee --indices 2 --gallery sample:chelsea",
            "--indices 2 is outside",
        ),
        (
            "neighbours --queries sample:coffee --indices 0 --gallery sample:chelsea --k 2",
            "--k 2 is more than the 1 image(s) of --gallery",
        ),
        (
            "fool --image sample:coffee --target-class 1 --data sample:coffee",
            "FGSM needs labelled images",
        ),
        ("maps --image missing.png", "missing.png"),
    ],
)
def test_what_only_the_data_can_refuse_stops_before_the_model_loads(
    command_line, message, work, capsys
):
    argv = command_line.split()
    line = refused(with_out(argv, work), capsys)
    assert line.startswith(f"convlens {argv[0]}: error: ") and message in line
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    ("command_line", "option"),
    [
        ("attribute --image sample:coffee --target 10", "--target"),
        ("occlude --image sample:coffee --target 10", "--target"),
        ("fool --image sample:coffee --target-class 12", "--target-class"),
        ("synthesize --classes 3,10", "--classes"),
        ("synthesize --objective class:10", "--objective"),
    ],
)
def test_a_class_the_model_does_not_have_is_refused_before_any_output(
    command_line, option, cache, tmp_path, monkeypatch, capsys
):
    argv = command_line.split()
    cache_random_default()
    monkeypatch.chdir(tmp_path)
    line = refused(with_out(argv, tmp_path), capsys)
    assert f"{option}: class 1" in line and "which has 10 classes (0..9)" in line
    assert not (tmp_path / "out").exists()
