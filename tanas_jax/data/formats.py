"""Readers for the on-disk formats users download: IDX (MNIST, Fashion-MNIST;
gzip or raw), CIFAR python pickles, Quick, Draw! ``full_numpy_bitmap_*.npy``.

Every reader returns numpy arrays: images uint8 NHWC, labels int64.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np

from tanas_jax.errors import UserError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str) -> np.ndarray:
    """Parse an IDX file (``.gz`` or raw): magic 0x0000 TT NN, NN big-endian dims, data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e}; re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number); expected MNIST-style "
                        "*-idx3-ubyte / *-idx1-ubyte files")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - header != count * dtype.itemsize:
        raise UserError(f"{path} is truncated or corrupt: header says {dims} "
                        f"({count * dtype.itemsize} bytes) but {len(raw) - header} bytes follow")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)


def _find(directory: str, stems: list[str]) -> str | None:
    for stem in stems:
        for suffix in ("", ".gz"):
            p = os.path.join(directory, stem + suffix)
            if os.path.exists(p):
                return p
    return None


IDX_STEMS = {
    "train_images": ["train-images-idx3-ubyte", "train-images.idx3-ubyte"],
    "train_labels": ["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"],
    "test_images": ["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"],
    "test_labels": ["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"],
}


def idx_dir_complete(directory: str) -> bool:
    return all(_find(directory, stems) for stems in IDX_STEMS.values())


def load_idx_dir(directory: str) -> dict[str, np.ndarray]:
    """The four MNIST-layout IDX files of a folder -> train/test images (N,28,28,1) and labels."""
    out = {}
    for key, stems in IDX_STEMS.items():
        p = _find(directory, stems)
        if p is None:
            raise UserError(f"{directory} lacks {stems[0]}[.gz]; an IDX folder needs "
                            "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                            "t10k-labels-idx1-ubyte (optionally .gz)")
        out[key] = read_idx(p)
    for split in ("train", "test"):
        imgs, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
            raise UserError(f"IDX files in {directory} disagree: {split} images {imgs.shape}, "
                            f"labels {labels.shape}")
        out[f"{split}_images"] = imgs.astype(np.uint8)[..., None]
        out[f"{split}_labels"] = labels.astype(np.int64)
    return out


def cifar_dir_complete(directory: str, dataset: str) -> bool:
    names = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]) if dataset == "cifar10" \
        else ["train", "test"]
    return all(os.path.exists(os.path.join(directory, n)) for n in names)


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise UserError(f"cannot read CIFAR pickle {path}: {e}") from None


def load_cifar_dir(directory: str, dataset: str) -> dict[str, np.ndarray]:
    """CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) pickles.

    Only load pickles you downloaded from the official source: unpickling runs code.
    For CIFAR-100 the labels are the 100 fine labels.
    """
    if dataset == "cifar10":
        train = [_unpickle(os.path.join(directory, f"data_batch_{i}")) for i in range(1, 6)]
        test = [_unpickle(os.path.join(directory, "test_batch"))]
        key = "labels"
    else:
        train = [_unpickle(os.path.join(directory, "train"))]
        test = [_unpickle(os.path.join(directory, "test"))]
        key = "fine_labels"

    def stack(parts):
        x = np.concatenate([np.asarray(p["data"], np.uint8) for p in parts])
        y = np.concatenate([np.asarray(p[key], np.int64) for p in parts])
        return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), y

    out = {}
    out["train_images"], out["train_labels"] = stack(train)
    out["test_images"], out["test_labels"] = stack(test)
    return out


QUICKDRAW_CLASSES = ("apple", "baseball bat", "bear", "envelope", "guitar", "lollipop",
                     "moon", "mouse", "mushroom", "rabbit")


def quickdraw_file(directory: str, cls: str) -> str:
    return os.path.join(directory, f"full_numpy_bitmap_{cls}.npy")


def quickdraw_dir_complete(directory: str) -> bool:
    return all(os.path.exists(quickdraw_file(directory, c)) for c in QUICKDRAW_CLASSES)


def load_quickdraw_dir(directory: str, n_train: int = 5000, n_test: int = 1000) -> dict[str, np.ndarray]:
    """The 10 TA-NAS Quick, Draw! classes: first ``n_train`` bitmaps of each file
    for training, the next ``n_test`` for test (TA-NAS setting: 5,000 + 1,000)."""
    xs_tr, ys_tr, xs_te, ys_te = [], [], [], []
    for label, cls in enumerate(QUICKDRAW_CLASSES):
        path = quickdraw_file(directory, cls)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read Quick, Draw! file {path}: {e}") from None
        if arr.ndim != 2 or arr.shape[1] != 784:
            raise UserError(f"{path} has shape {arr.shape}; expected (N, 784) uint8 bitmaps")
        if len(arr) < n_train + n_test:
            raise UserError(f"{path} has {len(arr)} drawings; need {n_train + n_test}")
        xs_tr.append(np.asarray(arr[:n_train], np.uint8))
        xs_te.append(np.asarray(arr[n_train:n_train + n_test], np.uint8))
        ys_tr.append(np.full(n_train, label, np.int64))
        ys_te.append(np.full(n_test, label, np.int64))
    return {
        "train_images": np.concatenate(xs_tr).reshape(-1, 28, 28, 1),
        "train_labels": np.concatenate(ys_tr),
        "test_images": np.concatenate(xs_te).reshape(-1, 28, 28, 1),
        "test_labels": np.concatenate(ys_te),
    }
