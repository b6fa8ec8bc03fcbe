"""Issue 13 end to end: a researcher's own data through ``bin/tanas``, banked, then a base of the next run.

Real data only: Fashion-MNIST images written out as PNGs (an image-folder task given by a TOML spec) and
the bundled MNIST digits saved as an ``.npz`` (another dataset).  Tiny settings: one seed, one epoch, the
target's column of the distance table only, one FUSE round, no baselines.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import needs_fashion, run_cli
from tanas_jax.data import load_dataset

Image = pytest.importorskip("PIL.Image")
SHOP = {5: "sandal", 6: "shirt", 8: "bag"}
TINY = ["--set", "train.epochs=1", "--set", "data.max_train=200", "--set", "data.max_eval=100",
        "--set", "bank.seeds=(0,)", "--set", "tanas.full_table_max=0", "--set", "fisher.examples=64",
        "--set", "fuse.rounds=1", "--set", "fuse.max_stages=1", "--set", "fuse.weight_steps=4",
        "--set", "fuse.alpha_steps=2", "--set", "fuse.batch_size=32", "--set", "final.steps=8",
        "--set", "search.max_train=100", "--set", "search.input_shape=(16,16,1)", "--set", "distance.bootstrap=0",
        "--skip-baselines",
        "--no-progress"]


def write_shop(root, per_class: int = 40) -> str:
    """Real Fashion-MNIST training images as root/photos/<class>/*.png and a spec root/shop.toml."""
    raw = load_dataset("fashion_mnist", "files")
    for c, name in SHOP.items():
        os.makedirs(os.path.join(root, "photos", name))
        for i in np.flatnonzero(raw.train_labels == c)[:per_class]:
            Image.fromarray(raw.train_images[i, ..., 0]).save(os.path.join(root, "photos", name, f"{i}.png"))
    spec = os.path.join(root, "shop.toml")
    with open(spec, "w") as f:
        f.write('name = "shop"\nsource = { image_folder = "photos" }\ndescription = "sandals, shirts, bags"\n')
    return spec


def write_digits(path, per_class: int = 40) -> str:
    """The bundled real MNIST digits 0-4 as an .npz (no test split: one is carved)."""
    raw = load_dataset("mnist", "bundled")
    idx = np.concatenate([np.flatnonzero(raw.train_labels == d)[:per_class] for d in range(5)])
    np.savez(path, x_train=raw.train_images[idx, ..., 0], y_train=raw.train_labels[idx])
    return path


@needs_fashion
def test_own_tasks_through_bin_tanas_then_banked_and_a_base_by_name(tmp_path, capsys):
    from tanas_jax.bank import Bank
    from tanas_jax.cli.tanas import main as tanas_main
    from tanas_jax.cli.train import main as train_main

    spec, npz = write_shop(str(tmp_path)), write_digits(str(tmp_path / "digits.npz"))
    bank, out1, out2 = str(tmp_path / "bank"), str(tmp_path / "run1"), str(tmp_path / "run2")
    assert tanas_main(["--target", spec, "--bases", "offline8", "--bank", bank, "--out", out1, *TINY]) == 0
    with open(os.path.join(out1, "result.json")) as f:
        r1 = json.load(f)
    assert r1["target"] == "shop" and len(r1["bases"]) == 8 and "shop" not in r1["bases"]
    assert sorted(r1["distance"]["ranking"]) == sorted(r1["bases"])
    assert all(np.isfinite(v) for v in r1["distance"]["column"].values())
    _, meta = Bank(bank).load_network("shop", "small_cnn", 0)       # the new task is banked, with its spec
    assert meta["data"]["spec"]["source"]["image_folder"] == os.path.join(str(tmp_path), "photos")
    assert meta["data"]["class_counts"]["test"] == {"bag": 8, "sandal": 8, "shirt": 8}   # 20% carved per class
    assert Bank(bank).load_genotype("shop")[0] == r1["genotype"]

    capsys.readouterr()
    assert train_main(["--list-tasks", "--bank", bank]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("shop ")]
    assert listed and "image folder" in listed[0] and "bag, sandal, shirt" in listed[0]

    # the next run, in a new process: the npz task as target, the banked task a base by its bare name
    p = run_cli("tanas", "--target", f"npz:{npz}", "--bases", "shop,mnist_138", "--bank", bank, "--out", out2,
                *TINY, env={"TANAS_XLA_CACHE": os.environ.get("TANAS_XLA_CACHE", "0")})
    assert p.returncode == 0, p.stderr[-3000:]
    with open(os.path.join(out2, "result.json")) as f:
        r2 = json.load(f)
    assert r2["target"] == "digits" and r2["bases"] == ["shop", "mnist_138"]
    assert "network shop [small_cnn seed 0]" in r2["reused"]             # its banked network, not retrained
    assert "network mnist_138 [small_cnn seed 0]" in r2["reused"]
    assert set(r2["distance"]["column"]) == {"shop", "mnist_138"}
    assert all(np.isfinite(v) for v in r2["distance"]["column"].values())
    assert Bank(bank).has_network("digits", "small_cnn", 0)
