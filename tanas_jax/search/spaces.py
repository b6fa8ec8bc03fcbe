"""Search spaces: op sets x cell structures, built per TA-NAS §3.2.

Public API::

    SearchSpace(name, ops, structures, seeds=(), sources=())
        .sample(gen) -> Genotype          # uniform: a structure, then one op per edge
        .sample_distinct(gen, n, exclude) -> list[Genotype]
        .size() -> int                    # number of distinct cells
        .to_dict()
    standard_space(structure=authors_cell_structure()) -> SearchSpace
    space_from_genotypes(name, genotypes, sources) -> SearchSpace
    resolve_space(spec, *, bank=None, target=None, closest_fn=None, log=print) -> SearchSpace
    genotype_for_task(task, bank=None, log=print) -> (Genotype, where)

Space specs (``--space``):

* ``standard`` — every op of :data:`genotype.OPS`, the authors' 4-node cell.
* ``from:TASK`` — the ops and cell structure(s) of TASK's genotype: the bank's
  entry, else a bundled genotype file ``configs/genotypes/<task>.json`` (the
  LD-NAS paper's task-7 cell ships there; the message says which was used).
  TASK is a task name or alias (``task7`` = ``cifar10_10way``).
* ``from:closest[:k]`` — the union of the ops and structures of the k closest
  base tasks (default k=1) that have a genotype; the ranking comes from
  ``closest_fn(target) -> [task, ...]`` (closest first), which the CLI wires
  to :func:`tanas_jax.distance.closest_bases` when available.
* ``ops:a,b,c`` — the authors' cell with exactly these ops.
* a path to a JSON file: a genotype (its ops + structure) or
  ``{"ops": [...], "structures": [{"nodes":..,"edges":[[s,d],..],"concat":..}]}``.

The genotypes a space came from are its ``seeds``: FUSE starts from the first
one (TA-NAS Algorithm 2 "Initialization: seed"); ``standard`` has none (the
first seed is a uniform sample).  Sampled genotypes have no separate
reduction cell (reduction positions reuse the sampled cell with stride 2).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from tanas_jax.errors import UserError
from tanas_jax.search.genotype import OPS, CellStructure, Genotype, GenotypeError, authors_cell_structure, check_op_set


def _genotype_dir() -> str:
    """``configs/genotypes`` of a source checkout, else the copy shipped as ``tanas_jax/configs``."""
    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join(os.path.dirname(os.path.dirname(here)), "configs", "genotypes")
    return src if os.path.isdir(src) else os.path.join(os.path.dirname(here), "configs", "genotypes")


GENOTYPE_DIR = _genotype_dir()


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    name: str
    ops: tuple[str, ...]
    structures: tuple[CellStructure, ...]
    seeds: tuple[Genotype, ...] = ()
    sources: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "ops", check_op_set(self.ops, f"space {self.name}: ops"))
        if not self.structures:
            raise UserError(f"space {self.name}: no cell structure")
        # de-duplicate, keep order
        seen, out = set(), []
        for s in self.structures:
            if s not in seen:
                seen.add(s)
                out.append(s)
        object.__setattr__(self, "structures", tuple(out))

    def sample(self, gen: np.random.Generator) -> Genotype:
        """Uniform: a structure, then an op per edge, each uniformly."""
        st = self.structures[int(gen.integers(len(self.structures)))]
        ops = [self.ops[int(gen.integers(len(self.ops)))] for _ in st.pairs]
        return Genotype(st.with_ops(ops))

    def size(self) -> int:
        return int(sum(len(self.ops) ** len(s.pairs) for s in self.structures))

    def sample_distinct(self, gen: np.random.Generator, n: int, exclude: Iterable[Genotype] = (),
                        tries: int = 100) -> list[Genotype]:
        """n samples differing from ``exclude`` and each other when the space allows."""
        taken = {g.key() for g in exclude}
        out = []
        for _ in range(n):
            g = self.sample(gen)
            for _ in range(tries):
                if g.key() not in taken:
                    break
                g = self.sample(gen)
            taken.add(g.key())
            out.append(g)
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "ops": list(self.ops),
                "structures": [s.to_dict() for s in self.structures],
                "seeds": [g.to_dict() for g in self.seeds], "sources": list(self.sources),
                "size": self.size()}


def standard_space(structure: CellStructure | None = None) -> SearchSpace:
    return SearchSpace("standard", OPS, (structure or authors_cell_structure(),))


def space_from_genotypes(name: str, genotypes: Sequence[Genotype], sources: Sequence[str] = ()) -> SearchSpace:
    """Union of the genotypes' ops and cell structures (normal and reduce cells)."""
    ops, structures = [], []
    for g in genotypes:
        ops.extend(g.ops)
        structures.append(g.normal.structure)
        if g.reduce is not None:
            structures.append(g.reduce.structure)
    return SearchSpace(name, tuple(ops), tuple(structures), tuple(genotypes), tuple(sources))


def bundled_genotype_path(task: str) -> str | None:
    p = os.path.join(GENOTYPE_DIR, f"{task}.json")
    return p if os.path.exists(p) else None


def genotype_for_task(task: str, bank=None, log: Callable = print) -> tuple[Genotype, str]:
    """TASK's genotype: the bank entry, else ``configs/genotypes/<task>.json``.

    ``task`` must be canonical.  Raises a UserError saying how to make one.
    """
    if bank is not None:
        entry = bank.load_genotype(task)
        if entry is not None:
            g = Genotype.from_dict(entry[0], field=f"bank genotype of {task}")
            return g, f"bank {getattr(bank, 'root', '')}".strip()
    p = bundled_genotype_path(task)
    if p is not None:
        with open(p) as f:
            d = json.load(f)
        d = d.get("genotype", d)
        g = Genotype.from_dict(d, field=p)
        log(f"space: taking {task}'s cell from {os.path.relpath(p)} (no bank entry)")
        return g, p
    raise UserError(
        f"task {task} has no genotype in the bank{'' if bank is None else ' ' + str(getattr(bank, 'root', ''))}"
        f" nor in configs/genotypes/; make one with `bin/fuse --task {task} --space standard` "
        f"(it writes the winner into the bank) or put a genotype JSON at configs/genotypes/{task}.json")


def _canonical_task(name: str) -> str:
    from tanas_jax.tasks import canonical

    return canonical(name)


def _space_from_json(path: str) -> SearchSpace:
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise UserError(f"--space {path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"--space {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except ValueError as e:   # not UTF-8 text
        raise UserError(f"--space {path}: not a JSON text file ({e})") from None
    if isinstance(d, dict) and "normal" in d:
        return space_from_genotypes(f"file:{os.path.basename(path)}", [Genotype.from_dict(d, path)], [path])
    if not isinstance(d, dict) or "ops" not in d:
        raise UserError(f"--space {path}: expected a genotype or {{'ops': [...], 'structures': [...]}}")
    if not isinstance(d["ops"], list) or not all(isinstance(o, str) for o in d["ops"]):
        raise UserError(f"--space {path}: 'ops' must be a list of op names, got {d['ops']!r}")
    if not isinstance(d.get("structures") or [], list):
        raise UserError(f"--space {path}: 'structures' must be a list of {{'nodes': n, 'edges': [[src, dst], ...]}}")
    structs = []
    for i, s in enumerate(d.get("structures") or [authors_cell_structure().to_dict()]):
        f = f"{path}: structures[{i}]"
        if not isinstance(s, dict) or "nodes" not in s or "edges" not in s:
            raise UserError(f"{f}: expected {{'nodes': n, 'edges': [[src, dst], ...]}}")
        try:
            pairs = tuple((int(e[0]), int(e[1])) for e in s["edges"])
            concat = s.get("concat", "edges")
            structs.append(CellStructure(s["nodes"], pairs, tuple(concat) if isinstance(concat, list) else concat))
        except GenotypeError as e:
            raise UserError(f"{f}: {e}") from None
        except (TypeError, ValueError, IndexError):
            raise UserError(f"{f}: edges must be [src, dst] pairs") from None
    return SearchSpace(f"file:{os.path.basename(path)}", tuple(d["ops"]), tuple(structs), (), (path,))


def resolve_space(spec: str, *, bank=None, target: str | None = None,
                  closest_fn: Callable[[str], Sequence[str]] | None = None,
                  log: Callable = print) -> SearchSpace:
    """Parse a ``--space`` spec (see module docstring) into a SearchSpace."""
    spec = (spec or "").strip()
    if not spec:
        raise UserError("--space is empty; give standard, from:TASK, from:closest[:k], ops:a,b,c or a JSON file")
    if spec == "standard":
        return standard_space()
    if spec.startswith("ops:"):
        return _ops_space(spec)
    if spec.startswith("from:closest"):
        return _closest_space(spec, closest_k(spec), bank, target, closest_fn, log)
    if spec.startswith("from:"):
        task = _canonical_task(spec[5:])
        g, where = genotype_for_task(task, bank, log)
        return space_from_genotypes(f"from:{task}", [g], [where])
    if spec.endswith(".json") or os.path.exists(spec):
        return _space_from_json(spec)
    close = difflib.get_close_matches(spec, ["standard", "from:closest"], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"unknown --space '{spec}'; valid: standard, from:TASK, from:closest[:k], ops:a,b,c, "
                    f"or a JSON file{hint}")


def _ops_space(spec: str) -> SearchSpace:
    """``ops:a,b,c``: the authors' cell structure over the named operations."""
    ops = [o.strip() for o in spec[4:].split(",") if o.strip()]
    try:
        return SearchSpace(spec, check_op_set(ops, "--space ops"), (authors_cell_structure(),))
    except GenotypeError as e:
        raise UserError(str(e)) from None


def closest_k(spec: str) -> int:
    """K of ``from:closest[:K]`` (1 when absent)."""
    rest = spec[len("from:closest"):]
    if not rest:
        return 1
    if not rest.startswith(":") or not rest[1:].isdigit() or int(rest[1:]) < 1:
        raise UserError(f"--space {spec}: expected from:closest or from:closest:K with K >= 1")
    return int(rest[1:])


def _closest_space(spec: str, k: int, bank, target, closest_fn, log) -> SearchSpace:
    """The union of the genotypes of the ``k`` closest base tasks that have one."""
    if target is None or closest_fn is None:
        raise UserError(f"--space {spec} needs a target task and task distances; compute them with "
                        "`bin/distance` first")
    ranked = [t for t in closest_fn(target) if t != target]
    genos, sources, names = [], [], []
    for t in ranked:
        try:
            g, where = genotype_for_task(t, bank, log)
        except UserError:
            continue  # base tasks without a genotype are skipped
        genos.append(g)
        sources.append(where)
        names.append(t)
        if len(genos) == k:
            break
    if not genos:
        raise UserError(f"--space {spec}: none of the ranked base tasks ({', '.join(ranked[:5])}...) has a "
                        "genotype; run `bin/fuse --task BASE --space standard` for the closest base first")
    log(f"space: {spec} -> {', '.join(names)}")
    return space_from_genotypes(f"from:{'+'.join(names)}", genos, sources)
