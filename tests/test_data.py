"""Fashion-MNIST idx reader, image files and folders, sample photos, preprocessing."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import convlens as cl
from convlens.data import (
    BatchStream,
    FashionMNIST,
    ImageFiles,
    find_fashion_mnist,
    open_data,
    open_image,
    read_idx,
)
from convlens.data.fashion_mnist import DEBIAN_DIR
from convlens.models.preprocess import Preprocess

debian = pytest.mark.skipif(
    not DEBIAN_DIR.exists(), reason="needs Debian's dataset-fashion-mnist (make data)"
)


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip_and_truncation(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "b").write_bytes(raw[:-3])
    with pytest.raises(cl.ConvlensError, match="truncated"):
        read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(cl.ConvlensError, match="magic"):
        read_idx(tmp_path / "c")


@debian
def test_debian_files_have_the_known_counts_and_balanced_labels():
    train, test = FashionMNIST("train"), FashionMNIST("test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_search_order_prefers_explicit_then_environment(tmp_path, monkeypatch):
    for folder in ("explicit", "env"):
        (tmp_path / folder).mkdir()
        for name in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ):
            write_idx(tmp_path / folder / name, np.zeros((2, 28, 28) if "images" in name else (2,)))
    monkeypatch.setenv("CONVLENS_DATA", str(tmp_path / "env"))
    assert find_fashion_mnist(tmp_path / "explicit") == tmp_path / "explicit"
    assert find_fashion_mnist() == tmp_path / "env"
    assert len(FashionMNIST("test")) == 2


def test_offline_without_data_says_how_to_get_it(tmp_path, monkeypatch):
    import convlens.data.fashion_mnist as fm

    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVLENS_DATA", raising=False)

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.FashionMNIST.__init__", offline)
    with pytest.raises(cl.ConvlensError, match="apt-get install dataset-fashion-mnist"):
        fm.find_fashion_mnist()


def make_folder(root, corrupt: bool = True):
    for label, colour in (("cat", 200), ("dog", 50)):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (colour, i * 40, 0)).save(root / label / f"{i}.png")
    if corrupt:
        (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_image_folder_classes_and_corrupt_file_skipped_with_warning(tmp_path):
    make_folder(tmp_path / "imgs")
    prep = Preprocess(channels=1, size=(28, 28), mean=(0.5,), std=(0.5,))
    data = ImageFiles(tmp_path / "imgs", transform=prep)
    assert data.classes == ["cat", "dog"] and len(data) == 7
    stream = BatchStream(data, batch_size=4)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): .*broken\.jpg"):
        batches = list(stream)
    indices = torch.cat([b.indices for b in batches]).tolist()
    assert len(stream.skipped) == 1 and stream.skipped[0] not in indices and len(indices) == 6
    assert torch.cat([b.labels for b in batches]).tolist() == [0, 0, 0, 1, 1, 1]
    assert batches[0].images.shape == (4, 1, 28, 28)


def test_corrupt_single_file_names_the_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(cl.ConvlensError, match=r"x\.png"):
        open_image(tmp_path / "x.png")


def test_grey_and_rgb_are_converted_to_what_the_model_expects():
    rgb = torch.zeros(3, 4, 4, dtype=torch.uint8)
    rgb[0] = 255  # pure red
    grey = Preprocess(1, (4, 4), (0.0,), (1.0,)).geometry(rgb)
    assert grey.shape == (1, 4, 4) and int(grey[0, 0, 0]) == round(0.2989 * 255)
    colour = Preprocess(3, (4, 4), (0.0,) * 3, (1.0,) * 3).geometry(
        torch.full((4, 4), 7, dtype=torch.uint8)
    )
    assert colour.shape == (3, 4, 4) and bool((colour == 7).all())


def test_normalise_and_denormalise_are_inverse():
    prep = Preprocess(3, (8, 8), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    image = torch.rand(3, 8, 8)
    torch.testing.assert_close(prep.denormalize(prep.normalize(image)), image)


def test_resize_and_centre_crop():
    prep = Preprocess(3, (4, 4), (0.0,) * 3, (1.0,) * 3, resize=6)
    image = Image.new("RGB", (12, 6))
    assert prep(image).shape == (3, 4, 4)


def test_sample_photos_by_name_and_close_match():
    data = open_data(
        "sample:chelsea,coffee", Preprocess(3, (32, 32), (0.5,) * 3, (0.5,) * 3, resize=32)
    )
    image, label = data[0]
    assert image.shape == (3, 32, 32) and label == -1 and len(data) == 2
    with pytest.raises(cl.ConvlensError, match="'chelsea'"):
        open_data("sample:chelsey")


def test_one_per_class_takes_each_class_first_then_the_rest_in_order():
    from torch.utils.data import TensorDataset

    from convlens.data.select import one_per_class

    data = TensorDataset(torch.zeros(6, 1, 2, 2), torch.tensor([2, 2, 0, 1, 0, 1]))
    assert one_per_class(data, 2) == [0, 1]  # labels it cannot read without loading: in order
    data.labels = data.tensors[1]
    assert one_per_class(data, 0) == []
    assert one_per_class(data, 2) == [0, 2]
    assert one_per_class(data, 5) == [0, 2, 3, 1, 4]
    assert one_per_class(data, 9) == [0, 2, 3, 1, 4, 5]
    with pytest.raises(ValueError, match="count must be >= 0"):
        one_per_class(data, -1)
