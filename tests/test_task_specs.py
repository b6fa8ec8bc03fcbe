"""A researcher's own task without editing source: spec files, inline forms, arrays, bad input.

Real data only: Fashion-MNIST images (Debian's files) written out as PNGs in a class-folder tree, and
scikit-learn's 8x8 digits (shipped with scikit-learn, which mlxtend needs) as an ``.npz``.  The tasks
are trained with ``bin/train`` and ranked with ``bin/distance`` in-process, in tiny settings.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from conftest import needs_fashion
from tanas_jax import tasks
from tanas_jax.data import load_dataset
from tanas_jax.data.spec import read_spec
from tanas_jax.errors import UserError

Image = pytest.importorskip("PIL.Image")
FASHION_CLASSES = {0: "t-shirt", 1: "trouser", 8: "bag"}
TINY = ["--set", "train.epochs=1", "--set", "data.max_train=300", "--set", "data.max_eval=200",
        "--set", "fisher.examples=64", "--set", "fisher.full_examples=32", "--no-progress"]


def write_png_tree(root, per_class=(80, 20)):
    """Real Fashion-MNIST images as PNGs: root/train/<class>/*.png and root/test/<class>/*.png."""
    raw = load_dataset("fashion_mnist", "files")
    for split, images, labels, n in (("train", raw.train_images, raw.train_labels, per_class[0]),
                                     ("test", raw.test_images, raw.test_labels, per_class[1])):
        for c, name in FASHION_CLASSES.items():
            os.makedirs(os.path.join(root, split, name))
            for i in np.flatnonzero(labels == c)[:n]:
                Image.fromarray(images[i, ..., 0]).save(os.path.join(root, split, name, f"{i}.png"))
    return root


def write_digits_npz(path):
    """scikit-learn's real 8x8 digits (0..16) as uint8 [0, 255], no test split (one is carved)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)
    np.savez(path, x_train=x, y_train=d.target)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    pytest.importorskip("sklearn")
    root = tmp_path_factory.mktemp("specs")
    out = {"root": root, "folder": write_png_tree(str(root / "fashion3")),
           "npz": write_digits_npz(str(root / "digits.npz"))}
    spec = root / "clothes.toml"
    spec.write_text('name = "clothes"\nsource = { image_folder = "fashion3" }\n'
                    'classes = { top = ["t-shirt"], other = ["trouser", "bag"] }\n'
                    'input_size = 28\nchannels = 1\ndescription = "t-shirts vs trousers and bags"\n'
                    '[splits]\nval_fraction = 0.2\nmax_train = 150\n')
    out["toml"] = str(spec)
    (root / "digits3.json").write_text(json.dumps(
        {"name": "digits3", "source": {"arrays": "digits.npz"}, "classes": [3, 5, 8], "input_size": [28, 28],
         "splits": {"test_fraction": 0.25}}))
    out["json"] = str(root / "digits3.json")
    return out


@needs_fashion
def test_image_folder_by_spec_and_inline(data):
    name = tasks.canonical(data["toml"])
    assert name == "clothes" and tasks.canonical(data["toml"]) == "clothes"     # registered once
    t = tasks.get_task("clothes")
    assert t.class_names == ("top", "other") and t.label_map == (1, 0, 1)    # sorted folders: bag, t-shirt, trouser
    d = tasks.load_task_data("clothes", (32, 32, 1))
    assert d.x_train.shape[1:] == (32, 32, 1) and d.x_train.dtype == np.float32
    assert d.sizes == {"train": 150, "val": 48, "test": 60}                  # test/ tree kept; val 20% of 240
    r = d.record()
    assert r["spec"]["name"] == "clothes" and r["spec"]["source"]["image_folder"] == data["folder"]
    assert len(r["data_sha256"]) == 64 and r["data_sha256"][:12] in d.source
    assert r["class_counts"]["test"] == {"top": 20, "other": 40}
    assert "per class (train/val/test): top" in d.summary()
    again = tasks.load_task_data("clothes", (32, 32, 1))
    np.testing.assert_array_equal(again.x_val, d.x_val)                       # fixed split
    inline = tasks.canonical(f"folder:{data['folder']}")
    assert inline == "fashion3" and tasks.get_task(inline).class_names == ("bag", "t-shirt", "trouser")
    assert tasks.resolve_tasks(f"mnist_digit0,folder:{data['folder']}") == ["mnist_digit0", "fashion3"]


def test_npz_by_inline_and_json(data):
    name = tasks.canonical(f"npz:{data['npz']}")
    assert name == "digits"
    d = tasks.load_task_data("digits", (28, 28, 1))                          # 8 px -> 28 px: resized
    assert d.num_classes == 10 and d.x_train.shape[1:] == (28, 28, 1)
    assert sum(d.sizes.values()) == 1797 and 0.18 < d.sizes["test"] / 1797 < 0.22   # 20% carved
    counts = d.record()["class_counts"]
    assert all(n > 0 for split in counts.values() for n in split.values())    # stratified: every class
    assert tasks.canonical(data["json"]) == "digits3"
    d3 = tasks.load_task_data("digits3", (32, 32, 1))
    assert d3.class_names == ("3", "5", "8") and set(np.unique(d3.y_test)) == {0, 1, 2}
    assert read_spec(data["json"]).to_dict()["input_size"] == [28, 28]


def test_register_arrays_and_reregistering(data):
    rng = np.random.default_rng(0)
    x = rng.random((60, 3, 16, 16)).astype(np.float32)                      # NCHW floats in [0, 1]
    y = np.arange(60) % 3
    assert tasks.register_arrays("mem3", x, y, class_names=["a", "b", "c"]) == "mem3"
    assert tasks.register_arrays("mem3", x, y, class_names=["a", "b", "c"]) == "mem3"   # same data: fine
    d = tasks.load_task_data("mem3", (28, 28, 3))
    assert d.x_train.shape[1:] == (28, 28, 3) and d.class_names == ("a", "b", "c")
    with pytest.raises(UserError, match="already taken"):
        tasks.register_arrays("mem3", x[:30], y[:30])
    with pytest.raises(UserError, match="built-in task"):
        tasks.register_arrays("mnist_10way", x, y)


def test_any_tfds_dataset_by_name(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    spec = tmp_path / "beans.toml"
    spec.write_text('source = { tfds = "beans" }\ninput_size = 28\nchannels = 1\n')
    with tfds.testing.mock_data(num_examples=12):
        assert tasks.canonical(str(spec)) == "beans"
    d = tasks.load_task_data("beans", (28, 28, 1))
    assert d.class_names == ("angular_leaf_spot", "bean_rust", "healthy") and d.record()["spec"]["source"]["tfds"]


@needs_fashion
def test_train_and_rank_a_spec_task_in_process(data, tmp_path, capsys):
    from tanas_jax.bank import Bank
    from tanas_jax.cli.distance import main as distance_main
    from tanas_jax.cli.train import main as train_main

    bank = str(tmp_path / "bank")
    assert train_main(["--task", data["toml"], "--bank", bank, *TINY]) == 0
    (meta_path,) = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(bank, "tasks", "clothes"))
                    for f in fs if f.endswith(".json")]
    meta = json.load(open(meta_path))
    assert meta["data"]["spec"]["classes"] == [{"label": "top", "from": ["t-shirt"]},
                                               {"label": "other", "from": ["trouser", "bag"]}]
    assert meta["data"]["data_sha256"] == tasks.load_task_data("clothes", (32, 32, 1)).record()["data_sha256"]
    out = str(tmp_path / "rank")
    capsys.readouterr()
    assert distance_main(["--target", data["toml"], "--bases", "mnist_digit0,fashion_trouser", "--top", "2",
                          "--bootstrap", "0", "--bank", bank, "--out", out, *TINY]) == 0     # no P(closest) read
    printed = capsys.readouterr().out
    assert "closest base tasks to clothes" in printed
    ranking = json.load(open(os.path.join(out, "result.json")))["ranking"]
    assert sorted(r["base"] for r in ranking) == ["fashion_trouser", "mnist_digit0"]
    assert all(np.isfinite(r["mean"]) for r in ranking)
    assert Bank(bank).has_network("clothes", "small_cnn", 0)


# --- bad input: one line naming the file and the fix ---------------------------------------------
def _png(path, size=(28, 28), mode="L"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, 128 if mode == "L" else (10, 20, 30)).save(path)


def _tree(root, classes=("a", "b"), n=4):
    for c in classes:
        for i in range(n):
            _png(os.path.join(root, c, f"{i}.png"))
    return root


def bad_empty_class(tmp):
    root = _tree(os.path.join(tmp, "imgs"))
    os.makedirs(os.path.join(root, "c"))
    return f"folder:{root}", os.path.join(root, "c")


def bad_one_class(tmp):
    root = _tree(os.path.join(tmp, "imgs"), classes=("a",))
    return f"folder:{root}", root


def bad_corrupt(tmp):
    root = _tree(os.path.join(tmp, "imgs"))
    with open(os.path.join(root, "b", "9.png"), "wb") as f:
        f.write(b"not a png")
    return f"folder:{root}", os.path.join(root, "b", "9.png")


def bad_sizes(tmp):
    root = _tree(os.path.join(tmp, "imgs"))
    _png(os.path.join(root, "b", "big.png"), size=(40, 40))
    return f"folder:{root}", "input_size"


def bad_modes(tmp):
    root = _tree(os.path.join(tmp, "imgs"))
    _png(os.path.join(root, "b", "rgb.png"), mode="RGB")
    return f"folder:{root}", "channels"


def _npz(tmp, stem="d", **arrays):
    path = os.path.join(tmp, f"{stem}.npz")
    np.savez(path, **arrays)
    return f"npz:{path}", path


def bad_labels_gap(tmp):
    return _npz(tmp, x_train=np.zeros((6, 8, 8), np.uint8), y_train=np.array([0, 0, 2, 2, 5, 5]))


def bad_nan(tmp):
    x = np.zeros((6, 8, 8), np.float32)
    x[2, 1, 1] = np.nan
    return _npz(tmp, x_train=x, y_train=np.array([0, 1] * 3))


def bad_lengths(tmp):
    return _npz(tmp, x_train=np.zeros((6, 8, 8), np.uint8), y_train=np.array([0, 1] * 4))


def bad_too_few(tmp):
    return _npz(tmp, "few", x_train=np.zeros((5, 8, 8), np.uint8), y_train=np.array([0, 0, 0, 1, 1]))[0], \
        "class '1' has 2 example"


def bad_unknown_field(tmp):
    path = os.path.join(tmp, "t.toml")
    with open(path, "w") as f:
        f.write('source = "mnist"\nclases = [0, 1]\n')
    return path, "unknown field 'clases'.*did you mean 'classes'"


def bad_unknown_class(tmp):
    path = os.path.join(tmp, "t.json")
    with open(path, "w") as f:
        json.dump({"source": "fashion_mnist", "classes": ["trousers", "bag"]}, f)
    return path, "no source class 'trousers'.*did you mean 'trouser'"


def bad_single_npy(tmp):
    path = os.path.join(tmp, "x.npy")
    np.save(path, np.zeros((6, 8, 8), np.uint8))
    spec = os.path.join(tmp, "t.json")
    with open(spec, "w") as f:
        json.dump({"source": {"arrays": "x.npy"}}, f)
    return spec, "one .npy holds no labels"


def bad_npz_keys(tmp):
    return _npz(tmp, images=np.zeros((6, 8, 8), np.uint8), labels=np.arange(6) % 2)[0], "expected x_train, y_train"


BAD = [bad_single_npy, bad_npz_keys,
       bad_empty_class, bad_one_class, bad_corrupt, bad_sizes, bad_modes, bad_labels_gap, bad_nan, bad_lengths,
       bad_too_few, bad_unknown_field, bad_unknown_class]


@pytest.mark.parametrize("make", BAD, ids=[f.__name__ for f in BAD])
def test_bad_input_is_one_line_naming_the_file(make, tmp_path, capsys):
    from tanas_jax.cli.train import main as train_main

    ref, expect = make(str(tmp_path))
    with pytest.raises(UserError) as e:
        name = tasks.canonical(ref)
        tasks.load_task_data(name, (28, 28, 1))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert re.search(expect if not os.path.isabs(expect) else re.escape(expect), msg), msg
    # the CLI says it as one `error:` line, exit 2, before any training
    assert train_main(["--task", ref, "--bank", str(tmp_path / "bank"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(tmp_path) in err[0]
