"""Genotype spec: validation, JSON round trip, ops shapes, cell networks."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

from tanas_jax.search import ops as ops_mod
from tanas_jax.search.genotype import (
    OP_ALIASES,
    OPS,
    Cell,
    Genotype,
    GenotypeError,
    authors_cell_structure,
    check_op_set,
)
from tanas_jax.search.network import SKELETONS, Skeleton, get_skeleton, init_network, make_apply, param_count

OP_NAMES = list(OPS) + list(OP_ALIASES)


@st.composite
def cell_dicts(draw):
    nodes = draw(st.integers(2, 6))
    edges = []
    for d in range(1, nodes):
        srcs = draw(st.sets(st.integers(0, d - 1), min_size=1))
        for s in sorted(srcs):
            edges.append([s, d, draw(st.sampled_from(OP_NAMES))])
    edges = draw(st.permutations(edges))
    if draw(st.booleans()):
        concat = "edges"
    else:
        concat = draw(st.lists(st.integers(1, nodes - 1), min_size=1, unique=True))
    return {"nodes": nodes, "edges": [list(e) for e in edges], "concat": concat}


@st.composite
def genotype_dicts(draw):
    d = {"format": "tanas-genotype/1", "normal": draw(cell_dicts())}
    d["reduce"] = draw(st.one_of(st.none(), cell_dicts()))
    return d


@settings(max_examples=150, deadline=None)
@given(genotype_dicts())
def test_json_round_trip(d):
    g = Genotype.from_dict(d)
    assert Genotype.from_dict(g.to_dict()) == g
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_json(json.dumps(json.loads(g.to_json()))).key() == g.key()
    # aliases are canonicalised
    assert all(o in OPS for _, _, o in g.normal.edges)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(genotype_dicts(), st.sampled_from(["unknown_op", "backward", "out_of_range", "nodes_mismatch",
                                          "no_input", "bad_concat", "unknown_field", "missing"]),
       st.data())
def test_invalid_specs_name_the_field(d, kind, data):
    d = json.loads(json.dumps(d))
    cell = d["normal"]
    i = data.draw(st.integers(0, len(cell["edges"]) - 1))
    expect = "genotype.normal"
    if kind == "unknown_op":
        cell["edges"][i][2] = "conv_9x9"
        expect = f"genotype.normal.edges[{i}]: unknown op 'conv_9x9'"
    elif kind == "backward":
        s, t, o = cell["edges"][i]
        cell["edges"][i] = [t, s, o]
        expect = "genotype.normal.edges"
    elif kind == "out_of_range":
        cell["edges"][i][1] = cell["nodes"] + 1
        expect = f"genotype.normal.edges[{i}]"
    elif kind == "nodes_mismatch":
        cell["nodes"] += 1  # the new last node has no incoming edge
        expect = "node count mismatch"
    elif kind == "no_input":
        if cell["nodes"] < 3:
            cell["edges"] = []
            expect = "genotype.normal.edges"
        else:
            # drop every edge into node 1
            cell["edges"] = [e for e in cell["edges"] if e[1] != 1]
            expect = "node 1 has no incoming edge"
    elif kind == "bad_concat":
        cell["concat"] = [0]
        expect = "genotype.normal.concat"
    elif kind == "unknown_field":
        cell["colour"] = "red"
        expect = "colour"
    elif kind == "missing":
        del cell["nodes"]
        expect = "genotype.normal.nodes: missing"
    with pytest.raises(GenotypeError) as err:
        Genotype.from_dict(d)
    msg = str(err.value)
    assert expect in msg, msg
    assert "\n" not in msg


def test_error_messages_examples():
    with pytest.raises(GenotypeError, match=r"reduce\.edges\[0\]: backward edge 1->0"):
        Genotype.from_dict({"normal": {"nodes": 2, "edges": [[0, 1, "none"]]},
                            "reduce": {"nodes": 2, "edges": [[1, 0, "none"]]}})
    with pytest.raises(GenotypeError, match="op set is empty"):
        check_op_set([])
    with pytest.raises(GenotypeError, match="format"):
        Genotype.from_dict({"format": "other/2", "normal": {"nodes": 2, "edges": [[0, 1, "none"]]}})
    with pytest.raises(GenotypeError, match="not valid JSON"):
        Genotype.from_json("{")
    assert check_op_set(["identity", "sep_conv_3x3", "skip_connect"]) == ("skip_connect", "sep_conv_3x3")


def test_authors_cell():
    stc = authors_cell_structure(4)
    assert stc.pairs == ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
    c = stc.with_ops(["none"] * 6)
    assert c.multiplier == 3
    assert Cell(4, c.edges, (1, 2, 3)).multiplier == 3


X = jnp.asarray(np.random.RandomState(0).randn(2, 8, 8, 4).astype(np.float32))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("stride", [1, 2])
def test_op_shapes(op, stride):
    m = ops_mod.make_op(op, 4, stride)
    v = m.init(jax.random.PRNGKey(0), X, False)
    for train in (False, True):
        y = m.apply(v, X, train, mutable=["batch_stats"])[0] if train else m.apply(v, X, False)
        assert y.shape == ((2, 8, 8, 4) if stride == 1 else (2, 4, 4, 4)), (op, stride, y.shape)
        assert np.all(np.isfinite(np.asarray(y)))


def test_pools_match_reduce_window():
    for stride in (1, 2):
        pad = ((0, 0), (1, 1), (1, 1), (0, 0))
        ref = lax.reduce_window(X, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad)
        np.testing.assert_allclose(ops_mod.max_pool_3x3(X, stride), ref, rtol=0, atol=0)
        s = lax.reduce_window(X, 0.0, lax.add, (1, 3, 3, 1), (1, stride, stride, 1), pad)
        n = lax.reduce_window(jnp.ones_like(X), 0.0, lax.add, (1, 3, 3, 1), (1, stride, stride, 1), pad)
        np.testing.assert_allclose(ops_mod.avg_pool_3x3(X, stride), s / n, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k,stride,dil", [(3, 1, 1), (5, 2, 1), (3, 1, 2), (5, 2, 2)])
def test_depthwise_matches_grouped_conv(k, stride, dil):
    m = ops_mod.DepthwiseConv(k, stride, dil)
    v = m.init(jax.random.PRNGKey(1), X)
    pad = (k - 1) * dil // 2
    ref = lax.conv_general_dilated(X, v["params"]["kernel"], (stride, stride), ((pad, pad), (pad, pad)),
                                   rhs_dilation=(dil, dil), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=4)
    np.testing.assert_allclose(m.apply(v, X), ref, rtol=1e-5, atol=1e-5)


def test_unknown_op_in_factory():
    with pytest.raises(GenotypeError, match="unknown op"):
        ops_mod.make_op("conv_9x9", 4, 1)


@pytest.mark.parametrize("skel", ["tiny", Skeleton(C=4, cells=2, reductions=(1,), stem=True, head="gap")])
def test_networks_build_and_count(skel):
    g = Genotype(authors_cell_structure().with_ops(
        ["sep_conv_3x3", "skip_connect", "conv_7x1_1x7", "max_pool_3x3", "dil_conv_3x3", "avg_pool_3x3"]))
    v = init_network(g, skel, 5, jax.random.PRNGKey(0), (8, 8, 3))
    y = make_apply(g, skel, 5)(v, jnp.ones((3, 8, 8, 3)))
    assert y.shape == (3, 5)
    assert param_count(v) > 0
    assert get_skeleton("small").cell_channels() == [8, 16, 32]
    if skel != "tiny":
        # the reduction cell halves the map and doubles the channels: its edges from the
        # input node are stride-2 ops (FactorizedReduce for skip_connect)
        assert "conv_1" in v["params"]["cell1"]["edge1_0_2"]


def test_tiny_skeleton_is_authors():
    sk = SKELETONS["tiny"]
    assert (sk.C, sk.cells, sk.stem, sk.head) == (3, 1, False, "flatten")
    g = Genotype(authors_cell_structure().with_ops(["none"] * 6))
    v = init_network(g, sk, 10, jax.random.PRNGKey(0), (8, 8, 3))
    # only the linear head: 3 concatenated edges * 3 channels * 8 * 8 -> 10
    assert param_count(v) == 9 * 64 * 10 + 10
    assert get_skeleton({"preset": "tiny", "C": 4}).C == 4
