"""The atlas: built from a small subset, every local link resolves, and a real browser
(Debian's Chromium driven by Playwright) finds no broken image, no console error, no request
leaving file:// and a hostile class name shown as text."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from convlens._errors import ConvlensError
from convlens.atlas import AtlasConfig, write_atlas
from convlens.data import FashionMNIST
from convlens.data.fashion_mnist import DEBIAN_DIR
from convlens.models.loading import LoadedModel
from convlens.models.preprocess import Preprocess
from convlens.models.zoo import BUILTIN_MODELS, FASHION_CLASSES
from convlens.report import write_checkpoint

HOSTILE = "<script>alert(1)</script>"
LINK = re.compile(r'(?:href|src)="([^"]+)"')


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    if not DEBIAN_DIR.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    out = tmp_path_factory.mktemp("atlas")
    entry = BUILTIN_MODELS["zfnet-fashion"]
    checkpoints = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = out.parent / f"{out.name}-epoch-{seed + 1:03d}.safetensors"
        write_checkpoint(path, entry.build().state_dict(), {"config": {"model": entry.name}})
        checkpoints.append(str(path))
    torch.manual_seed(1)
    model = entry.build().eval()
    classes = (*FASHION_CLASSES[:9], HOSTILE)  # test image 0 is class 9
    transform = Preprocess(1, (28, 28), entry.mean, entry.std)
    loaded = LoadedModel(model, transform, classes, entry.input_size, entry.name)
    data = Subset(FashionMNIST("test", transform=transform), range(144))
    config = AtlasConfig(
        layers=["features.1", "features.13"],
        images=3,
        checkpoints=checkpoints,
        synthesis_steps=4,
        embed=100,
        data_description="fashion-mnist test, first 144",
        trust_images=8,
    )
    write_atlas(loaded, data, out, config, progress=False)
    return out


def local_links(page: Path) -> list[str]:
    return LINK.findall(page.read_text())


def assert_links_resolve(out: Path) -> int:
    """Every local link of every page, from the page's own folder, is a file inside `out`;
    nothing points outside. Returns the number of pages."""
    pages = sorted(out.rglob("*.html"))
    for page in pages:
        for link in local_links(page):
            assert "://" not in link and not link.startswith("//"), (page.name, link)
            target = (page.parent / link.split("#")[0]).resolve()
            assert target.is_file() and target.is_relative_to(out.resolve()), (page, link)
    return len(pages)


def test_every_local_link_of_every_page_resolves_and_nothing_is_external(atlas):
    assert assert_links_resolve(atlas) > 100  # index, 2 layers, 96 units, 3 images
    assert {p.name for p in atlas.iterdir()} >= {"layers", "units", "images", "assets", "img"}
    assert sorted(p.name for p in atlas.glob("*.html")) == ["index.html", "trust.html"]
    assert "http" not in (atlas / "assets" / "style.css").read_text()


def test_resume_skips_finished_stages(atlas):
    marks = sorted(p.stem for p in (atlas / ".stages").glob("*.json"))
    assert marks == sorted(
        [
            "summary",
            "scan",
            "units",
            "synthesis",
            "evolution",
            "images",
            "embedding",
            "invariance",
            "trust",
            "activation-atlas",
        ]
    )


def test_image_pages_show_five_attributions_on_one_scale_and_each_on_its_own(atlas):
    import numpy as np
    from PIL import Image

    folder = atlas / "img" / "image-0"
    row = np.asarray(Image.open(folder / "methods.png"))
    assert row.shape[1] > 6 * 140 and row.std() > 10  # the image and five maps, not blank
    for name in ("saliency-overlay", "guided", "gradcam-overlay", "guided-gradcam", "ig"):
        assert np.asarray(Image.open(folder / f"{name}.png")).std() > 1, name
        assert f"{name}.png" in (atlas / "images" / "0.html").read_text()
    page = (atlas / "images" / "0.html").read_text()
    assert 'href="../trust.html"' in page and "guided-gradcam " in page
    trust = (atlas / "trust.html").read_text()
    assert trust.count("<tr>") == 1 + 7 + 3  # header, the methods, the reference maps


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_a_browser_finds_every_image_and_link_working(atlas):
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("CONVLENS_SCREENSHOTS", atlas / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        errors, outside, dialogs = [], [], []
        context.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        context.on(
            "request", lambda r: None if r.url.startswith("file://") else outside.append(r.url)
        )
        context.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page, visitor = context.new_page(), context.new_page()
        for tab in (page, visitor):
            tab.on("pageerror", lambda e: errors.append(str(e)))
        main_pages = [
            "index.html",
            "layers/features.13.html",
            "units/features.13/0003.html",
            "images/0.html",
        ]
        for name in main_pages:
            page.goto((atlas / name).as_uri())
            page.evaluate(
                "async () => { for (const img of document.images) { img.loading = 'eager'; "
                "img.scrollIntoView(); } window.scrollTo(0, 0); }"
            )
            page.wait_for_load_state("load")
            page.wait_for_function("Array.from(document.images).every(i => i.complete)")
            broken = page.evaluate(
                "Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)"
            )
            assert broken == [], (name, broken)
            shot = name.replace("/", "-").removesuffix(".html")
            page.screenshot(path=str(shots / f"{shot}.png"), full_page=False)
            links = page.evaluate("Array.from(document.links).map(a => a.href)")
            assert links, name
            for link in links:
                assert link.startswith("file://"), link
                response = page.context.new_page()
                response.on(
                    "console", lambda m: errors.append(m.text) if m.type == "error" else None
                )
                response.on(
                    "request",
                    lambda r: None if r.url.startswith("file://") else outside.append(r.url),
                )
                response.goto(link)
                assert response.title(), link
                response.close()
        page.goto((atlas / "images" / "0.html").as_uri())
        assert HOSTILE in page.inner_text("h1")  # shown as text, never run
        page.goto((atlas / "layers" / "features.13.html").as_uri())
        page.fill("#filter", "12")
        visible = page.evaluate(
            "Array.from(document.querySelectorAll('.tile')).filter(t => t.style.display !== 'none').length"
        )
        assert visible == 1
        browser.close()
    assert errors == [] and outside == [] and dialogs == []


def test_a_small_unlabelled_dataset_gets_notes_instead_of_broken_sections(tmp_path):
    from convlens.data import open_data

    entry = BUILTIN_MODELS["zfnet-fashion"]
    torch.manual_seed(0)
    transform = Preprocess(1, (28, 28), entry.mean, entry.std)
    loaded = LoadedModel(
        entry.build().eval(), transform, FASHION_CLASSES, entry.input_size, entry.name
    )
    data = open_data("sample:coffee,chelsea,rocket", transform)
    config = AtlasConfig(layers=["features.13"], images=2, skip=("synthesis", "evolution"))
    index = write_atlas(loaded, data, tmp_path, config, progress=False).read_text()
    assert "t-SNE needs more than 90 images; the data has 3" in index
    assert "invariance needs labelled images" in index
    assert assert_links_resolve(tmp_path) > 3


def test_a_photo_model_gets_jpeg_figures_and_each_source_image_once(tmp_path):
    import numpy as np
    import torchvision
    from PIL import Image

    from convlens.data import open_data

    torch.manual_seed(0)
    model = torchvision.models.alexnet(num_classes=4).eval()
    transform = Preprocess(3, (96, 96), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    loaded = LoadedModel(model, transform, ("a", "b", "c", "d"), (3, 96, 96), "alexnet")
    data = open_data("sample:coffee,chelsea,rocket,astronaut", transform)
    config = AtlasConfig(layers=["features.1"], images=1, skip=("synthesis", "evolution", "trust"))
    write_atlas(loaded, data, tmp_path, config, progress=False)
    top9 = tmp_path / "img" / "units" / "features.1" / "0003-top9.jpg"
    assert np.asarray(Image.open(top9)).std() > 5
    assert sorted(p.name for p in (tmp_path / "img" / "data").iterdir()) == [
        "0.jpg",
        "1.jpg",
        "2.jpg",
        "3.jpg",
    ]  # 64 units x 4 top images, written once each
    assert not list(tmp_path.rglob("*-sources.*"))
    assert assert_links_resolve(tmp_path) > 64
    assert "../../img/data/2.jpg" in (tmp_path / "units" / "features.1" / "0003.html").read_text()
    (folder,) = (tmp_path / "img").glob("image-*")  # the image page's figures are JPEGs too
    suffixes = {p.suffix for p in folder.iterdir() if not p.name.startswith("maps-")}
    assert suffixes == {".jpg", ".npz", ".json"}  # the map grids: PNG or JPEG, the smaller
    icon = Image.open(tmp_path / "img" / "units" / "features.1" / "0003-top1.jpg")
    assert icon.size == (88, 88)  # the 11-pixel patch enlarged 8x, near its 92-pixel tile


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_gloo_processes_under_torchrun_write_the_one_process_atlas(tmp_path):
    """Same files, same pages, the same scan; every image and array equal (the one-process atlas
    is built with one thread per process, as torchrun runs each rank: optimisations amplify the
    last-bit differences of another thread count)."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    if not DEBIAN_DIR.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    worker = str(Path(__file__).parent / "atlas_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, worker, str(one)], check=True, env=env, timeout=600)
    command = ["torchrun", "--standalone", "--nnodes=1", "--nproc-per-node=2", worker, str(two)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for name in files:
        a, b = one / name, two / name
        if name.suffix == ".html":
            assert a.read_text() == b.read_text(), name
        elif name.suffix == ".png":
            assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), name
        elif name.suffix == ".npz":
            x, y = np.load(a), np.load(b)
            for key in x.files:
                np.testing.assert_allclose(x[key], y[key], atol=1e-6, err_msg=f"{name} {key}")
    first, second = load_file(one / "scan.safetensors"), load_file(two / "scan.safetensors")
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_each_layer_page_shows_the_filters_of_its_conv(atlas):
    page = (atlas / "layers" / "features.13.html").read_text()
    assert 'src="../img/filters-features.12.png"' in page and "8 strongest input channels" in page
    first = (atlas / "layers" / "features.1.html").read_text()
    assert 'src="../img/filters-features.0.png"' in first and "One tile per filter" in first
    assert 'src="../img/units/features.1/0003-filter.png"' in first  # each unit's own filter
    unit = (atlas / "units" / "features.1" / "0003.html").read_text()
    assert 'src="../../img/units/features.1/0003-filter.png"' in unit


def test_image_pages_link_the_maps_that_carried_the_prediction(atlas):
    import json

    page = (atlas / "images" / "0.html").read_text()
    listed = json.loads((atlas / ".stages" / "images.json").read_text())["pages"][0]["channels"]
    assert len(listed) == 6 and "Which feature maps carried it" in page
    values = [abs(unit["value"]) for unit in listed]
    assert values == sorted(values, reverse=True)  # strongest first
    first = listed[0]["c"]
    assert f'href="../units/features.13/{first:04d}.html"' in page
    assert f'src="../img/units/features.13/{first:04d}-synthesis.png"' in page
    assert f'src="../img/units/features.13/{first:04d}-top1.png"' in page  # its top-1 patch


def test_each_layer_page_shows_its_activation_atlas_linked_from_the_index(atlas):
    import json

    import numpy as np
    from PIL import Image

    index = (atlas / "index.html").read_text()
    record = json.loads((atlas / ".stages" / "activation-atlas.json").read_text())
    for layer in ("features.1", "features.13"):
        assert f'href="layers/{layer}.html#atlas"' in index
        page = (atlas / "layers" / f"{layer}.html").read_text()
        assert 'id="atlas"' in page and f'src="../img/layers/{layer}-atlas.png"' in page
        assert f'src="../img/layers/{layer}-atlas-classes.png"' in page
        figure = np.asarray(Image.open(atlas / "img" / "layers" / f"{layer}-atlas.png"))
        assert figure.std() > 20  # icons and class colours, not a blank page
        arrays = np.load(atlas / "img" / "layers" / f"{layer}-atlas.npz")
        assert arrays["counts"].sum() == record["layers"][layer]["samples"] == 144
        assert len(arrays["cells"]) == record["layers"][layer]["cells"]


def test_image_pages_show_the_neuron_groups_of_the_last_layer(atlas):
    import json

    import numpy as np
    from PIL import Image

    page = (atlas / "images" / "0.html").read_text()
    assert 'src="../img/image-0/groups.png"' in page and "Neuron groups" in page
    groups = json.loads((atlas / "img" / "image-0" / "groups.json").read_text())
    assert groups["layer"] == "features.13" and 0 <= groups["error"] < 1
    raw = np.load(atlas / "img" / "image-0" / "groups.npz")
    assert raw["maps"].min() >= 0 and raw["icons"].shape == (6, 1, 28, 28)
    assert raw["icons"].dtype == np.uint8 and raw["icons"].max() > 0  # as displayed
    assert np.asarray(Image.open(atlas / "img" / "image-0" / "groups.png")).std() > 20


def test_precision_is_bfloat16_where_the_hardware_has_it_unless_chosen(monkeypatch, tmp_path):
    import convlens.atlas.site as site_module
    from convlens.atlas.site import Job, Site

    entry = BUILTIN_MODELS["zfnet-fashion"]
    loaded = LoadedModel(entry.build(), None, FASHION_CLASSES, entry.input_size, entry.name)

    def job(precision: str) -> Job:
        return Job(loaded, [], [], AtlasConfig(precision=precision), Site(tmp_path))

    for native in (True, False):
        monkeypatch.setattr(site_module, "native_bfloat16", lambda device, native=native: native)
        assert job("auto").fast is native
        assert job("bfloat16").fast and not job("float32").fast
        assert job("auto").settings("synthesis")["bfloat16"] is native
    with pytest.raises(ValueError, match="precision must be one of"):
        AtlasConfig(precision="half")
    for images in (-1, True, 2.0):
        with pytest.raises(ValueError, match="images must be an integer >= 0"):
            AtlasConfig(images=images)


def test_a_layer_without_feature_maps_is_refused_before_anything_is_written(tmp_path):
    loaded = LoadedModel(
        BUILTIN_MODELS["zfnet-fashion"].build().eval(),
        Preprocess(1, (28, 28), (0.5,), (0.25,)),
        FASHION_CLASSES,
        (1, 28, 28),
        "zfnet-fashion",
    )
    config = AtlasConfig(layers=["features.13", "classifier.1"])
    with pytest.raises(ConvlensError, match=r"'classifier.1' gives outputs of shape \(512,\)"):
        write_atlas(loaded, [], tmp_path / "atlas", config, progress=False)
    with pytest.raises(ConvlensError, match=r"features\.13"):  # a typo: the close names listed
        write_atlas(loaded, [], tmp_path / "atlas", AtlasConfig(layers=["features.31"]))
    assert not (tmp_path / "atlas").exists()
