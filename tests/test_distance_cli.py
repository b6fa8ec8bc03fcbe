"""bin/fisher and bin/distance end to end on a tiny bank over the real bundled MNIST subset.

One module-scoped bank (3 MNIST tasks, 1 seed, 1 epoch on 300 examples, 64 Fisher examples) is
shared by the tests below.  The commands run in-process through their ``main`` (the same ``cli_main``
wrapper as ``bin/``); real subprocesses only where the process boundary is what is checked (exit code and
one stderr line).  P(closest) is off (``distance.bootstrap=0``) except in the tests that read it (``BOOT``).
"""
from __future__ import annotations

import csv
import importlib
import json
import os

import numpy as np
import pytest

from conftest import run_cli

TINY = ["--set", "train.epochs=1", "--set", "data.max_train=300", "--set", "data.max_eval=200",
        "--set", "fisher.examples=64", "--set", "fisher.full_examples=32", "--set", "distance.bootstrap=0",
        "--no-progress"]
TASKS = ["mnist_digit0", "mnist_digit6", "mnist_10way"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("distance_cli")
    return {"bank": str(root / "bank"), "root": root}


def _cmd(capsys, cmd: str, *argv: str):
    """``bin/<cmd> argv`` in-process: asserts exit 0 and no traceback; returns the captured (out, err)."""
    capsys.readouterr()
    code = importlib.import_module(f"tanas_jax.cli.{cmd}").main(list(argv))
    got = capsys.readouterr()
    assert code == 0, got.out + got.err
    assert "Traceback" not in got.err
    return got


def _read_csv(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    return header[1:], [r[0] for r in body], np.array([[float(v) for v in r[1:]] for r in body])


def test_fisher_cli_computes_then_reuses(tiny, capsys):
    out = str(tiny["root"] / "fisher")
    _cmd(capsys, "fisher", "--task", "mnist_digit0", "--net-of", "mnist_digit6", "--bank", tiny["bank"],
         "--out", out, *TINY)
    res = json.load(open(f"{out}/result.json"))
    assert res["net_task"] == "mnist_digit6" and res["data_task"] == "mnist_digit0" and not res["cached"]
    assert res["meta"]["examples"] == 64 and res["trace"] > 0
    assert abs(sum(layer["share"] for layer in res["layers"]) - 1) < 1e-5
    assert res["provenance"]["versions"]["jax"]
    # rerun: the Fisher comes from the bank (same trace), nothing is trained again
    r = _cmd(capsys, "fisher", "--task", "mnist_digit0", "--net-of", "mnist_digit6", "--bank", tiny["bank"],
             "--out", out, *TINY)
    assert "reused from the bank" in r.out and "test accuracy" not in r.out
    res2 = json.load(open(f"{out}/result.json"))
    assert res2["cached"] and res2["trace"] == pytest.approx(res["trace"], rel=1e-6)


def test_distance_table_files_agree_and_rerun_reuses(tiny, capsys):
    out = str(tiny["root"] / "table")
    r = _cmd(capsys, "distance", "--tasks", ",".join(TASKS), "--metric", "logdet", "--spectrum", "diag",
             "--bank", tiny["bank"], "--out", out, *TINY)
    res = json.load(open(f"{out}/result.json"))
    assert res["tasks"] == TASKS and res["layout"] == "d[row=base][column=target]"
    assert res["settings"]["metric"] == "logdet" and res["settings"]["spectrum"] == "diag"
    mean = np.array(res["mean"], float)
    assert mean.shape == (3, 3) and np.all(np.diag(mean) == 0) and np.all(mean[~np.eye(3, dtype=bool)] > 0)
    # CSV and heatmap exist and agree with the JSON
    for key in ("csv_mean", "csv_std", "heatmap"):
        assert os.path.getsize(res["files"][key]) > 0, key
    cols, rows, m = _read_csv(res["files"]["csv_mean"])
    assert cols == rows == TASKS
    np.testing.assert_allclose(m, mean, rtol=1e-5)
    assert open(res["files"]["heatmap"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert res["provenance"]["versions"]["jax"] and res["data"]["mnist_digit0"]["source"].startswith("bundled")
    # the Fisher from test_fisher_cli (digit6's net on digit0's data) was reused
    # 6 off-diagonal pairs x 2 Fishers = 12 requests, 9 distinct, 1 of them already banked
    assert res["cache"] == {"computed": 8, "reused": 4}
    assert "closest base from the same dataset for 3 of 3 targets" in r.out
    # rerun: every Fisher from the bank, the same numbers
    _cmd(capsys, "distance", "--tasks", ",".join(TASKS), "--metric", "logdet", "--spectrum", "diag",
         "--bank", tiny["bank"], "--out", out, *TINY)
    res2 = json.load(open(f"{out}/result.json"))
    assert res2["cache"] == {"computed": 0, "reused": 12}
    np.testing.assert_allclose(np.array(res2["mean"], float), mean, rtol=1e-6)
    tiny["table"] = res


def test_distance_target_ranking_matches_table(tiny, capsys):
    if "table" not in tiny:
        pytest.skip("needs the table test's bank")
    out = str(tiny["root"] / "rank")
    r = _cmd(capsys, "distance", "--target", "mnist_digit0", "--bases", "mnist_digit6,mnist_10way,mnist_digit0",
             "--metric", "logdet", "--spectrum", "diag", "--bank", tiny["bank"], "--out", out, *TINY)
    res = json.load(open(f"{out}/result.json"))
    table = tiny["table"]
    col = {b: table["mean"][i][0] for i, b in enumerate(TASKS) if b != "mnist_digit0"}
    expect = sorted(col, key=col.get)
    assert [row["base"] for row in res["ranking"]] == expect          # the target itself is dropped
    for row in res["ranking"]:
        assert row["mean"] == pytest.approx(col[row["base"]], rel=1e-6)
    assert res["cache"]["computed"] == 0                                # all cached
    lines = r.out.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("closest base tasks to mnist_digit0"))
    assert lines[i + 3].split()[:2] == ["1", expect[0]]


@pytest.mark.parametrize("argv, msg", [
    (["--tasks", "mnist_digit0,mnist_digit6", "--sigma2", "0"], "sigma2 must be positive"),
    (["--tasks", "mnist_digit0,mnist_digit6", "--sigma2=-1e-3"], "sigma2 must be positive"),
    (["--tasks", "mnist_digit0,mnist_digit6", "--metric", "logdt"], "unknown metric 'logdt'"),
    (["--tasks", "mnist_digit0,mnist_digit6", "--spectrum", "ful"], "unknown spectrum 'ful'"),
    (["--tasks", "mnist_digit0,nosuch"], "unknown task 'nosuch'"),
    (["--target", "nosuch", "--bases", "mnist_digit0"], "unknown task 'nosuch'"),
    (["--target", "mnist_digit0", "--bases", "mnist_digit0"], "no base tasks left"),
    (["--tasks", "mnist_digit0,mnist_digit6", "--seeds", "0,x"], "--seeds must be"),
    (["--tasks", "mnist_digit0,mnist_digit6", "--set", "distance.sigma2=0.0"], "distance.sigma2: must be > 0"),
])
def test_distance_cli_bad_input_is_one_line(tmp_path, capsys, argv, msg):
    # in-process (the same cli_main wrapper as bin/distance); one real subprocess below
    from tanas_jax.cli.distance import main

    assert main([*argv, "--bank", str(tmp_path / "bank"), *TINY]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err
    assert not os.path.exists(tmp_path / "bank" / "tasks")   # nothing trained


def test_distance_cli_bad_sigma2_subprocess(tmp_path):
    r = run_cli("distance", "--tasks", "offline8", "--sigma2", "0", "--bank", str(tmp_path / "bank"), *TINY)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --sigma2 must be positive, got 0.0; the authors use 1e-10"], r.stderr


def test_incompatible_networks_are_one_line(tiny, tmp_path, capsys):
    """A banked network whose parameters do not fit the configured net: one line, exit 2, no traceback."""
    import jax

    from tanas_jax import models
    from tanas_jax.bank import Bank

    bank = Bank(str(tmp_path / "bank"))
    wrong = models.init("tanas_cnn", 2, jax.random.PRNGKey(0))       # stored under small_cnn's name
    bank.save_network("mnist_digit6", "small_cnn", 0, wrong, {"num_classes": 2})
    r = run_cli("fisher", "--task", "mnist_digit0", "--net-of", "mnist_digit6", "--bank", bank.root, *TINY)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "incompatible networks" in lines[0] and "mnist_digit6" in lines[0], r.stderr
    from tanas_jax.cli.fisher import main

    assert main(["--task", "mnist_digit0", "--examples", "0", "--bank", str(tmp_path / "b2"), *TINY]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --examples must be positive, got 0"]
    assert not os.path.exists(tmp_path / "b2" / "tasks")


def _tiny_cfg(**extra):
    from tanas_jax.cli.common import load_config

    sets = [TINY[i + 1] for i in range(len(TINY)) if TINY[i] == "--set"]
    return load_config("quick", sets + [f"{k}={v!r}" for k, v in extra.items()])


def test_closest_bases_orders_by_the_table(tiny):
    """closest_bases = the table's target column sorted; default bases = tanas.bases minus the target."""
    if "table" not in tiny:
        pytest.skip("needs the table test's bank")
    from tanas_jax.bank import Bank
    from tanas_jax.distance import closest_bases

    bank = Bank(tiny["bank"])
    cfg = _tiny_cfg(**{"tanas.bases": ",".join(TASKS), "distance.metric": "logdet", "distance.spectrum": "diag"})
    table = tiny["table"]
    for j, target in enumerate(TASKS):
        col = {b: table["mean"][i][j] for i, b in enumerate(TASKS) if b != target}
        logs = []
        got = closest_bases(bank, target, cfg, log=logs.append)
        assert got == sorted(col, key=col.get) and logs == []      # nothing trained, all cached
    # explicit bases (aliases, a set name string or a list), seeds and metric
    assert closest_bases(bank, "mnist_digit0", cfg, bases=["mnist_10way"]) == ["mnist_10way"]
    fr = closest_bases(bank, "mnist_digit0", cfg, bases="mnist_digit6,mnist_10way", metric="frechet", seeds=[0])
    assert sorted(fr) == ["mnist_10way", "mnist_digit6"]
    assert cfg.distance.metric == "logdet"                         # the caller's config is untouched
    from tanas_jax.errors import UserError

    with pytest.raises(UserError, match="no base tasks left"):
        closest_bases(bank, "mnist_digit0", cfg, bases=["mnist_digit0"])
    with pytest.raises(UserError, match="unknown metric"):
        closest_bases(bank, "mnist_digit0", cfg, metric="cosine")


def test_closest_bases_transform_dispatch(monkeypatch, tmp_path):
    """metric='transform' ranks by transform_distance_table's d(base -> target) column."""
    import tanas_jax.distance.transform as tr
    from tanas_jax.bank import Bank
    from tanas_jax.distance import closest_bases

    d = {("mnist_digit6", "mnist_digit0"): 0.3, ("mnist_10way", "mnist_digit0"): 0.1,
         ("mnist_digit3", "mnist_digit0"): 0.2}
    calls = []

    def fake(bank, tasks, cfg, seeds=(0,), progress=True, log=print, **kw):
        calls.append(list(tasks))
        k = len(tasks)
        mean = [[0.0 if a == b else d.get((a, b), 9.0) for b in tasks] for a in tasks]
        return {"tasks": tasks, "seeds": list(seeds), "mean": mean, "std": [[0.0] * k for _ in tasks],
                "per_seed": [mean for _ in seeds]}

    monkeypatch.setattr(tr, "transform_distance_table", fake)
    cfg = _tiny_cfg(**{"tanas.bases": "mnist_digit6,mnist_10way,mnist_digit3,mnist_digit0"})
    got = closest_bases(Bank(str(tmp_path / "b")), "mnist_digit0", cfg, metric="transform")
    assert got == ["mnist_10way", "mnist_digit3", "mnist_digit6"]
    assert all(c[-1] == "mnist_digit0" for c in calls)


def test_full_spectrum_tables_on_the_tiny_bank(tiny):
    """Full log-det and Fréchet tables (shared per-example gradients) = the direct Gram / cross-Gram route."""
    if "table" not in tiny:
        pytest.skip("needs the table test's bank")
    import jax

    from tanas_jax import models
    from tanas_jax.bank import Bank
    from tanas_jax.distance import frechet_distance_full, logdet_distance_full, nuclear_norm
    from tanas_jax.distance.table import FisherStore, fisher_distance_table
    from tanas_jax.fisher import cross_gram, gram_eigenvalues, gram_matrix, pad_logits

    bank = Bank(tiny["bank"])
    pair = ["mnist_digit0", "mnist_10way"]
    res = {}
    for metric in ("logdet", "frechet"):
        cfg = _tiny_cfg(**{"distance.spectrum": "full", "distance.metric": metric})
        res[metric] = np.array(fisher_distance_table(bank, pair, cfg, [0], progress=False)["mean"])
        assert res[metric][0, 0] == res[metric][1, 1] == 0 and np.all(res[metric][~np.eye(2, dtype=bool)] > 0)
        again = fisher_distance_table(bank, pair, cfg, [0], progress=False)    # every spectrum from the bank
        assert again["cache"]["computed"] == 0 and np.array_equal(np.array(again["mean"]), res[metric])
    assert np.all(res["frechet"] <= 1)
    # direct: d[digit0 -> 10way] from gram_matrix / cross_gram
    store = FisherStore(bank, cfg, progress=False)
    (vb, _), (vt, _) = store.network("mnist_digit0", 0), store.network("mnist_10way", 0)
    x, y, _ = store.data("mnist_10way", full=True)
    ab, at = pad_logits(models.make_apply("small_cnn", 2), 10), models.make_apply("small_cnn", 10)  # label rule
    kw = dict(rng=jax.random.PRNGKey(0))
    Kb, nb = gram_matrix(ab, vb, x, y, **kw)
    Kt, nt = gram_matrix(at, vt, x, y, **kw)
    n = max(nb, nt)
    ld = logdet_distance_full(gram_eigenvalues(Kb), n, gram_eigenvalues(Kt), n, sigma2=1e-10)
    assert res["logdet"][0, 1] == pytest.approx(ld, rel=1e-5)
    fr = frechet_distance_full(np.trace(Kb), np.trace(Kt), nuclear_norm(cross_gram(ab, vb, at, vt, x, y, **kw)))
    assert res["frechet"][0, 1] == pytest.approx(fr, rel=1e-4)


def test_fisher_cache_keys_are_stable(tiny, tmp_path):
    """Entries banked under the key scheme of every release so far are found: sentinels stored under
    hand-built keys (``<data task>-s<seed>-<20 hex>``, ``<base>-s<seed>-<20 hex>`` for the cross-Gram)
    are what the store returns, without computing anything.  The label rule (docs/labels.md) changed the
    numbers of a base with fewer classes than the data (K > C) only: those keys carry ``version`` 2, so an
    entry of the old rule (version 1) is not reused; pairs with K <= C keep version 1."""
    if "table" not in tiny:
        pytest.skip("needs the table test's bank")
    import hashlib
    import shutil

    from tanas_jax.bank import Bank
    from tanas_jax.distance.table import FisherStore

    src = Bank(tiny["bank"])
    bank = Bank(str(tmp_path / "bank"))
    for t in ("mnist_digit0", "mnist_10way"):
        shutil.copytree(os.path.join(src.task_dir(t), "networks"), os.path.join(bank.task_dir(t), "networks"))
    store = FisherStore(bank, _tiny_cfg(), progress=False)

    def net(t):
        meta = json.load(open(bank.network_path(t, "small_cnn", 0).replace(".safetensors", ".json")))
        return {"task": t, "net": "small_cnn", "seed": 0, "sha256": meta["sha256"], "num_classes": meta["num_classes"]}

    def data(t):
        rec = store.data(t)[2].record()
        return {k: rec.get(k) for k in ("task", "dataset", "source", "split_seed", "val_fraction", "max_train",
                                        "max_eval", "normalization")}

    def key(prefix, inputs):
        return prefix + hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def bank_sentinels(base, target, version, v):
        """Fisher and Gram of ``base``'s net on ``target``'s data, and their cross-Gram, all holding ``v``."""
        common = {"data": data(target), "split": "train", "estimator": "empirical", "version": version}
        fisher_in = {**common, "network": net(base), "examples": 64, "mc_samples": None, "authors_fisher": False}
        bank.save_artifact(base, "fisher_diag", key(f"{target}-s0-", fisher_in), {"x": np.full(3, v)}, {})
        gram_in = {**common, "network": net(base), "examples": 32, "head": "pad"}
        bank.save_artifact(base, "fisher_gram_eigs", key(f"{target}-s0-", gram_in), {"eigs": np.array([v, 1.0])},
                           {"n": 5})
        cross_in = {**common, "base": net(base), "target": net(target), "examples": 32, "head": "pad"}
        bank.save_artifact(target, "fisher_cross_gram", key(f"{base}-s0-", cross_in),   # shape (1,): old banks
                           {"tr_b": np.array([v]), "tr_t": np.array([2.5]), "nuclear": np.array([0.5])}, {})

    def assert_found(base, target, v):
        tree, _ = store.fisher(base, target, 0)
        np.testing.assert_array_equal(tree["x"], np.full(3, v))
        eigs, n = store.gram_eigs(base, target, 0, "pad")
        assert eigs.tolist() == [v, 1.0] and n == 5
        assert store.cross(base, target, 0, "pad") == (v, 2.5, 0.5)

    bank_sentinels("mnist_10way", "mnist_digit0", 1, 7.0)     # K = 2 <= C = 10: no padding, version 1
    assert_found("mnist_10way", "mnist_digit0", 7.0)
    bank_sentinels("mnist_digit0", "mnist_10way", 1, 3.0)     # K = 10 > C = 2: the old rule's entries...
    bank_sentinels("mnist_digit0", "mnist_10way", 2, 9.0)     # ...are not what the padded rule finds
    assert_found("mnist_digit0", "mnist_10way", 9.0)
    assert store.stats["cached"] == 6 and store.stats["computed"] == 0


# --- P(closest) (issue 11): one in-process bin/distance run on this bank ------------------------
BOOT = ["--bootstrap", "5", "--bootstrap-seed", "3", "--set", "distance.bootstrap_blocks=4"]


@pytest.fixture(scope="module")
def boot(tiny):
    """A table with P(closest) over 1 seed x 5 resamples of 4 blocks of 16 Fisher examples (in-process)."""
    from tanas_jax.cli.distance import run

    out = str(tiny["root"] / "boot")
    assert run(["--tasks", ",".join(TASKS), "--metric", "logdet", "--bank", tiny["bank"], "--out", out,
                *BOOT, *TINY]) == 0
    with open(f"{out}/result.json") as f:
        return {"out": out, "result": json.load(f)}


def test_distance_cli_writes_p_closest_in_json_and_csv(boot):
    res = boot["result"]
    b = res["bootstrap"]
    assert (b["resamples"], b["blocks"], b["seed"], b["over"]) == (5, 4, 3, "1 seed x 5 resamples")
    pc = res["p_closest"]
    assert set(pc) == set(TASKS)
    for t in TASKS:
        assert set(pc[t]) == set(TASKS) - {t}
        assert sum(pc[t].values()) == pytest.approx(1.0)
        # 5 replicates, a tie split in halves: every P is a multiple of 1/10
        assert all(0.0 <= v <= 1.0 and abs(v * 10 - round(v * 10)) < 1e-9 for v in pc[t].values())
    with open(res["files"]["csv_p_closest"]) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["base\\target"] + TASKS and [r[0] for r in rows[1:]] == TASKS
    for i, base in enumerate(TASKS):
        for j, t in enumerate(TASKS):
            cell = rows[1 + i][1 + j]
            assert cell == "" if base == t else float(cell) == pytest.approx(pc[t][base], abs=1e-6)
    assert open(res["files"]["heatmap"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_bootstrap_keeps_the_point_estimate_and_blocks_average_to_the_full_fisher(tiny, boot):
    import jax

    from tanas_jax.bank import Bank
    from tanas_jax.distance.stats import block_slices, resample_mean
    from tanas_jax.distance.table import FisherStore, fisher_distance_table

    bank = Bank(tiny["bank"])
    cfg = _tiny_cfg(**{"distance.bootstrap": 0, "distance.metric": "logdet"})   # as the boot run
    plain = fisher_distance_table(bank, TASKS, cfg, [0], progress=False, log=lambda *_: None)
    res = boot["result"]
    assert plain["mean"] == res["mean"] and plain["per_seed"] == res["per_seed"]      # bitwise
    assert plain["bootstrap"]["over"] == "1 seed" and plain["cache"]["computed"] == 0
    store = FisherStore(bank, cfg, progress=False, log=lambda *_: None)
    full, _ = store.fisher("mnist_digit0", "mnist_10way", 0)        # one fisher_diag call on all 64 examples
    for blocks in (4, 5):                                           # 64 = 4 x 16, and 13 + 13 + 13 + 13 + 12
        stack, sizes = store.fisher_blocks("mnist_digit0", "mnist_10way", 0, blocks)
        assert list(sizes) == [s.stop - s.start for s in block_slices(64, blocks)]
        mean = jax.tree_util.tree_map(lambda a, n=sizes, j=blocks: resample_mean(a, n, np.arange(j)), stack)
        for got, want in zip(jax.tree_util.tree_leaves(mean), jax.tree_util.tree_leaves(full)):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6 * float(np.max(want)))
    assert store.stats["blocks_cached"] == 1 and store.stats["blocks_computed"] == 1   # the run's 4 blocks


def test_distance_cli_ranking_prints_the_tables_p_closest(tiny, boot, capsys):
    from tanas_jax.cli.distance import run

    out = str(tiny["root"] / "boot_rank")
    assert run(["--target", "mnist_10way", "--bases", "mnist_digit0,mnist_digit6", "--bank", tiny["bank"],
                "--out", out, *BOOT, *TINY]) == 0
    assert "P(closest) over 1 seed x 5 resamples" in capsys.readouterr().out
    res = json.load(open(f"{out}/result.json"))
    # the same tasks and resamples as the table: the same P(closest) for this target
    got = {r["base"]: r["p_closest"] for r in res["ranking"]}
    assert got == pytest.approx(boot["result"]["p_closest"]["mnist_10way"])
