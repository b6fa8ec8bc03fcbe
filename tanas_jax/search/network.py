"""Cells and skeleton networks built from genotypes.

Public API (stable; DARTS/TETLO reuse it)::

    Skeleton(C, cells, reductions, stem, stem_multiplier, head)   # frozen dataclass
    SKELETONS = {'tiny', 'small', 'darts'};  get_skeleton(name_or_dict)
    CellModule(structure, C, reduction, ops=None, edge_factory=None)
    CellNetwork(genotype, skeleton, num_classes)    # __call__(x, train) -> logits
    init_network(genotype, skeleton, num_classes, rng, input_shape) -> variables
    make_apply(genotype, skeleton, num_classes) -> apply(variables, x) -> logits (eval)
    param_count(variables_or_params_or_shapes) -> int
    seed_sequence(int | key | uint32 array) -> np.random.SeedSequence
    network_shapes(genotype, skeleton, num_classes, input_shape) -> ShapeDtypeStruct tree (cached)

    # every genotype of given cell structures in one network, each edge's op chosen at run time (FUSE)
    SwitchEdge(ops, C, stride);  SwitchNetwork(normal, reduce, ops, skeleton, num_classes)
        # __call__(x, choice, train), choice = op_choice(genotype, ops, skeleton): (cells, edges) int32
    op_set(genotypes, ops=None) -> ops in canonical order;  cell_structures(genotype) -> (normal, reduce)
    switch_shapes(genotype, ops, skeleton, classes, shape)
    to_switch_variables(variables, genotype, ops, skeleton, shapes) / from_switch_variables(...)

**Skeleton**: ``stem -> cells[0..N-1] -> head``.

* ``stem`` (optional): 3x3 conv -> BN to ``C * stem_multiplier`` channels.
* cell ``k`` works at ``C_k`` channels: ``C`` doubled at every reduction
  position up to and including ``k``; a reduction cell uses the genotype's
  ``reduce`` cell and stride 2 on the edges leaving its input node.  A cell's
  input is brought to ``C_k`` channels by ReLU-1x1conv-BN (only when the
  channel count differs, so the authors' 3-channel cell sees raw RGB).
* ``head``: ``'flatten'`` (authors: ReLU -> flatten -> linear) or ``'gap'``
  (ReLU -> global average pool -> linear).

Presets: ``tiny`` = the authors' skeleton (3 channels, one cell, no stem,
flatten + linear head); ``small`` (8 channels, 3 cells, reductions at 1 and 2,
stem, GAP head) for CPU runs; ``darts`` (16 channels, 8 cells, reductions at
2 and 5, stem x3, GAP head).

**Per-edge ops**: :class:`CellModule` builds each edge with
``edge_factory(index, src, dst, C, stride, name) -> Module`` (default: the
genotype's op via :func:`tanas_jax.search.ops.make_op`); a DARTS mixed op
plugs in here.  Every edge module is called as ``module(x, train)``.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tanas_jax.errors import UserError
from tanas_jax.layers import Conv
from tanas_jax.search.genotype import OPS, Cell, CellStructure, Genotype, canonical_op
from tanas_jax.search.ops import ReLUConvBN, make_op


@dataclasses.dataclass(frozen=True)
class Skeleton:
    """How cells are stacked; see module docstring."""

    C: int = 3
    cells: int = 1
    reductions: tuple[int, ...] = ()
    stem: bool = False
    stem_multiplier: int = 1
    head: str = "flatten"

    def __post_init__(self):
        object.__setattr__(self, "reductions", tuple(int(r) for r in self.reductions))
        if self.C < 1:
            raise UserError(f"skeleton.C: must be >= 1, got {self.C}")
        if self.cells < 1:
            raise UserError(f"skeleton.cells: must be >= 1, got {self.cells}")
        for r in self.reductions:
            if not 0 <= r < self.cells:
                raise UserError(f"skeleton.reductions: position {r} outside 0..{self.cells - 1}")
        if self.head not in ("flatten", "gap"):
            raise UserError(f"skeleton.head: {self.head!r}; valid: flatten, gap")

    def cell_channels(self) -> list[int]:
        out, c = [], self.C
        for k in range(self.cells):
            if k in self.reductions:
                c *= 2
            out.append(c)
        return out

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["reductions"] = list(self.reductions)
        return d


SKELETONS = {
    "tiny": Skeleton(C=3, cells=1, reductions=(), stem=False, head="flatten"),
    "small": Skeleton(C=8, cells=3, reductions=(1, 2), stem=True, head="gap"),
    "darts": Skeleton(C=16, cells=8, reductions=(2, 5), stem=True, stem_multiplier=3, head="gap"),
}


def stem(sk: Skeleton, x, train: bool):
    """The skeleton's stem (3x3 conv + BatchNorm, submodules ``stem``/``stem_bn`` of the calling
    compact module), or ``x`` unchanged when the skeleton has none."""
    if not sk.stem:
        return x
    x = Conv(sk.C * sk.stem_multiplier, (3, 3), use_bias=False, name="stem")(x)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="stem_bn")(x)


def get_skeleton(spec: Any) -> Skeleton:
    """A preset name, a dict of Skeleton fields (optionally with 'preset'), its hashable form (a tuple of
    (field, value) pairs, as the frozen search configs store it), or a Skeleton."""
    if isinstance(spec, Skeleton):
        return spec
    if isinstance(spec, tuple):
        spec = dict(spec)
    if isinstance(spec, str):
        if spec not in SKELETONS:
            raise UserError(f"unknown skeleton {spec!r}; valid: {', '.join(SKELETONS)}")
        return SKELETONS[spec]
    if hasattr(spec, "to_dict"):  # ml_collections.ConfigDict
        spec = spec.to_dict()
    if isinstance(spec, dict):
        d = dict(spec)
        base = get_skeleton(d.pop("preset")) if "preset" in d else Skeleton()
        bad = set(d) - {f.name for f in dataclasses.fields(Skeleton)}
        if bad:
            raise UserError(f"skeleton: unknown field(s) {sorted(bad)}")
        return dataclasses.replace(base, **d)
    raise UserError(f"skeleton: expected a preset name or a dict, got {spec!r}")


def _genotype_edge_factory(ops: Sequence[str]):
    def factory(i, src, dst, C, stride, name):
        return make_op(ops[i], C, stride, name=name)
    return factory


class CellModule(nn.Module):
    """One cell: node 0 = input; nodes sum incoming edges; output per concat."""

    structure: CellStructure
    C: int
    reduction: bool = False
    ops: tuple[str, ...] | None = None
    edge_factory: Callable | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        st = self.structure
        factory = self.edge_factory or _genotype_edge_factory(self.ops)
        if x.shape[-1] != self.C:
            x = ReLUConvBN(self.C, name="pre")(x, train)
        states: dict[int, jax.Array] = {0: x}
        last = st.nodes - 1
        last_parts = []
        # edges are validated src < dst: visiting nodes in order is topological
        for node in range(1, st.nodes):
            parts = []
            for i, (s, d) in enumerate(st.pairs):
                if d != node:
                    continue
                stride = 2 if (self.reduction and s == 0) else 1
                op = factory(i, s, d, self.C, stride, f"edge{i}_{s}_{d}")
                parts.append(op(states[s], train))
            if node == last and st.concat == "edges":
                last_parts = parts
            else:
                states[node] = sum(parts[1:], parts[0])
        if st.concat == "edges":
            return jnp.concatenate(last_parts, axis=-1)
        return jnp.concatenate([states[n] for n in st.concat], axis=-1)


class CellNetwork(nn.Module):
    """stem -> cells -> head, from a genotype and a skeleton."""

    genotype: Genotype
    skeleton: Skeleton
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        sk = self.skeleton
        x = stem(sk, x, train)
        for k, ck in enumerate(sk.cell_channels()):
            red = k in sk.reductions
            cell: Cell = self.genotype.reduce_cell if red else self.genotype.normal
            x = CellModule(cell.structure, ck, red, ops=cell.ops, name=f"cell{k}")(x, train)
        x = nn.relu(x)
        x = x.reshape(x.shape[0], -1) if sk.head == "flatten" else x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def build_network(genotype: Genotype, skeleton: Skeleton | str, num_classes: int) -> CellNetwork:
    return CellNetwork(genotype, get_skeleton(skeleton), int(num_classes))


def seed_sequence(rng) -> np.random.SeedSequence:
    """The numpy SeedSequence of an int seed, a JAX key or a uint32 array (the initialisation law of
    cell networks and the supernet; re-exported by :mod:`tanas_jax.search.runtime`)."""
    if isinstance(rng, (int, np.integer)):
        return np.random.SeedSequence(int(rng))
    data = np.asarray(jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
                      else rng).astype(np.uint32).ravel()
    return np.random.SeedSequence([int(v) for v in data])


def init_network(genotype: Genotype, skeleton, num_classes: int, rng, input_shape) -> dict:
    """Variables ``{'params', 'batch_stats'}`` for one (H, W, C) input shape.

    Values follow flax's defaults for our layers (kernels: LeCun normal,
    truncated at 2 std, fan-in = prod(shape[:-1]); biases 0; BN mean 0, var 1)
    but are drawn with numpy from ``rng`` (an int seed or a JAX key): the
    shapes come from ``jax.eval_shape`` (tracing only), so initialising a new
    candidate compiles nothing (``jit(net.init)`` took ~10 s for the 'small'
    skeleton on 2 CPU cores, more than its training step).
    """
    shapes = network_shapes(genotype, skeleton, num_classes, input_shape)
    gen = np.random.Generator(np.random.PCG64(seed_sequence(rng)))
    return init_from_shapes(shapes, gen)


def network_shapes(genotype: Genotype, skeleton, num_classes: int, input_shape) -> dict:
    """The ``ShapeDtypeStruct`` tree of a :class:`CellNetwork`'s variables (tracing only; cached)."""
    return _network_shapes(genotype, get_skeleton(skeleton), int(num_classes), tuple(input_shape))


@functools.lru_cache(maxsize=256)
def _network_shapes(genotype: Genotype, sk: Skeleton, num_classes: int, input_shape: tuple) -> dict:
    net = build_network(genotype, sk, num_classes)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return jax.eval_shape(lambda x: net.init(jax.random.PRNGKey(0), x, train=False), x)


def init_from_shapes(shapes, gen: np.random.Generator) -> dict:
    """flax-default initial values for a tree of ``ShapeDtypeStruct`` drawn with numpy ``gen``:
    kernels truncated-normal(2σ) lecun, BatchNorm ``var`` ones, everything else zeros."""

    def leaf(path, sd):
        name = getattr(path[-1], "key", str(path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(sd.shape[:-1]))
            z = gen.standard_normal(sd.shape)
            bad = np.abs(z) > 2
            while bad.any():
                z[bad] = gen.standard_normal(int(bad.sum()))
                bad = np.abs(z) > 2
            # flax truncated_normal rescales by the std of the truncated law
            std = np.sqrt(1.0 / fan_in) / 0.87962566103423978
            return jnp.asarray((z * std).astype(np.float32))
        if name == "var":
            return jnp.ones(sd.shape, sd.dtype)
        return jnp.zeros(sd.shape, sd.dtype)

    return dict(jax.tree_util.tree_map_with_path(leaf, dict(shapes)))


def make_apply(genotype: Genotype, skeleton, num_classes: int):
    """``apply(variables, x) -> logits`` in eval mode (running BN statistics)."""
    net = build_network(genotype, skeleton, num_classes)

    @jax.jit
    def apply(variables, x):
        return net.apply(variables, x, train=False)

    return apply


def param_count(tree) -> int:
    """Number of trainable parameters (``tree['params']`` if given variables)."""
    if isinstance(tree, dict) and "params" in tree:
        tree = tree["params"]
    return int(sum(int(np.prod(getattr(leaf, "shape", np.shape(leaf)))) for leaf in jax.tree_util.tree_leaves(tree)))


# --- one network for every genotype of a structure: the op of each edge chosen at run time ----------
class SwitchEdge(nn.Module):
    """An edge holding every op of ``ops`` (submodule ``branches_j`` is ``ops[j]``, built by
    :func:`~tanas_jax.search.ops.make_op` exactly as a genotype's edge); ``__call__(x, index, train)`` runs
    op ``index`` only (``lax.switch``, lifted by flax): the other ops' parameters get zero gradients and
    their BatchNorm statistics stay as they are.  Each branch is rematerialised in the backward pass
    (``nn.checkpoint``): otherwise the switch's backward carries every branch's residuals, zero-filled."""

    ops: tuple[str, ...]
    C: int
    stride: int

    def setup(self):
        self.branches = [make_op(o, self.C, self.stride) for o in self.ops]

    def __call__(self, x, index, train: bool = False):
        fns = [nn.checkpoint(lambda mdl, x, j=j: mdl.branches[j](x, train)) for j in range(len(self.ops))]
        if self.is_initializing():
            for f in fns:   # every branch makes its variables
                f(self, x)
        return nn.switch(index, fns, self, x)


class SwitchNetwork(nn.Module):
    """:class:`CellNetwork` of every genotype whose normal / reduce cells have the structures ``normal`` /
    ``reduce``: ``__call__(x, choice, train)`` with ``choice`` (cells, edges) int, row k the indices into
    ``ops`` of the ops of the cell at position k (:func:`op_choice`).  Same submodule names as
    :class:`CellNetwork`; each edge's op ``o`` lives under ``edge.../branches_{ops.index(o)}``."""

    normal: CellStructure
    reduce: CellStructure
    ops: tuple[str, ...]
    skeleton: Skeleton
    num_classes: int

    @nn.compact
    def __call__(self, x, choice, train: bool = False):
        sk = self.skeleton
        x = stem(sk, x, train)
        for k, ck in enumerate(sk.cell_channels()):
            red = k in sk.reductions

            def factory(i, src, dst, C, stride, name, row=choice[k]):
                edge = SwitchEdge(self.ops, C, stride, name=name)
                return lambda x, train: edge(x, row[i], train)   # noqa: B023 (row is bound per cell)

            x = CellModule(self.reduce if red else self.normal, ck, red, edge_factory=factory,
                           name=f"cell{k}")(x, train)
        x = nn.relu(x)
        x = x.reshape(x.shape[0], -1) if sk.head == "flatten" else x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def op_set(genotypes: Sequence[Genotype], ops: Sequence[str] | None = None) -> tuple[str, ...]:
    """``ops`` (default: the genotypes' own ops) in :data:`~tanas_jax.search.genotype.OPS` order: the ops a
    :class:`SwitchNetwork` edge switches between."""
    used = {o for g in genotypes for o in g.ops}
    want = used if ops is None else {canonical_op(o) for o in ops}
    if not used <= want:
        raise UserError(f"candidate ops {sorted(used - want)} are outside the op set {sorted(want)}")
    return tuple(o for o in OPS if o in want)


def cell_structures(genotype: Genotype) -> tuple[CellStructure, CellStructure]:
    """(normal, reduce) structures of a genotype: what a :class:`SwitchNetwork` fixes at compile time."""
    return genotype.normal.structure, genotype.reduce_cell.structure


def _position_cells(genotype: Genotype, sk: Skeleton) -> list[Cell]:
    return [genotype.reduce_cell if k in sk.reductions else genotype.normal for k in range(sk.cells)]


def op_choice(genotype: Genotype, ops: Sequence[str], skeleton) -> np.ndarray:
    """(cells, max edges) int32: row k holds ``ops.index`` of each edge op of the cell at position k."""
    cells = _position_cells(genotype, get_skeleton(skeleton))
    width = max(len(c.ops) for c in cells)
    out = np.zeros((len(cells), width), np.int32)
    for k, cell in enumerate(cells):
        out[k, :len(cell.ops)] = [ops.index(o) for o in cell.ops]
    return out


def switch_shapes(genotype: Genotype, ops: Sequence[str], skeleton, num_classes: int, input_shape) -> dict:
    """The ``ShapeDtypeStruct`` tree of the :class:`SwitchNetwork` variables of ``genotype``'s structures."""
    sk = get_skeleton(skeleton)
    net = SwitchNetwork(*cell_structures(genotype), tuple(ops), sk, int(num_classes))
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    choice = jax.ShapeDtypeStruct(op_choice(genotype, ops, sk).shape, jnp.int32)
    return jax.eval_shape(lambda x, c: net.init(jax.random.PRNGKey(0), x, c, train=False), x, choice)


def _switch_path(path: tuple, cells: list[Cell], ops: Sequence[str]) -> tuple:
    """The :class:`SwitchNetwork` path of a :class:`CellNetwork` variable path (collection first)."""
    if len(path) > 3 and path[1].startswith("cell") and path[2].startswith("edge"):
        edge = int(path[2][4:].split("_")[0])
        op = cells[int(path[1][4:])].ops[edge]
        return (*path[:3], f"branches_{list(ops).index(op)}", *path[3:])
    return path


def to_switch_variables(variables: dict, genotype: Genotype, ops: Sequence[str], skeleton, shapes) -> dict:
    """``genotype``'s :class:`CellNetwork` variables placed in a :class:`SwitchNetwork` tree of ``shapes``;
    the ops the genotype does not use hold their flax-default constants (kernels 0, BatchNorm var 1):
    they are never run."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    cells = _position_cells(genotype, get_skeleton(skeleton))
    out = {p: (jnp.ones if p[-1] == "var" else jnp.zeros)(sd.shape, sd.dtype)
           for p, sd in flatten_dict(dict(shapes)).items()}
    for p, v in flatten_dict(dict(variables)).items():
        q = _switch_path(p, cells, ops)
        if q not in out or out[q].shape != v.shape:
            raise AssertionError(f"switch network has no slot {q} of shape {v.shape}")
        out[q] = jnp.asarray(v)
    return unflatten_dict(out)


def from_switch_variables(variables: dict, genotype: Genotype, ops: Sequence[str], skeleton,
                          shapes) -> dict:
    """The inverse of :func:`to_switch_variables`: ``genotype``'s :class:`CellNetwork` variables (tree of
    ``shapes``, e.g. from :func:`init_network`'s ``jax.eval_shape``) read out of a switch tree."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    cells = _position_cells(genotype, get_skeleton(skeleton))
    flat = flatten_dict(dict(variables))
    return unflatten_dict({p: flat[_switch_path(p, cells, ops)] for p in flatten_dict(dict(shapes))})
