"""Cell genotypes: spec, validation, JSON round trip.

A **cell** is a DAG over ``nodes`` nodes numbered ``0 .. nodes-1``:

* node 0 is the cell input (the previous cell's output, brought to ``C``
  channels by a 1x1 ReLU-conv-BN when its channel count differs).  We use
  *one* input node, as the authors' FUSE cell does (``docs/authors_code.md``,
  "FUSE"), not DARTS' two; with one input a cell is a pure function of the
  previous cell and the skeleton stays a simple chain.
* each edge ``(src, dst, op)`` with ``src < dst`` applies one operation
  (:mod:`tanas_jax.search.ops`) to node ``src``'s output;
* a node sums its incoming edges;
* the cell output is, per ``concat``:

  - ``"edges"`` (the authors' cell): the *last* node does not sum, its incoming
    edges' outputs are concatenated on the channel axis.  The authors' 4-node,
    6-edge cell is ``edges=[(0,1),(0,2),(1,2),(0,3),(1,3),(2,3)]`` with
    output ``concat(op(0->3), op(1->3), op(2->3))`` (3*C channels);
  - a list of node indices (DARTS): those nodes' outputs are concatenated.

A :class:`Genotype` holds a ``normal`` cell and an optional ``reduce`` cell
(used at the skeleton's reduction positions; defaults to the normal cell).  In
a reduction cell every edge leaving node 0 has stride 2 (DARTS semantics).

JSON form (``Genotype.to_dict`` / ``from_dict``; ``format`` is checked)::

    {"format": "tanas-genotype/1",
     "normal": {"nodes": 4,
                "edges": [[0, 1, "sep_conv_3x3"], [0, 2, "skip_connect"], ...],
                "concat": "edges"},
     "reduce": null}

Validation raises :class:`GenotypeError` (a ``UserError``) whose message names
the bad field, e.g. ``genotype.normal.edges[3]: unknown op 'conv_9x9'``.
``identity`` is accepted as an alias of ``skip_connect`` and ``zero`` of
``none`` (the papers' names).

A cell *structure* (``CellStructure``: nodes, edge pairs, concat) is a cell
without its ops; search spaces combine structures with op sets
(:mod:`tanas_jax.search.spaces`).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

from tanas_jax.errors import UserError

FORMAT = "tanas-genotype/1"

#: Operations with DARTS semantics, in canonical order.
OPS: tuple[str, ...] = (
    "none",
    "skip_connect",
    "max_pool_3x3",
    "avg_pool_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "conv_7x1_1x7",
)

#: Names from the papers mapped to canonical op names.
OP_ALIASES = {"identity": "skip_connect", "zero": "none", "skip": "skip_connect"}


class GenotypeError(UserError):
    """An invalid genotype or cell spec; the message names the bad field."""


def canonical_op(name: str, field: str = "op") -> str:
    """Canonical op name for ``name`` (aliases resolved) or a GenotypeError."""
    if not isinstance(name, str):
        raise GenotypeError(f"{field}: op must be a string, got {name!r}")
    n = OP_ALIASES.get(name, name)
    if n not in OPS:
        from tanas_jax.errors import did_you_mean

        raise GenotypeError(f"{field}: unknown op {name!r}; {did_you_mean(name, list(OPS) + list(OP_ALIASES))}")
    return n


def _check_structure(nodes, pairs: Sequence[tuple[int, int]], concat, field: str):
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 2:
        raise GenotypeError(f"{field}.nodes: must be an integer >= 2, got {nodes!r}")
    _check_edges(nodes, pairs, field)
    return _check_concat(nodes, concat, field)


def _check_edges(nodes: int, pairs: Sequence[tuple[int, int]], field: str) -> None:
    if len(pairs) == 0:
        raise GenotypeError(f"{field}.edges: a cell needs at least one edge")
    seen = set()
    for i, (s, d) in enumerate(pairs):
        f = f"{field}.edges[{i}]"
        for v in (s, d):
            if isinstance(v, bool) or not isinstance(v, int):
                raise GenotypeError(f"{f}: node ids must be integers, got {(s, d)!r}")
        if not (0 <= s < nodes and 0 <= d < nodes):
            raise GenotypeError(
                f"{f}: edge {s}->{d} names a node outside 0..{nodes - 1} "
                f"(node count mismatch: nodes={nodes})")
        if s >= d:
            raise GenotypeError(f"{f}: backward edge {s}->{d}; edges must go from a lower to a higher node")
        if (s, d) in seen:
            raise GenotypeError(f"{f}: duplicate edge {s}->{d}")
        seen.add((s, d))
    has_in = {d for _, d in pairs}
    for n in range(1, nodes):
        if n not in has_in:
            raise GenotypeError(f"{field}.edges: node {n} has no incoming edge (node count mismatch: nodes={nodes})")


def _check_concat(nodes: int, concat, field: str):
    if concat == "edges":
        return "edges"
    if isinstance(concat, str) or not isinstance(concat, (list, tuple)) or len(concat) == 0:
        raise GenotypeError(f"{field}.concat: must be 'edges' or a non-empty list of node ids, got {concat!r}")
    out = []
    for n in concat:
        if isinstance(n, bool) or not isinstance(n, int) or not (1 <= n < nodes):
            raise GenotypeError(f"{field}.concat: node {n!r} is not an intermediate node 1..{nodes - 1}")
        out.append(n)
    if len(set(out)) != len(out):
        raise GenotypeError(f"{field}.concat: repeated node in {concat!r}")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class CellStructure:
    """A cell without ops: node count, edge pairs, output concat rule."""

    nodes: int
    pairs: tuple[tuple[int, int], ...]
    concat: str | tuple[int, ...] = "edges"

    def __post_init__(self):
        pairs = tuple((int(s), int(d)) if not isinstance(s, bool) else (s, d) for s, d in self.pairs)
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "concat", _check_structure(self.nodes, pairs, self.concat, "cell"))

    def with_ops(self, ops: Sequence[str]) -> Cell:
        if len(ops) != len(self.pairs):
            raise GenotypeError(f"cell.edges: {len(ops)} ops for {len(self.pairs)} edges")
        return Cell(self.nodes, tuple((s, d, o) for (s, d), o in zip(self.pairs, ops)), self.concat)

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "edges": [list(p) for p in self.pairs],
                "concat": self.concat if self.concat == "edges" else list(self.concat)}


@dataclasses.dataclass(frozen=True)
class Cell:
    """A cell: ``edges`` is a tuple of ``(src, dst, op)``; see module docstring."""

    nodes: int
    edges: tuple[tuple[int, int, str], ...]
    concat: str | tuple[int, ...] = "edges"

    def __post_init__(self):
        edges = tuple(tuple(e) for e in self.edges)
        object.__setattr__(self, "edges", edges)
        self.validate("cell")

    def validate(self, field: str = "cell") -> None:
        edges = []
        for i, e in enumerate(self.edges):
            if len(e) != 3:
                raise GenotypeError(f"{field}.edges[{i}]: an edge is [src, dst, op], got {list(e)!r}")
            edges.append((e[0], e[1], canonical_op(e[2], f"{field}.edges[{i}]")))
        concat = _check_structure(self.nodes, [(s, d) for s, d, _ in edges], self.concat, field)
        object.__setattr__(self, "edges", tuple(edges))
        object.__setattr__(self, "concat", concat)

    @property
    def structure(self) -> CellStructure:
        return CellStructure(self.nodes, tuple((s, d) for s, d, _ in self.edges), self.concat)

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(o for _, _, o in self.edges)

    @property
    def multiplier(self) -> int:
        """Output channels / C."""
        if self.concat == "edges":
            last = self.nodes - 1
            return sum(1 for _, d, _ in self.edges if d == last)
        return len(self.concat)

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "edges": [[s, d, o] for s, d, o in self.edges],
                "concat": self.concat if self.concat == "edges" else list(self.concat)}

    @classmethod
    def from_dict(cls, d: Any, field: str = "cell") -> Cell:
        if not isinstance(d, dict):
            raise GenotypeError(f"{field}: expected an object with nodes/edges/concat, got {type(d).__name__}")
        unknown = set(d) - {"nodes", "edges", "concat"}
        if unknown:
            raise GenotypeError(f"{field}: unknown field(s) {sorted(unknown)}; valid: nodes, edges, concat")
        for k in ("nodes", "edges"):
            if k not in d:
                raise GenotypeError(f"{field}.{k}: missing")
        edges = d["edges"]
        if not isinstance(edges, (list, tuple)):
            raise GenotypeError(f"{field}.edges: expected a list of [src, dst, op]")
        for i, e in enumerate(edges):
            if not isinstance(e, (list, tuple)) or len(e) != 3:
                raise GenotypeError(f"{field}.edges[{i}]: an edge is [src, dst, op], got {e!r}")
        concat = d.get("concat", "edges")
        if isinstance(concat, list):
            concat = tuple(concat)
        try:
            return cls(d["nodes"], tuple(tuple(e) for e in edges), concat)
        except GenotypeError as err:
            # re-prefix the field path
            msg = str(err)
            raise GenotypeError(field + msg[len("cell"):] if msg.startswith("cell") else msg) from None


@dataclasses.dataclass(frozen=True)
class Genotype:
    """Normal cell + optional reduction cell (None: reuse the normal cell)."""

    normal: Cell
    reduce: Cell | None = None

    @property
    def reduce_cell(self) -> Cell:
        return self.reduce if self.reduce is not None else self.normal

    @property
    def ops(self) -> tuple[str, ...]:
        """Sorted set of ops used (both cells)."""
        ops = set(self.normal.ops) | (set(self.reduce.ops) if self.reduce else set())
        return tuple(o for o in OPS if o in ops)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "normal": self.normal.to_dict(),
                "reduce": None if self.reduce is None else self.reduce.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def key(self) -> str:
        """Canonical string (hashable id for caches and history)."""
        return self.to_json()

    def short(self) -> str:
        """Compact human form: ``0>1:sep_conv_3x3 0>2:skip_connect ...``."""
        s = " ".join(f"{a}>{b}:{o}" for a, b, o in self.normal.edges)
        if self.reduce is not None:
            s += " | reduce " + " ".join(f"{a}>{b}:{o}" for a, b, o in self.reduce.edges)
        return s

    @classmethod
    def from_dict(cls, d: Any, field: str = "genotype") -> Genotype:
        if not isinstance(d, dict):
            raise GenotypeError(f"{field}: expected a JSON object, got {type(d).__name__}")
        fmt = d.get("format", FORMAT)
        if fmt != FORMAT:
            raise GenotypeError(f"{field}.format: {fmt!r} is not {FORMAT!r}")
        # keys starting with '_' are comments (e.g. "_source" in configs/genotypes/)
        unknown = {k for k in set(d) - {"format", "normal", "reduce"} if not str(k).startswith("_")}
        if unknown:
            raise GenotypeError(f"{field}: unknown field(s) {sorted(unknown)}; valid: format, normal, reduce")
        if "normal" not in d:
            raise GenotypeError(f"{field}.normal: missing")
        normal = Cell.from_dict(d["normal"], f"{field}.normal")
        red = d.get("reduce")
        reduce = None if red is None else Cell.from_dict(red, f"{field}.reduce")
        return cls(normal, reduce)

    @classmethod
    def from_json(cls, s: str, field: str = "genotype") -> Genotype:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"{field}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(d, field)


def load_genotype_file(path: str) -> Genotype:
    """Read a genotype JSON file (errors name the file)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"cannot read genotype file {path}: {e.strerror}") from None
    except ValueError as e:   # not UTF-8 text
        raise UserError(f"genotype file {path} is not a JSON text file ({e})") from None
    return Genotype.from_json(text, field=str(path))


def authors_cell_structure(nodes: int = 4) -> CellStructure:
    """The authors' complete-DAG cell: all pairs i<j, last node concatenates."""
    pairs = [(i, j) for j in range(1, nodes) for i in range(j)]
    # authors' edge order: 0->1, 0->2, 1->2, 0->3, 1->3, 2->3
    return CellStructure(nodes, tuple(pairs), "edges")


def check_op_set(ops: Iterable[str], field: str = "ops") -> tuple[str, ...]:
    """Canonical, de-duplicated op tuple in OPS order; empty -> GenotypeError."""
    ops = list(ops)
    if not ops:
        raise GenotypeError(f"{field}: the op set is empty; give at least one of {', '.join(OPS)}")
    canon = {canonical_op(o, field) for o in ops}
    return tuple(o for o in OPS if o in canon)
