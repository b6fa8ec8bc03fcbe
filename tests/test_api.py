"""The Python API (tanas_jax.api) and its worked example, docs/examples/own_task.py, run in-process.

The example trains tiny ε-nets on real data (Fashion-MNIST footwear or the bundled MNIST digits), ranks
three offline8 bases with P(closest) over two seeds and runs a one-round FUSE; the checks compare what it
returns with independent references (numpy over the table's per-seed distances, the bank's own files).
"""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from tanas_jax import api
from tanas_jax.errors import UserError

EXAMPLE = os.path.join(ROOT, "docs", "examples", "own_task.py")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    out = tmp_path_factory.mktemp("own_task")
    main = runpy.run_path(EXAMPLE)["main"]
    return main([str(out)]), str(out)


def test_example_ranking_matches_the_distances_and_p_closest_sums_to_one(example):
    got, _ = example
    ranking = got["ranking"]
    table = ranking.table
    t = table["tasks"].index(ranking.target)
    per_seed = np.array(table["per_seed"], float)                  # (seeds, K, K): d[seed, base, target]
    ref = {b: per_seed[:, i, t] for i, b in enumerate(table["tasks"]) if b != ranking.target}
    assert [r.base for r in ranking.rows] == sorted(ref, key=lambda b: (ref[b].mean(), b))   # closest first
    for r in ranking.rows:
        assert r.mean == pytest.approx(ref[r.base].mean(), rel=1e-12)
        assert r.std == pytest.approx(ref[r.base].std(ddof=1), rel=1e-9)
        assert ranking.per_seed[r.base] == pytest.approx(list(ref[r.base]))
    assert sum(r.p_closest for r in ranking.rows) == pytest.approx(1.0)
    # P(closest) by a naive loop: in each seed, the base with the smallest distance wins
    wins = {b: 0 for b in ref}
    for s in range(per_seed.shape[0]):
        wins[min(ref, key=lambda b: (ref[b][s], b))] += 1
    assert {r.base: r.p_closest for r in ranking.rows} == {b: n / per_seed.shape[0] for b, n in wins.items()}
    assert ranking.seeds == [0, 1] and ranking.closest == ranking.rows[0].base
    json.dumps(ranking.to_dict())                                  # plain data


def test_example_network_reloads_bit_identically_and_task_counts(example):
    import jax

    got, _ = example
    net, again, task, bank = got["net"], got["again"], got["task"], got["bank"]
    assert not again.trained and again.meta["sha256"] == net.meta["sha256"]
    stored, _ = bank.load_network(task.name, net.net, 0)
    for tree in (again.variables, stored):
        a, b = jax.tree_util.tree_leaves(net.variables), jax.tree_util.tree_leaves(tree)
        assert len(a) == len(b) and all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
                                        for x, y in zip(a, b))
    assert task.num_classes == 3 and all(task.counts["test"][c] == 40 for c in task.class_names)
    assert sum(task.counts["train"].values()) == net.meta["data"]["sizes"]["train"]
    assert task.record["data_sha256"] == net.meta["data"]["data_sha256"]
    json.dumps([task.to_dict(), net.to_dict()])


def test_example_search_figures_and_files(example):
    from matplotlib.figure import Figure

    got, out = example
    found, bank = got["search"], got["bank"]
    assert 0.0 <= found.final["test_accuracy"] <= 1.0 and found.evaluations >= 1
    assert bank.load_genotype(found.target)[0] == found.winner                  # save=True banked it
    assert all(isinstance(f, Figure) for f in got["figures"].values())
    for p in got["paths"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    json.dumps(found.to_dict())


def test_a_banked_memory_task_serves_as_a_base_by_name_in_a_new_process(example):
    """A new Python session has not got the arrays: the bank's networks are enough for a base, and using
    it as a target says what to do in one line."""
    got, _ = example
    name, bank = got["task"].name, got["bank"].root
    code = (f"from tanas_jax import api\nfrom tanas_jax.errors import UserError\n"
            f"import runpy\nex = runpy.run_path({EXAMPLE!r})\nb = api.open_bank({bank!r})\n"
            f"o = dict(ex['OVERRIDES'], **{{'distance.bootstrap': 0}})\n"     # reads distances, not P(closest)
            f"r = api.rank(b, ex['bases_here']()[0], bases=[{name!r}], seeds=[0], overrides=o)\n"
            f"from tanas_jax import tasks\n"
            f"print('RANKED', r.rows[0].base, r.rows[0].mean, tasks.has_data({name!r}))\n"
            f"try:\n    api.rank(b, {name!r}, bases=ex['bases_here'](), seeds=[0], overrides=o)\n"
            f"except UserError as e:\n    print('REFUSED', e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    ranked = [line.split() for line in p.stdout.splitlines() if line.startswith("RANKED")]
    assert ranked and ranked[0][1] == name and np.isfinite(float(ranked[0][2])) and ranked[0][3] == "False"
    refused = [line for line in p.stdout.splitlines() if line.startswith("REFUSED")]
    assert refused and "not here" in refused[0] and "pass its spec or data again" in refused[0]


# --- small pure parts ---------------------------------------------------------------------------
def _table(p_closest=None, per_seed=None):
    t = {"tasks": ["a", "b", "t"], "seeds": [0, 1], "settings": {"metric": "logdet"},
         "per_seed": per_seed or [[[0, 0, 1.0], [0, 0, 2.0], [0, 0, 0]], [[0, 0, 3.0], [0, 0, 2.5], [0, 0, 0]]],
         "mean": [[0, 0, 2.0], [0, 0, 2.25], [0, 0, 0]], "std": [[0, 0, 1.4], [0, 0, 0.35], [0, 0, 0]]}
    if p_closest is not None:
        t["p_closest"] = p_closest
    return t


def test_ranking_reads_p_closest_from_the_table_when_present():
    plain = _table()
    own = api.ranking_from_table(plain, "t")
    assert [r.base for r in own.rows] == ["a", "b"] and own.p_closest_from == "seeds"
    assert [r.p_closest for r in own.rows] == [0.5, 0.5]      # seed 0: a (1.0 < 2.0); seed 1: b (2.5 < 3.0)
    assert "p_closest" not in plain                           # the caller's table is not changed
    given = api.ranking_from_table(_table({"t": {"a": 0.7, "b": 0.3}}), "t")
    assert given.p_closest_from == "table" and [r.p_closest for r in given.rows] == [0.7, 0.3]


def test_ranking_p_closest_over_seeds_is_the_distance_layers():
    """Counted by hand over 4 seeds: a wins seeds 0 and 2, b wins seed 1, seed 3 ties at 2.0 (each gets
    half, as distance.stats.p_closest splits ties) and seed 4 has no finite distance (counts for no one)."""
    from tanas_jax.distance.stats import p_closest

    nan = float("nan")
    col = [(1.0, 2.0), (3.0, 1.0), (0.5, 4.0), (2.0, 2.0), (nan, nan)]
    per_seed = [[[0, 0, a], [0, 0, b], [0, 0, 0]] for a, b in col]
    r = api.ranking_from_table(dict(_table(per_seed=per_seed), seeds=[0, 1, 2, 3, 4]), "t")
    assert r.p_closest_from == "seeds"
    assert {row.base: row.p_closest for row in r.rows} == {"a": 2.5 / 4, "b": 1.5 / 4}
    assert [row.p_closest for row in r.rows] == list(p_closest(np.array(col)))
    assert r.table["p_closest"]["t"] == {"a": 2.5 / 4, "b": 1.5 / 4}


def test_config_and_overrides_like_set():
    from tanas_jax.config import load_config

    base = load_config("quick")
    before = base.to_dict()
    cfg = api.make_config(base, {"fuse.rounds": 1, "search.input_shape": (16, 16, 1)})
    assert cfg.fuse.rounds == 1 and tuple(cfg.search.input_shape) == (16, 16, 1) and base.to_dict() == before
    assert api.make_config("quick", {"fuse.rounds": 2}).fuse.rounds == 2


@pytest.mark.parametrize("call, says", [
    (lambda: api.make_config("quick", {"fuse.round": 1}), "did you mean"),
    (lambda: api.make_config("quick", ["fuse.rounds=1"]), "overrides must be a dict"),
    (lambda: api.make_config(3), "config must be"),
    (lambda: api.make_config("quick", {"fuse.rounds": 0}), "fuse.rounds"),
    (lambda: api.task_from_arrays("bad_len", np.zeros((10, 8, 8), np.uint8), np.arange(9) % 2), "10 images but 9"),
    (lambda: api.task_from_spec(42), "spec path"),
    (lambda: api.task_from_spec({"source": {"image_folder": "/nonexistent/x"}, "name": "nope"}), "/nonexistent/x"),
    (lambda: api.run("mnist_digit0", bases="mnist_digit0", top_k=0), "top_k"),
    (lambda: api.run("mnist_digit0", metric="cosine"), "unknown metric"),
    (lambda: api.rank(None, "mnist_digit0", bases="mnist_digt3"), "did you mean"),
])
def test_bad_input_is_one_user_error_line(call, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)              # open_bank(None) would use ./bank
    with pytest.raises(UserError) as e:
        call()
    assert says in str(e.value) and "\n" not in str(e.value)


def test_the_spec_a_bank_records_reads_back_the_same(tmp_path):
    from tanas_jax.data.spec import from_dict, from_record

    spec = from_dict({"name": "clothes", "source": {"image_folder": "photos"}, "input_size": [28, 30],
                      "channels": 1, "classes": {"top": ["t-shirt", 3], "rest": "*"},
                      "splits": {"val_fraction": 0.2, "max_train": 50}, "description": "d"}, "s.toml", str(tmp_path))
    back = from_record(json.loads(json.dumps(spec.to_dict())), "bank record")
    assert back.to_dict() == {**spec.to_dict(), "origin": "bank record"}
    assert back.source == {"image_folder": str(tmp_path / "photos")} and back.classes == spec.classes
    with pytest.raises(UserError, match="bank record: the recorded task spec is incomplete"):
        from_record({"name": "x"}, "bank record")
