"""train.init_seed: a stated, shared initialisation of the bank's ε-nets (issue 11, deliverable 3).

Real MNIST (bundled subset), the quick preset's small_cnn, one epoch on a few hundred examples.
"""
import jax
import numpy as np
import pytest

from tanas_jax.errors import UserError

TINY = {"train.epochs": 1, "data.max_train": 192, "data.max_eval": 64, "fisher.examples": 64,
        "distance.bootstrap": 0}    # the tables here are read for their distances, not P(closest)


@pytest.fixture(scope="module")
def cfgs():
    """{None: per-seed init, 0: shared init_seed=0}: the quick preset on tiny data."""
    from tanas_jax.cli.common import load_config
    from tanas_jax.config import updated

    return {None: updated(load_config("quick", ["train.init_seed=None"]), TINY),
            0: updated(load_config("quick"), TINY)}


@pytest.fixture(scope="module")
def shared_bank(tmp_path_factory):
    from tanas_jax.bank import Bank

    return Bank(str(tmp_path_factory.mktemp("init") / "bank"))


def _backbone(variables) -> dict:
    from tanas_jax.bank import flatten_tree

    return {k: v for k, v in flatten_tree(variables["params"]).items() if not k.startswith("head")}


def test_init_seed_is_validated():
    from tanas_jax.config import TrainConfig

    assert TrainConfig().init_seed == 0 and TrainConfig(init_seed=None).init_seed is None   # default: shared init(0)
    assert TrainConfig(init_seed=3).init_seed == 3
    for bad in (-1, 2**32, 1.5, True, "0"):
        with pytest.raises(UserError, match="train.init_seed"):
            TrainConfig(init_seed=bad)


def test_shared_init_starts_every_task_from_the_same_backbone(cfgs):
    """With a vanishing learning rate a trained net is its initialisation: under init_seed=0 the nets of
    two tasks (2 and 4 classes) trained with seeds 1 and 2 have init(0)'s backbone; per-seed they differ."""
    from tanas_jax import models
    from tanas_jax.config import updated
    from tanas_jax.tasks import task_data
    from tanas_jax.train import train_network

    start = {}
    for init, cfg in cfgs.items():
        cfg = updated(cfg, {"train.learning_rate": 1e-9})
        for task, seed in (("mnist_138", 1), ("mnist_4class", 2)):
            data = task_data(task, models.get_net(cfg.train.net).input_shape, cfg.data)
            variables, _ = train_network(data, cfg.train.net, cfg.train, seed, progress=False)
            start[(init, task)] = _backbone(variables)
    ref = _backbone(models.init("small_cnn", 2, jax.random.PRNGKey(0)))
    for task in ("mnist_138", "mnist_4class"):
        for k, v in ref.items():
            np.testing.assert_allclose(start[(0, task)][k], v, rtol=0, atol=1e-7)
    diff = max(np.abs(start[(None, "mnist_138")][k] - start[(None, "mnist_4class")][k]).max() for k in ref)
    assert diff > 1e-2


def test_seed0_shared_is_bit_identical_to_per_seed_but_banked_apart(shared_bank, cfgs):
    from tanas_jax.bank import flatten_tree
    from tanas_jax.train import ensure_network, network_key

    nets = {init: ensure_network(shared_bank, "mnist_138", 0, cfg, progress=False, log=lambda *a: None)
            for init, cfg in cfgs.items()}
    a, b = flatten_tree(nets[None][0]), flatten_tree(nets[0][0])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert nets[None][1]["init_seed"] is None and nets[0][1]["init_seed"] == 0
    assert network_key("small_cnn", None) == "small_cnn-perseed" and network_key("small_cnn", 0) == "small_cnn"
    assert network_key("small_cnn", 7) == "small_cnn-init7"
    assert shared_bank.has_network("mnist_138", "small_cnn", 0)
    assert shared_bank.has_network("mnist_138", "small_cnn-perseed", 0)
    assert nets[None][1]["tensors_sha256"] == nets[0][1]["tensors_sha256"]   # same tensors (the files differ: their
    # headers carry each entry's own record)
    assert ("mnist_138", "small_cnn-perseed", 0) in shared_bank.network_entries("mnist_138")
    # seed 1: the shared convention starts from init(0), the per-seed one from init(1)
    one = {init: flatten_tree(ensure_network(shared_bank, "mnist_138", 1, cfg, progress=False,
                                             log=lambda *a: None)[0]) for init, cfg in cfgs.items()}
    assert any(not np.array_equal(one[None][k], one[0][k]) for k in one[0])


def test_a_table_refuses_a_bank_that_mixes_init_conventions(shared_bank, cfgs):
    """mnist_4class seed 1 banked under the shared convention's name but trained from init(1) (a per-seed
    net, as an older bank holds it): refused, one line; seed 0 of that convention IS init(0) and is used."""
    from tanas_jax.distance.table import fisher_distance_table
    from tanas_jax.train import ensure_network

    for seed in (0, 1):
        variables, meta = ensure_network(shared_bank, "mnist_4class", seed, cfgs[None], progress=False,
                                         log=lambda *a: None)
        shared_bank.save_network("mnist_4class", "small_cnn", seed, variables, meta)   # as an old bank holds it
    for seed in (0, 1):
        ensure_network(shared_bank, "mnist_138", seed, cfgs[0], progress=False, log=lambda *a: None)
    with pytest.raises(UserError) as e:
        fisher_distance_table(shared_bank, ["mnist_138", "mnist_4class"], cfgs[0], [1], progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "mixes initialisation conventions" in msg
    assert "mnist_4class (seed 1) was trained from init(1) (init_seed None)" in msg
    assert "starts seed 1 from init(0)" in msg and "train.init_seed" in msg and "--retrain" in msg
    # seed 0: the per-seed net is init(0)'s net, so the legacy entry is reused and the table runs
    r = fisher_distance_table(shared_bank, ["mnist_138", "mnist_4class"], cfgs[0], [0], progress=False)
    assert r["mean"][0][1] > 0 and r["mean"][1][0] > 0
