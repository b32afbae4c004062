"""The command line: registry-driven help, the layer table, errors, and the demo at this stage."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_loading import cache_random_default

from convlens.cli import COMMANDS, build_parser, main
from convlens.data.fashion_mnist import DEBIAN_DIR


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_registered_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([name, "--help"])
    assert exit_info.value.code == 0
    assert COMMANDS[name].help.split(" (")[0] in " ".join(capsys.readouterr().out.split())


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "convlens.cli", "layers", "torchvision:alexnet"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "features.10   Conv2d             256x13x13      163x163 / 16 @ -66" in result.stdout


def test_unknown_layer_is_one_clear_line_with_close_matches(cache, tmp_path, capsys):
    cache_random_default()
    Image.new("L", (28, 28), 128).save(tmp_path / "x.png")
    code = main(
        [
            "maps",
            "--image",
            str(tmp_path / "x.png"),
            "--layers",
            "features.44",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "unknown layer 'features.44'; closest: 'features.4'" in capsys.readouterr().err


def test_maps_on_a_sample_photo_writes_grids(cache, tmp_path):
    cache_random_default()
    assert main(["maps", "--image", "sample:coffee", "--out", str(tmp_path / "m")]) == 0
    grid = np.asarray(Image.open(tmp_path / "m" / "maps-features.1.png"))
    assert grid.std() > 10  # not blank
    assert set(np.load(tmp_path / "m" / "maps.npz").files) == {
        "features.1",
        "features.5",
        "features.9",
        "features.11",
        "features.13",
    }


@pytest.mark.skipif(not DEBIAN_DIR.exists(), reason="needs Debian's dataset-fashion-mnist")
def test_demo_writes_the_atlas_and_resume_reuses_its_stages(cache, tmp_path, capsys):
    cache_random_default()
    skip = ["--skip", "synthesis,evolution,embedding,invariance", "--images", "2"]
    assert main(["demo", *skip, "--out", str(tmp_path / "demo")]) == 0
    page = (tmp_path / "demo" / "index.html").read_text()
    assert 'href="layers/features.13.html"' in page and "Ankle boot" in page
    assert 'Not built (stage "synthesis" skipped)' in page
    unit = tmp_path / "demo" / "img" / "units" / "features.13" / "0005-top9.png"
    first = unit.stat().st_mtime_ns
    assert main(["demo", *skip, "--resume", "--out", str(tmp_path / "demo")]) == 0
    assert unit.stat().st_mtime_ns == first  # the finished stage was not redone
    assert "MB) in" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient", "saliency"])
def test_attribute_writes_pngs_and_the_raw_map(cache, tmp_path, method):
    import convlens as cl
    from convlens.attribution import METHODS
    from convlens.data import open_image

    cache_random_default()
    out = tmp_path / method
    assert (
        main(
            [
                "attribute",
                "--method",
                method,
                "--image",
                "sample:coffee",
                "--unit",
                "features.9:2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    loaded = cl.load_model("zfnet-fashion")
    image = loaded.transform(open_image("sample:coffee"))
    expected = METHODS[method](loaded.model, image[None], cl.Unit("features.9", 2))[0]
    np.testing.assert_allclose(np.load(out / f"{method}.npz")[method], expected.numpy(), atol=1e-6)
    shown = np.asarray(
        Image.open(out / ("saliency-overlay.png" if method == "saliency" else f"{method}.png"))
    )
    assert shown.shape[0] >= 224 and shown.std() > 1


def test_signed_stretch_puts_zero_at_grey_and_clips_the_tail():
    import torch

    from convlens.render import signed_stretch

    x = torch.tensor([[-4.0, 0.0, 1.0, 2.0]])
    torch.testing.assert_close(signed_stretch(x), torch.tensor([[0.0, 0.5, 0.625, 0.75]]))
    clipped = signed_stretch(x, quantile=0.5)  # median |x| = 1.5
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.5, 0.5 + 0.5 / 1.5, 1.0]]))


def test_scan_command_skips_a_corrupt_image_and_renders(cache, tmp_path, capsys):
    from test_data import make_folder

    from convlens.scan import ScanResult

    cache_random_default()
    make_folder(tmp_path / "imgs")
    out = tmp_path / "scan"
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        code = main(
            [
                "scan",
                "--data",
                str(tmp_path / "imgs"),
                "--layers",
                "features.5",
                "--k",
                "3",
                "--out",
                str(out),
                "--render",
            ]
        )
    assert code == 0
    assert "(1 unreadable, skipped)" in capsys.readouterr().out
    result = ScanResult.load(out / "scan.safetensors")
    assert result.meta["model"] == "zfnet-fashion" and len(result.meta["skipped"]) == 1
    assert (
        result["features.5"].indices.shape == (64, 3)
        and not (out / "scan-state-0-of-1.safetensors").exists()
    )
    figure = np.asarray(Image.open(out / "features.5" / "unit-0000.png"))
    assert figure.std() > 1


def test_occlude_writes_the_fig7_row_and_maps_equal_the_library(cache, tmp_path):
    import convlens as cl
    from convlens.data import open_data

    cache_random_default()
    out = tmp_path / "occ"
    argv = ["occlude", "--image", "sample:coffee,chelsea", "--window", "8", "--stride", "4"]
    assert main([*argv, "--target", "3", "--out", str(out)]) == 0
    loaded = cl.load_model("zfnet-fashion")
    image = open_data("sample:chelsea", loaded.transform)[0][0]
    expected = cl.occlusion(loaded.model, image, 3, window=8, stride=4, layer="features.13")
    saved = np.load(out / "image-1" / "occlusion.npz")
    np.testing.assert_allclose(saved["prob"], expected.prob[0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(saved["argmax"], expected.argmax[0].numpy())
    for panel in "abcde":
        assert np.asarray(Image.open(out / "image-1" / f"occlusion-{panel}.png")).std() > 1
    row = np.asarray(Image.open(out / "image-0" / "occlusion.png"))
    assert row.shape[1] > 5 * 224


def test_occlude_rejects_a_window_larger_than_the_image(cache, tmp_path, capsys):
    cache_random_default()
    code = main(["occlude", "--image", "sample:coffee", "--window", "40", "--stride", "2"])
    assert code == 2
    assert "window 40 does not fit the 28x28 image" in capsys.readouterr().err


def test_attribute_draws_several_methods_side_by_side_and_reports_the_layer_and_gap(
    cache, tmp_path, capsys
):
    import convlens as cl
    from convlens.data import open_image

    cache_random_default()
    out = tmp_path / "several"
    methods = "gradcam,gradcam++,ig,guided"
    args = ["attribute", "--method", methods, "--image", "sample:coffee", "--target", "3"]
    assert main([*args, "--steps", "20", "--shared-scale", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gradcam: layer features.13" in printed and "completeness gap" in printed
    loaded = cl.load_model("zfnet-fashion")
    image = loaded.transform(open_image("sample:coffee"))[None]
    expected = cl.grad_cam_plus_plus(loaded.model, image, 3)[0]
    saved = np.load(out / "gradcam-plus-plus.npz")["gradcam++"]
    np.testing.assert_allclose(saved, expected.numpy(), atol=1e-6)
    attribution, gap = cl.integrated_gradients(loaded.model, image, 3, steps=20, return_delta=True)
    ig = np.load(out / "ig.npz")
    np.testing.assert_allclose(ig["ig"], attribution[0].numpy(), atol=1e-6)
    assert f"completeness gap {float(gap[0]):+.4f}" in printed
    row = np.asarray(Image.open(out / "methods.png"))
    assert row.shape[1] > 4 * 224 and row.std() > 10


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["--method", "guided", "--layer", "features.13"],
            "--layer applies to the class activation maps and channels only",
        ),
        (["--method", "gradcam", "--steps", "9"], "--steps applies to ig only"),
        (["--method", "gradient", "--sigma", "0.2"], "--sigma applies to --smooth"),
        (["--method", "scorecam", "--unit", "features.9:2"], "use --target, not --unit"),
        (["--method", "gradcam", "--layer", "features.133"], "closest: 'features.13'"),
    ],
)
def test_attribute_refuses_options_that_do_not_apply_before_any_output(
    cache, tmp_path, capsys, extra, message
):
    cache_random_default()
    out = tmp_path / "refused"
    assert main(["attribute", "--image", "sample:coffee", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_attribute_smooths_through_the_noise_tunnel(cache, tmp_path, capsys):
    import convlens as cl
    from convlens.data import open_image

    cache_random_default()
    out = tmp_path / "smooth"
    args = ["--method", "gradcam", "--smooth", "4", "--sigma", "0.1", "--kind", "vargrad"]
    assert (
        main(["attribute", "--image", "sample:coffee", "--target", "2", *args, "--out", str(out)])
        == 0
    )
    loaded = cl.load_model("zfnet-fashion")
    image = loaded.transform(open_image("sample:coffee"))[None]
    expected = cl.noise_tunnel(
        "gradcam", loaded.model, image, 2, samples=4, sigma=0.1, kind="vargrad", seed=0
    )
    np.testing.assert_allclose(
        np.load(out / "gradcam.npz")["gradcam"], expected[0].numpy(), atol=1e-6
    )
    # --batch-size bounds the noisy images, not also ig's own batch
    args = ["--method", "ig", "--steps", "4", "--smooth", "2", "--batch-size", "1"]
    assert main(["attribute", "--image", "sample:coffee", *args, "--out", str(out)]) == 0


@pytest.mark.skipif(not DEBIAN_DIR.exists(), reason="needs Debian's dataset-fashion-mnist")
def test_trust_writes_the_table_figures_and_numbers_of_the_library(cache, tmp_path, capsys):
    import json

    import convlens as cl
    from convlens.trust.assess import assess

    cache_random_default()
    out = tmp_path / "trust"
    args = ["trust", "--n", "6", "--methods", "gradient,guided", "--steps", "8"]
    assert main([*args, "--out", str(out)]) == 0
    assert "randomisation" in capsys.readouterr().out
    numbers = json.loads((out / "trust.json").read_text())
    loaded = cl.load_model("zfnet-fashion")
    data = cl.data.FashionMNIST("test", transform=loaded.transform)
    images = torch.stack([data[i][0] for i in range(6)])
    expected = assess(
        loaded.model, images, [data[i][1] for i in range(6)], ["gradient", "guided"], steps=8
    )
    for row, mine in zip(numbers["table"], expected.table()):
        assert row["map"] == mine["map"] and row["passes"] == mine["passes"]
        assert row["deletion_auc"] == pytest.approx(mine["deletion_auc"], abs=1e-6)
    assert [r["map"] for r in numbers["table"]] == [
        "gradient",
        "guided",
        "random",
        "edges",
        "centre",
    ]
    assert (out / "trust.csv").read_text().startswith("map,randomisation,baseline,passes")
    for figure in ("randomisation", "similarity", "faithfulness"):
        assert np.asarray(Image.open(out / f"{figure}.png")).std() > 10, figure
    blocks = ["trust", "--n", "2", "--methods", "gradient", "--steps", "2", "--blocks"]
    assert main([*blocks, "--out", str(out)]) == 0
    by_block = json.loads((out / "trust.json").read_text())["steps"]
    top_down = ["classifier", "features.13", "features.11", "features.9", "features.5"]
    assert by_block == [*top_down, "features.1"]


def test_attribute_channels_prints_and_draws_the_maps_behind_the_decision(cache, tmp_path, capsys):
    import convlens as cl
    from convlens.data import open_image

    model = cache_random_default()
    out = tmp_path / "channels"
    command = ["attribute", "--method", "channels", "--image", "sample:coffee", "--target", "3"]
    assert main([*command, "--layer", "features.9", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    loaded = cl.load_model("zfnet-fashion")
    image = loaded.transform(open_image("sample:coffee"))[None]
    expected = cl.channel_attribution(model.eval(), image, 3, "features.9")[0]
    strongest = int(expected.as_subclass(torch.Tensor).abs().argmax())
    assert f"map {strongest:4d}" in printed.splitlines()[1]  # the strongest first, with its sign
    saved = np.load(out / "channels.npz")["scores"][0]
    np.testing.assert_allclose(saved, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert (out / "channels.png").is_file()
    assert main([*command, "--smooth", "4", "--out", str(tmp_path / "refused")]) == 2
    assert "not a map" in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_groups_writes_its_figure_and_refuses_too_many_groups_in_one_line(cache, tmp_path, capsys):
    cache_random_default()
    out = tmp_path / "groups"
    args = ["groups", "--image", "sample:coffee", "--groups", "3", "--icon-steps", "2"]
    assert main([*args, "--out", str(out)]) == 0
    assert np.asarray(Image.open(out / "groups.png")).std() > 10
    refused = tmp_path / "refused"
    assert (
        main(["groups", "--image", "sample:coffee", "--groups", "1000", "--out", str(refused)]) == 2
    )
    err = capsys.readouterr().err
    assert "groups must be at most 49" in err and len(err.strip().splitlines()) == 1
    assert not refused.exists()


@pytest.mark.skipif(not DEBIAN_DIR.exists(), reason="needs Debian's dataset-fashion-mnist")
def test_activation_atlas_writes_each_class_it_can_and_names_the_others(cache, tmp_path, capsys):
    cache_random_default()
    out = tmp_path / "atlas"
    args = ["activation-atlas", "--samples", "200", "--grid", "6", "--icon-steps", "2"]
    assert main([*args, "--classes", "0,1,2,3,4,5,6,7,8,9", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert np.asarray(Image.open(out / "atlas-features.13.png")).std() > 10
    lines = {line.split()[1]: line for line in printed.splitlines() if line.startswith("  class")}
    for label in range(10):
        written = (out / f"atlas-features.13-class-{label}.png").exists()
        assert written == lines[str(label)].endswith("cells")
        assert written != lines[str(label)].endswith("no sample predicted as it")
    assert main([*args, "--grid", "101", "--out", str(tmp_path / "no")]) == 2
    assert "--grid" in capsys.readouterr().err and not (tmp_path / "no").exists()
