"""bin/search on the bundled MNIST subset: result file, plot, bank entry, resume, one-line errors."""
import json
import os

from tanas_jax.cli.search import main
from tanas_jax.search.darts import skip_count
from tanas_jax.search.genotype import Genotype

SMALL = ["--task", "mnist_10way", "--space", "ops:none,skip_connect,avg_pool_3x3", "--data-source", "bundled",
         "--set", "search.darts.steps=3", "--set", "final.steps=2", "--set", "search.max_train=64",
         "--set", "search.darts.history_every=1", "--set", "search.darts.checkpoint_every=1",
         "--set", "search.darts.input_shape=(8,8,1)", "--set", "data.max_eval=64", "--no-progress"]


def test_search_cli_writes_result_plot_bank_and_resumes(tmp_path, capsys):
    out, bank = str(tmp_path / "out"), str(tmp_path / "bank")
    assert main(["--method", "darts1", *SMALL, "--out", out, "--bank", bank]) == 0
    res = json.load(open(os.path.join(out, "result.json")))
    run = res["runs"][0]
    assert res["data"]["source"].startswith("bundled") and "provenance" in res
    assert run["skip_connect"] == skip_count(Genotype.from_dict(run["genotype"]))
    assert "none" not in run["genotype_short"]
    # the derived cell is trained at search.input_shape (FUSE's input), not the supernet's 8x8 crop
    assert run["final"]["input_shape"] == [28, 28, 3] and run["final"]["steps"] == 2
    assert os.path.exists(os.path.join(out, "beta_darts1_seed0.png"))
    assert os.path.exists(os.path.join(bank, "mnist_10way")) or any("mnist_10way" in p for p, _, _ in os.walk(bank))
    capsys.readouterr()
    assert main(["--method", "darts1", *SMALL, "--out", out, "--bank", bank]) == 0
    res2 = json.load(open(os.path.join(out, "result.json")))
    assert res2["runs"][0]["resumed_from_step"] == 3
    assert res2["runs"][0]["genotype"] == run["genotype"]
    assert res2["runs"][0]["final"]["test_accuracy"] == run["final"]["test_accuracy"]


def test_search_cli_bad_input_one_line(capsys):
    for argv, msg in ((["--method", "darts7", "--task", "mnist_10way"], "unknown --method"),
                      (["--method", "tetlo", "--task", "mnist_10way", "--space", "bogus"], "unknown --space"),
                      (["--method", "darts1", "--task", "mnist_10way", "--set", "search.darts.w_optimizer=lamb"],
                       "w_optimizer"),
                      (["--method", "darts1", "--task", "mnist_10way", "--seeds", "a,b"], "--seeds")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and msg in err and "\n" not in err
