"""A user's own data: image folders, ``.npz``/``.npy`` arrays, any TFDS image dataset, in-memory arrays.

Every reader returns a :class:`UserData`: uint8 NHWC images with integer labels 0..K-1, the class
names, an optional test split, where it came from and a sha256 fingerprint of the arrays as loaded.
Bad input is one :class:`~tanas_jax.errors.UserError` line naming the file and the fix.

Conventions (``docs/tasks.md``):

* image folder: one sub-folder per class (sorted names are labels 0..K-1, as torchvision's
  ``ImageFolder``), optionally under ``train/`` and ``test/``; PNG/JPEG/BMP/GIF/TIFF/WebP via Pillow.
* arrays: NHWC, NHW or NCHW (a 4-D array whose axis 1 is 1 or 3 and axis 3 is not); uint8, or float
  scaled by the array's maximum: max <= 1 means [0, 1], else [0, 255]; values outside [0, 255] are refused.
* ``input_size`` resizes (bilinear) and ``channels`` converts (grey: ITU-R 601 luma) every image;
  without them images of mixed sizes or modes are an error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from tanas_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


@dataclasses.dataclass(frozen=True)
class UserData:
    train_images: np.ndarray            # (N, H, W, C) uint8
    train_labels: np.ndarray            # (N,) int64, 0..K-1
    test_images: np.ndarray | None      # None: the task layer carves a test split
    test_labels: np.ndarray | None
    class_names: tuple[str, ...]
    source: str                         # "image_folder:/abs", "arrays:/abs.npz", "tfds:name", "memory:name", ...
    fingerprint: str                    # sha256 over the arrays as loaded

    def counts(self) -> dict:
        """Examples per class and split (``{"train": {name: n}, "test": {...}}``)."""
        out = {"train": _count(self.train_labels, self.class_names)}
        if self.test_labels is not None:
            out["test"] = _count(self.test_labels, self.class_names)
        return out

    def summary(self) -> str:
        parts = [f"{split} " + ", ".join(f"{k} {v}" for k, v in c.items()) for split, c in self.counts().items()]
        test = "" if self.test_labels is not None else "; no test split (carved from train)"
        return f"{self.source}: {len(self.class_names)} classes; {'; '.join(parts)}{test}"


def _count(labels, names) -> dict:
    n = np.bincount(labels, minlength=len(names))
    return {str(name): int(n[i]) for i, name in enumerate(names)}


def fingerprint(*arrays) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes (``None`` entries count as absent)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --- pixels ---------------------------------------------------------------------------------------
def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 NHWC -> uint8 NHWC at ``size`` (height, width), bilinear (Pillow)."""
    from PIL import Image

    h, w = size
    if images.shape[1:3] == (h, w):
        return images
    out = np.empty((len(images), h, w, images.shape[3]), np.uint8)
    for i, im in enumerate(images):
        grey = im.shape[2] == 1
        pil = Image.fromarray(im[..., 0] if grey else im)
        r = np.asarray(pil.resize((w, h), Image.BILINEAR))
        out[i] = r[..., None] if grey else r
    return out


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 NHWC with 1, 3 or 4 channels -> ``channels`` (1: ITU-R 601 luma, 3: grey repeated)."""
    c = images.shape[3]
    if c == 4:
        images, c = images[..., :3], 3
    if c == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=3)
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


def to_uint8(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 images as they are; float/int images checked finite and in range, then scaled to uint8."""
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise UserError(f"{where}: images have dtype {x.dtype}; give uint8 or float pixels")
    xf = x.astype(np.float64)
    if not np.isfinite(xf).all():
        bad = int((~np.isfinite(xf)).reshape(len(xf), -1).any(axis=1).sum())
        raise UserError(f"{where}: {bad} image(s) have NaN or inf pixels; drop or repair them")
    lo, hi = (float(xf.min()), float(xf.max())) if xf.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise UserError(f"{where}: pixels span [{lo:g}, {hi:g}]; give uint8, floats in [0, 1] or in [0, 255]")
    if np.issubdtype(x.dtype, np.floating) and hi <= 1.0:
        xf = xf * 255.0
    return np.clip(np.round(xf), 0, 255).astype(np.uint8)


def to_nhwc(x: np.ndarray, where: str) -> np.ndarray:
    """(N,H,W) / (N,H,W,C) / (N,C,H,W) -> (N,H,W,C)."""
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4:
        if x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):
            return np.transpose(x, (0, 2, 3, 1))
        if x.shape[3] in (1, 3, 4):
            return x
    raise UserError(f"{where}: images have shape {x.shape}; give (N, H, W), (N, H, W, C) or (N, C, H, W) "
                    "with C = 1 or 3")


def fit_images(x: np.ndarray, input_size, channels, where: str) -> np.ndarray:
    """NHWC uint8 -> the spec's ``input_size`` and ``channels`` (when given); 4 channels need ``channels``."""
    if channels is not None:
        x = convert_channels(x, channels)
    elif x.shape[3] == 4:
        raise UserError(f"{where}: images have 4 channels (RGBA); set channels = 1 or 3 in the spec")
    if input_size is not None:
        x = resize_images(x, input_size)
    return np.ascontiguousarray(x)


def check_labels(y, n_images: int, where: str, what: str = "labels") -> np.ndarray:
    """Integer labels, one per image."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(f"{where}: {what} have shape {y.shape}; give one integer label per image (N,)")
    if len(y) != n_images:
        raise UserError(f"{where}: {n_images} images but {len(y)} {what}; give one label per image")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise UserError(f"{where}: {what} are not integers; give integer class ids 0..K-1")
    elif not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise UserError(f"{where}: {what} have dtype {y.dtype}; give integer class ids 0..K-1")
    return y.astype(np.int64)


def check_contiguous(y_train, y_test, class_names, where: str) -> tuple[str, ...]:
    """Labels are 0..K-1, each present in train; ``class_names`` (when given) has K names."""
    seen = np.unique(y_train)
    k = len(class_names) if class_names is not None else (int(seen.max()) + 1 if len(seen) else 0)
    if len(seen) and (seen.min() < 0 or seen.max() >= k or len(seen) != k):
        missing = sorted(set(range(k)) - set(seen.tolist()))[:5]
        raise UserError(f"{where}: labels {_show(seen)} are not contiguous integers 0..{k - 1}"
                        f"{f' (missing {missing})' if missing and seen.min() >= 0 else ''}; relabel with "
                        "np.unique(y, return_inverse=True)[1] (and pass class_names)")
    if y_test is not None and len(y_test) and (y_test.min() < 0 or y_test.max() >= k):
        raise UserError(f"{where}: test labels {_show(np.unique(y_test))} fall outside the train labels 0..{k - 1}")
    if k < 2:
        raise UserError(f"{where}: one class only ({k}); a task needs at least 2 classes")
    return tuple(str(c) for c in class_names) if class_names is not None else tuple(str(i) for i in range(k))


def _show(values) -> str:
    v = [int(x) for x in values]
    return "{" + ", ".join(map(str, v[:8])) + (", ..." if len(v) > 8 else "") + "}"


# --- in-memory and array files --------------------------------------------------------------------
def from_arrays(x_train, y_train, x_test=None, y_test=None, *, class_names=None, where: str,
                source: str, input_size=None, channels=None) -> UserData:
    """Validated :class:`UserData` from numpy-like arrays (``where`` names them in errors)."""
    if (x_test is None) != (y_test is None):
        raise UserError(f"{where}: give both x_test and y_test, or neither")
    xs = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x is None:
            xs[split] = (None, None)
            continue
        x = to_nhwc(np.asarray(x), f"{where} x_{split}")
        y = check_labels(y, len(x), where, f"y_{split} labels")
        if x.shape[3] not in (1, 3, 4):
            raise UserError(f"{where}: x_{split} has {x.shape[3]} channels; give 1 (grey) or 3 (RGB)")
        xs[split] = (fit_images(to_uint8(x, f"{where} x_{split}"), input_size, channels, f"{where} x_{split}"), y)
    (xtr, ytr), (xte, yte) = xs["train"], xs["test"]
    if xte is not None and xte.shape[1:] != xtr.shape[1:]:
        raise UserError(f"{where}: x_train images are {xtr.shape[1:]} but x_test images {xte.shape[1:]}; "
                        "set input_size and channels in the spec to convert them")
    if len(xtr) == 0:
        raise UserError(f"{where}: x_train is empty; give at least a few examples per class")
    names = check_contiguous(ytr, yte, class_names, where)
    for a in (xtr, ytr, xte, yte):
        if a is not None:
            a.setflags(write=False)
    return UserData(xtr, ytr, xte, yte, names, source, fingerprint(xtr, ytr, xte, yte))


def read_arrays(spec_arrays, input_size=None, channels=None) -> UserData:
    """``{"arrays": PATH.npz}`` (keys x_train, y_train[, x_test, y_test][, class_names]) or a table of ``.npy``."""
    if isinstance(spec_arrays, dict):
        loaded = {k: _load_npy(p) for k, p in spec_arrays.items()}
        where, names = spec_arrays["x_train"], None
    else:
        where = spec_arrays
        loaded = _load_npz(spec_arrays)
        names = loaded.pop("class_names", None)
        names = None if names is None else [str(n) for n in np.asarray(names).tolist()]
    return from_arrays(loaded["x_train"], loaded["y_train"], loaded.get("x_test"), loaded.get("y_test"),
                       class_names=names, where=where, source=f"arrays:{where}", input_size=input_size,
                       channels=channels)


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read as .npy ({e}); save it with np.save") from None


def _load_npz(path: str) -> dict:
    if path.lower().endswith(".npy"):
        raise UserError(f"{path}: one .npy holds no labels; give source.arrays = {{x_train = \"x.npy\", "
                        "y_train = \"y.npy\"}} or an .npz with x_train and y_train")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with z:
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: cannot read as .npz ({e}); save it with np.savez(path, x_train=..., "
                        "y_train=...)") from None
    if "x_train" not in d or "y_train" not in d:
        raise UserError(f"{path}: has keys {sorted(d)}; expected x_train, y_train (optional x_test, y_test, "
                        "class_names): np.savez(path, x_train=x, y_train=y)")
    extra = sorted(set(d) - {"x_train", "y_train", "x_test", "y_test", "class_names"})
    if extra:
        raise UserError(f"{path}: unknown array '{extra[0]}'; valid: x_train, y_train, x_test, y_test, class_names")
    return d


# --- image folders --------------------------------------------------------------------------------
def _class_dirs(root: str) -> list[str]:
    try:
        entries = sorted(os.listdir(root))
    except OSError as e:
        raise UserError(f"{root}: cannot list the image folder ({e.strerror}); check the path") from None
    return [e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(root, e))]


def _image_files(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)
                  and os.path.isfile(os.path.join(folder, f)))


def _scan_tree(root: str) -> dict[str, list[str]]:
    """class name -> sorted image paths, refusing empty class folders and one-class trees."""
    classes = _class_dirs(root)
    if not classes:
        loose = _image_files(root)
        hint = f" ({len(loose)} images lie in it directly)" if loose else ""
        raise UserError(f"{root}: no class sub-folders{hint}; put each class's images in {root}/<class>/")
    out = {}
    for c in classes:
        files = _image_files(os.path.join(root, c))
        if not files:
            raise UserError(f"{os.path.join(root, c)}: empty class folder (no {'/'.join(IMAGE_SUFFIXES[:3])} "
                            "images); add images or remove the folder")
        out[c] = [os.path.join(root, c, f) for f in files]
    if len(out) < 2:
        raise UserError(f"{root}: one class folder only ({classes[0]}); a task needs at least 2 classes")
    return out


def _open_image(path: str, channels):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            target = {1: "L", 3: "RGB"}.get(channels) or ("L" if mode in GREY_MODES else "RGB")
            arr = np.asarray(im.convert(target))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: unreadable or corrupt image ({type(e).__name__}: {e}); "
                        "remove or replace it") from None
    return (arr[..., None] if arr.ndim == 2 else arr), mode


def _read_split(tree: dict[str, list[str]], names: list[str], input_size, channels, first: dict):
    """Images and labels of one tree; ``first`` remembers the first image's size and mode across splits."""
    xs, ys = [], []
    for label, c in enumerate(names):
        for p in tree.get(c, []):
            arr, mode = _open_image(p, channels)
            if input_size is not None:
                arr = resize_images(arr[None], input_size)[0]
            if not first:
                first.update(path=p, shape=arr.shape, mode=mode)
            elif arr.shape[:2] != first["shape"][:2]:
                raise UserError(f"{p}: images of mixed sizes ({arr.shape[1]}x{arr.shape[0]} here, "
                                f"{first['shape'][1]}x{first['shape'][0]} in {first['path']}); set "
                                "input_size = [H, W] in a spec file to resize them")
            elif arr.shape[2] != first["shape"][2]:
                raise UserError(f"{p}: images of mixed modes ({mode} here, {first['mode']} in {first['path']}); "
                                "set channels = 1 or 3 in a spec file to convert them")
            xs.append(arr)
            ys.append(label)
    return np.stack(xs), np.asarray(ys, np.int64)


def read_image_folder(root: str, input_size=None, channels=None) -> UserData:
    """A class-folder tree (or ``train/`` and ``test/`` class-folder trees) -> :class:`UserData`."""
    if not os.path.isdir(root):
        raise UserError(f"{root}: no such image folder; check the path (one sub-folder per class)")
    top = _class_dirs(root)
    split_layout = "train" in top and set(top) <= {"train", "test", "val", "valid"}
    train = _scan_tree(os.path.join(root, "train") if split_layout else root)
    test = _scan_tree(os.path.join(root, "test")) if split_layout and "test" in top else None
    names = sorted(train)
    if test is not None and set(test) - set(names):
        extra = sorted(set(test) - set(names))[0]
        raise UserError(f"{os.path.join(root, 'test', extra)}: class '{extra}' has no train/ folder; "
                        "add train/{extra}/ or remove it")
    first: dict = {}
    xtr, ytr = _read_split(train, names, input_size, channels, first)
    xte, yte = _read_split(test, names, input_size, channels, first) if test is not None else (None, None)
    for a in (xtr, ytr, xte, yte):
        if a is not None:
            a.setflags(write=False)
    return UserData(xtr, ytr, xte, yte, tuple(names), f"image_folder:{root}", fingerprint(xtr, ytr, xte, yte))


# --- TFDS and built-in datasets ---------------------------------------------------------------------
def read_tfds(name: str, image_key: str = "image", label_key: str = "label", data_dir: str | None = None,
              input_size=None, channels=None) -> UserData:
    """Any prepared TFDS dataset with an image and a class-label feature (splits ``train`` [+ ``test``])."""
    from tanas_jax.data import tfds_arrays

    def fit_one(im):   # variable-size datasets: resize each image before stacking
        if input_size is None:
            return im
        im = to_nhwc(to_uint8(np.asarray(im)[None], f"tfds '{name}'"), f"tfds '{name}'")
        return resize_images(convert_channels(im, channels or (1 if im.shape[3] == 1 else 3)), input_size)[0]

    arrays, names = tfds_arrays(name, image_key, label_key, data_dir, fit_one)
    return from_arrays(arrays["train_images"], arrays["train_labels"], arrays.get("test_images"),
                       arrays.get("test_labels"), class_names=names, where=f"tfds '{name}'", source=f"tfds:{name}",
                       input_size=input_size, channels=channels)


def from_raw(raw, input_size=None, channels=None) -> UserData:
    """A built-in :class:`~tanas_jax.data.RawDataset`, converted as the spec says."""
    return from_arrays(raw.train_images, raw.train_labels, raw.test_images, raw.test_labels,
                       class_names=raw.class_names, where=raw.source, source=raw.source,
                       input_size=input_size, channels=channels)
