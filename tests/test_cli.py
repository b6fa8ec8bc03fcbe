"""Shared command-line plumbing: the seed/name parsers, the one error wrapper, logging, argparse in every
command, and commands that never change the config they are handed."""
import logging
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from tanas_jax.errors import UserError


# --- parsers ------------------------------------------------------------------------------
def test_parse_seeds():
    from tanas_jax.cli.common import parse_seeds

    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds(" 3, 1 ,3,") == [3, 1]
    for bad in ("a,b", "-1", "", ",", "1.5", "0,x"):
        with pytest.raises(UserError, match="--seeds must be comma-separated integers >= 0") as e:
            parse_seeds(bad)
        assert "\n" not in str(e.value) and repr(bad)[1:-1] in str(e.value)
    with pytest.raises(UserError, match="--seed must be"):
        parse_seeds("-3", "--seed")


def test_parse_names_and_tasks():
    from tanas_jax.cli.common import parse_name, parse_names, parse_task, parse_tasks

    assert parse_names("b, a,b", ["a", "b", "c"], "op") == ["b", "a"]
    with pytest.raises(UserError, match=r"unknown op 'bb'; valid: a, b, c \(did you mean 'b'\?\)"):
        parse_names("a,bb", ["a", "b", "c"], "op")
    with pytest.raises(UserError, match="empty op list"):
        parse_names(" , ", ["a"], "op")
    assert parse_name("frechet", ("logdet", "frechet"), "metric") == "frechet"
    with pytest.raises(UserError, match="give one metric"):
        parse_name("logdet,frechet", ("logdet", "frechet"), "metric")
    assert parse_tasks("task0,mnist_digit6") == ["mnist_digit0", "mnist_digit6"]
    assert parse_task("task0") == "mnist_digit0"
    with pytest.raises(UserError, match="unknown task 'nope'"):
        parse_tasks("mnist_digit0,nope")


# --- one error wrapper, argparse everywhere -------------------------------------------------
@pytest.mark.parametrize("module, argv, msg", [
    ("train", ["--task", "task0", "--bogus"], "unrecognized arguments: --bogus"),
    ("train", ["--task", "task0", "--seeds", "0,-1"], "--seeds must be"),
    ("train", ["--task", "task0", "--seed", "x"], "--seed must be"),
    ("fuse", ["--space", "standard"], "required: --task"),
    ("fuse", ["--task", "task0", "--data-source", "web"], "invalid choice: 'web'"),
    ("search", ["--method", "darts"], "unknown --method 'darts'"),
    ("search", ["--method=tetl", "--task", "task0"], "did you mean 'tetlo'"),
    ("search", ["--task", "task0"], "required: --method"),
    ("search", ["--method", "darts1", "--task", "task0", "--seeds", "1,x"], "--seeds must be"),
    ("tanas", ["--bases", "mnist_digit0,nope"], "unknown task 'nope'"),
    ("tanas", ["--metric", "logdt"], "unknown metric 'logdt'"),
    ("distance", ["--tasks", "task0,task1", "--head", "padd"], "unknown head 'padd'"),
    ("fisher", ["--task", "task0", "--microbatch", "0"], "--microbatch must be positive, got 0"),
    ("bench", ["nope"], "unknown benchmark 'nope'"),
    ("bench", [], "needs a benchmark name"),
    ("bank", ["lss"], "invalid choice: 'lss'"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, module, argv, msg):
    import importlib

    main = importlib.import_module(f"tanas_jax.cli.{module}").main
    extra = [] if module == "bench" else ["--bank", str(tmp_path / "bank")]
    assert main(extra + argv if module == "bank" else argv + extra) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err
    assert not os.path.exists(tmp_path / "bank" / "tasks")


def test_help_everywhere(capsys):
    import importlib

    for module in ("bank", "bench", "distance", "fisher", "fuse", "search", "tanas", "train"):
        assert importlib.import_module(f"tanas_jax.cli.{module}").main(["--help"]) == 0, module
        assert "usage:" in capsys.readouterr().out, module
    from tanas_jax.cli.bench import main

    assert main(["fisher", "--help"]) == 0                     # the benchmark's own parser
    assert "--examples" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", ["bench", "tanas"])
def test_bin_scripts_help(cmd):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bin", cmd), "--help"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("usage: " + cmd), r.stdout + r.stderr


def test_search_splits_method():
    from tanas_jax.cli.search import split_method

    assert split_method(["--task", "t", "--method=fuse", "--set", "a.b=1"]) == ("fuse", ["--task", "t", "--set",
                                                                                          "a.b=1"])
    assert split_method(["--method", "tetlo", "--seeds", "0,1"]) == ("tetlo", ["--seeds", "0,1"])
    assert split_method(["--task", "t"]) == (None, ["--task", "t"])


def test_bank_cli_lists_an_empty_bank(tmp_path, capsys):
    from tanas_jax.bank import Bank
    from tanas_jax.cli.bank import main

    root = Bank(str(tmp_path / "bank")).root
    assert main(["--bank", root, "ls"]) == 0
    assert "0 tasks, 0 networks, 0 genotypes" in capsys.readouterr().out
    assert main(["--bank", root, "show", "task0"]) == 2
    assert "has nothing for task mnist_digit0" in capsys.readouterr().err
    assert main(["--bank", root, "verify", "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out


# --- logging --------------------------------------------------------------------------------
def test_logging_configured_once_to_stderr(capsys):
    from tanas_jax.cli.common import cli_main, progress_from_args

    class Args:
        no_progress = False

    seen = []

    def run(argv):
        progress = progress_from_args(Args)
        logging.getLogger("tanas_jax.pipeline").info("step %s", argv[0])
        logging.getLogger("tanas_jax").warning("careful")
        seen.append(progress)
        print("the product")

    main = cli_main(run)
    assert main(["one"]) == 0 and main(["two"]) == 0
    out, err = capsys.readouterr()
    assert out == "the product\nthe product\n"
    assert err == "step one\ncareful\nstep two\ncareful\n"            # one handler, plain messages
    Args.no_progress = True
    assert main(["three"]) == 0
    assert capsys.readouterr().err == "careful\n" and seen == [True, True, False]


# --- commands never change the config they are handed ----------------------------------------
def _args(module: str, argv: list[str]):
    import importlib

    return importlib.import_module(f"tanas_jax.cli.{module}").build_parser().parse_args(argv)


def test_config_helpers_return_new_configs(quick_cfg):
    from tanas_jax.cli.common import config_from_args
    from tanas_jax.cli.distance import distance_config
    from tanas_jax.cli.fisher import fisher_config
    from tanas_jax.cli.tanas import pipeline_config
    from tanas_jax.cli.train import train_config

    before = quick_cfg.to_dict()
    args = _args("distance", ["--tasks", "task0", "--examples", "50", "--estimator", "mc", "--authors-fisher",
                              "--metric", "logdet", "--sigma2", "1e-6", "--data-source", "bundled"])
    cfg = distance_config(fisher_config(quick_cfg, args), args)
    assert quick_cfg.to_dict() == before
    assert (cfg.fisher.examples, cfg.fisher.full_examples, cfg.fisher.estimator) == (50, 50, "mc")
    assert cfg.distance.authors_fisher and (cfg.distance.metric, cfg.distance.sigma2) == ("logdet", 1e-6)
    cfg = train_config(quick_cfg, _args("train", ["--net", "tanas_cnn", "--epsilon", "0.2"]))
    assert quick_cfg.to_dict() == before and (cfg.train.net, cfg.train.epsilon) == ("tanas_cnn", 0.2)
    args = _args("tanas", ["--target", "task1", "--top-k", "2", "--data-source", "bundled"])
    cfg = pipeline_config(args)
    assert (cfg.tanas.target, cfg.tanas.top_k, cfg.data.source) == ("task1", 2, "bundled")
    assert config_from_args(args) is not config_from_args(args)


def test_closest_fn_does_not_change_the_config(quick_cfg, bank, monkeypatch):
    import tanas_jax.distance as distance
    from tanas_jax.cli.fuse import closest_fn_for
    from tanas_jax.config import updated

    cfg = updated(quick_cfg, {"tanas.metric": "frechet", "distance.metric": "logdet"})
    before = cfg.to_dict()
    got = {}

    def fake_closest(bank_, target, cfg_, metric, log):
        got.update(target=target, metric=metric, distance_metric=cfg_.distance.metric)
        return ["mnist_digit6"]

    monkeypatch.setattr(distance, "closest_bases", fake_closest)
    assert closest_fn_for(bank, cfg)("mnist_digit0") == ["mnist_digit6"]
    assert got == {"target": "mnist_digit0", "metric": "frechet", "distance_metric": "frechet"}
    assert cfg.to_dict() == before and cfg.distance.metric == "logdet"


def test_train_command_leaves_its_config_unchanged(bank, quick_cfg, capsys):
    from tanas_jax.cli.train import train_networks
    from tanas_jax.config import updated

    cfg = updated(quick_cfg, {"train.epochs": 1, "data.max_train": 256, "data.source": "bundled"})
    before = cfg.to_dict()
    rows = train_networks(cfg, bank, ["mnist_digit0"], [0], progress=False)
    assert cfg.to_dict() == before
    assert rows[0]["status"] == "trained" and rows[0]["test_acc"] > 0.9
    assert train_networks(cfg, bank, ["mnist_digit0"], [0], progress=False)[0]["status"] == "reused"
    assert "%|" not in capsys.readouterr().err                      # no bar with progress=False ...
    train_networks(cfg, bank, ["mnist_digit0"], [1], progress=True)
    assert "%|" in capsys.readouterr().err                          # ... and one with progress=True


def test_wrapper_exit_codes(capsys):
    from tanas_jax.cli.common import cli_main

    def raising(exc):
        def run(argv):
            raise exc
        return cli_main(run)

    assert raising(UserError("bad   name\n here"))([]) == 2
    assert capsys.readouterr().err == "error: bad name here\n"
    assert raising(KeyboardInterrupt())([]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    # exit codes: 0 ok, 1 product failure, 2 user error (and 130 for Ctrl-C): any other status becomes 1
    assert raising(SystemExit(3))([]) == 1 and raising(SystemExit(None))([]) == 0
    assert raising(SystemExit(2))([]) == 2
    assert raising(SystemExit("boom"))([]) == 1
    assert capsys.readouterr().err == "error: boom\n"
    with pytest.raises(RuntimeError):               # a bug keeps its traceback
        raising(RuntimeError("bug"))([])
