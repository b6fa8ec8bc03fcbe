"""Search spaces and bin/fuse bad input: one clear line, exit 2 (no JAX compile here)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tanas_jax.bank import Bank
from tanas_jax.errors import UserError
from tanas_jax.search.genotype import Genotype, authors_cell_structure
from tanas_jax.search.spaces import resolve_space, space_from_genotypes, standard_space


def test_standard_and_sampling_are_seeded():
    sp = standard_space()
    a = [sp.sample(np.random.default_rng(5)).key() for _ in range(3)]
    b = [sp.sample(np.random.default_rng(5)).key() for _ in range(3)]
    assert a == b
    g = sp.sample(np.random.default_rng(0))
    assert set(g.ops) <= set(sp.ops)
    d = sp.sample_distinct(np.random.default_rng(0), 5, exclude=[g])
    assert len({x.key() for x in d + [g]}) == 6


def test_from_task7_uses_bundled_genotype_then_bank(tmp_path):
    msgs = []
    sp = resolve_space("from:task7", bank=Bank(str(tmp_path)), log=msgs.append)
    assert sp.ops == ("skip_connect", "max_pool_3x3", "sep_conv_3x3", "conv_7x1_1x7")
    assert "configs/genotypes/cifar10_10way.json" in msgs[0]
    assert sp.seeds[0].normal.nodes == 4 and len(sp.seeds[0].normal.edges) == 6
    g = Genotype(authors_cell_structure().with_ops(["none"] * 5 + ["avg_pool_3x3"]))
    Bank(str(tmp_path)).save_genotype("cifar10_10way", g.to_dict(), {})
    sp2 = resolve_space("from:task7", bank=Bank(str(tmp_path)))
    assert sp2.ops == ("none", "avg_pool_3x3") and sp2.seeds[0] == g


def test_from_closest_union_skips_tasks_without_genotype(tmp_path):
    bank = Bank(str(tmp_path))
    g1 = Genotype(authors_cell_structure().with_ops(["none"] * 6))
    g2 = Genotype(authors_cell_structure(3).with_ops(["sep_conv_3x3", "skip_connect", "max_pool_3x3"]))
    bank.save_genotype("mnist_138", g1.to_dict(), {})
    bank.save_genotype("fashion_138", g2.to_dict(), {})
    ranked = lambda t: ["mnist_4class", "mnist_138", "fashion_138"]  # noqa: E731
    sp = resolve_space("from:closest:2", bank=bank, target="mnist_10way", closest_fn=ranked, log=lambda m: None)
    assert sp.ops == ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3")
    assert len(sp.structures) == 2 and sp.seeds == (g1, g2)
    sp1 = resolve_space("from:closest", bank=bank, target="mnist_10way", closest_fn=ranked, log=lambda m: None)
    assert sp1.seeds == (g1,)


@pytest.mark.parametrize("spec,match", [
    ("ops:sep_conv_3x3,conv_9x9", "unknown op 'conv_9x9'"),
    ("ops:", "op set is empty"),
    ("ops:,,", "op set is empty"),
    ("from:no_such_task", "unknown task 'no_such_task'"),
    ("from:mnist_digit6", "bin/fuse --task mnist_digit6 --space standard"),
    ("from:closest:0", "from:closest:K"),
    ("bogus", "unknown --space 'bogus'"),
])
def test_bad_spaces(tmp_path, spec, match):
    with pytest.raises(UserError, match=match.replace("(", r"\(")) as e:
        resolve_space(spec, bank=Bank(str(tmp_path)), target="mnist_10way", closest_fn=lambda t: [])
    assert "\n" not in str(e.value)


def test_space_json_file(tmp_path):
    p = tmp_path / "space.json"
    p.write_text(json.dumps({"ops": ["identity", "max_pool_3x3"], "structures": [
        {"nodes": 3, "edges": [[0, 1], [0, 2], [1, 2]], "concat": [1, 2]}]}))
    sp = resolve_space(str(p))
    assert sp.ops == ("skip_connect", "max_pool_3x3") and sp.structures[0].concat == (1, 2)
    p.write_text(json.dumps({"ops": [], "structures": []}))
    with pytest.raises(UserError, match="empty"):
        resolve_space(str(p))
    p.write_text(json.dumps({"ops": ["none"], "structures": [{"nodes": 3, "edges": [[1, 0]]}]}))
    with pytest.raises(UserError, match="backward edge"):
        resolve_space(str(p))


@pytest.mark.parametrize("argv,match", [
    (["--task", "mnist_10way", "--space", "ops:conv_9x9"], "unknown op"),
    (["--task", "mnist_10way", "--space", "from:mnist_digit6"], "no genotype"),
    (["--task", "nope", "--space", "standard"], "unknown task"),
    (["--task", "mnist_10way", "--candidates", "1"], "fuse.candidates: must be >= 2"),
    (["--task", "mnist_10way", "--compare", ","], "--compare is empty"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, argv, match):
    from tanas_jax.cli.fuse import main

    code = main(argv + ["--bank", str(tmp_path / "bank")])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err


def test_union_space_from_genotypes():
    g = Genotype(authors_cell_structure().with_ops(["none"] * 6),
                 Genotype(authors_cell_structure(3).with_ops(["skip_connect"] * 3)).normal)
    sp = space_from_genotypes("x", [g])
    assert len(sp.structures) == 2 and sp.ops == ("none", "skip_connect")
