"""The cifar10 / cifar100 / imagenet datasets of the RobustBench adapter.

The real-data test writes real CIFAR-10 test images (decoded from ../shared/data/cifar10/test.tar.gz)
in torchvision's python layout; only torchvision's md5 check against the official archive is
bypassed, since regenerated files cannot match those checksums.
"""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch

pytest.importorskip("flatplug_robustbench")

import flatplug as fp  # noqa: E402
from conftest import shared_path  # noqa: E402
from flatplug.sources import load_imagefolder  # noqa: E402
from flatplug_robustbench import DatasetNotFoundError, load_cifar10, load_cifar100, load_imagenet  # noqa: E402


@pytest.fixture(scope="module")
def cifar_jpegs():
    """100 real CIFAR-10 test images (10 per class) and labels, decoded by the core's imagefolder loader."""
    data = load_imagefolder(shared_path("data", "cifar10", "test.tar.gz"), n=100, seed=5)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return data


@pytest.fixture
def cifar_dir(tmp_path, cifar_jpegs, monkeypatch):
    """A data_dir holding cifar-10-batches-py/{test_batch, batches.meta} made from the real images."""
    import torchvision.datasets.cifar as tv_cifar

    x, y = cifar_jpegs
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pixels = (x * 255).round().to(torch.uint8).numpy().reshape(len(y), -1)  # CHW rows, as in the real files
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": pixels, "labels": y.tolist(), "batch_label": "testing batch 1 of 1"}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": cifar_jpegs.classes, "num_vis": 3072}, f)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    return tmp_path


def test_registered():
    assert fp.plugins.get("datasets", "cifar10") is load_cifar10
    assert fp.plugins.get("datasets", "imagenet") is load_imagenet


def test_cifar10_loads_real_images_balanced_and_deterministic(cifar_dir, cifar_jpegs):
    x_ref, y_ref = cifar_jpegs
    data = fp.plugins.get("datasets", "cifar10")(path=str(cifar_dir), n=20, seed=3, allow_download=False)
    x, y = data
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (20, 3, 32, 32)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.bincount(y, minlength=10).tolist() == [2] * 10
    # the chosen rows are exactly the images written at those positions
    torch.testing.assert_close(x, x_ref[data.indices], rtol=0, atol=0)
    assert torch.equal(y, y_ref[data.indices])
    assert data.classes == cifar_jpegs.classes
    again = load_cifar10(path=cifar_dir, n=20, seed=3, allow_download=False)
    assert torch.equal(again.indices, data.indices)
    other = load_cifar10(path=cifar_dir, n=20, seed=4, allow_download=False)
    assert not torch.equal(other.indices, data.indices)
    everything = load_cifar10(path=cifar_dir, allow_download=False)
    assert sorted(everything.indices.tolist()) == list(range(100))


def test_cifar10_n_too_large(cifar_dir):
    with pytest.raises(ValueError, match="only 100"):
        load_cifar10(path=cifar_dir, n=101, allow_download=False)


def test_cifar_missing_without_downloads_is_clear(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(path=tmp_path, n=10, allow_download=False)
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert str(tmp_path) in message and "cifar-10-batches-py" in message and "cifar-10-python.tar.gz" in message
    with pytest.raises(DatasetNotFoundError, match="CIFAR-100.*cifar-100-python"):
        load_cifar100(path=tmp_path, allow_download=False)


def test_cifar_missing_with_unreachable_host_fails_fast(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.CIFAR10, "url", "https://cifar-download.invalid/cifar-10-python.tar.gz")
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError, match="cannot be reached"):
        load_cifar10(path=tmp_path, n=10, probe_timeout=1.0)
    assert time.perf_counter() - start < 3.0


def test_cifar_bad_options(tmp_path):
    with pytest.raises(ValueError, match="allow_download"):
        load_cifar10(path=tmp_path, allow_download="perhaps")
    not_a_folder = tmp_path / "file.bin"
    not_a_folder.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="data folder"):
        load_cifar10(path=not_a_folder, allow_download=False)


def test_imagenet_missing_or_incomplete_is_clear(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no folder .*val.*cannot be downloaded"):
        load_imagenet(path=tmp_path, n=10)
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="999 class folders missing"):
        load_imagenet(path=tmp_path, n=10)
    with pytest.raises(ValueError, match="preprocessing: expected one of"):
        load_imagenet(path=tmp_path, preprocessing="Crop999")
    with pytest.raises(ValueError, match="pass one of them"):
        load_imagenet(path=tmp_path, preprocessing="Crop288", model_name="Standard_R50")


def test_pixels_survive_the_binary_layout(cifar_jpegs):
    # the oracle above relies on x * 255 being whole numbers (8-bit images): check it independently
    x, _ = cifar_jpegs
    scaled = x.double() * 255
    assert torch.allclose(scaled, scaled.round(), atol=1e-4)
    assert np.unique((x * 255).round().numpy()).size > 200  # real images, not a constant
