"""Task registry, task sets, preprocessing and deterministic splits.

A task is a dataset plus a label map (source class -> task label).  Binary
indicator tasks are *balanced* as in the authors' code: all positives and the
first equally many negatives (in the split's order).  Multi-class tasks keep
every example.

Registered families:

* LD-NAS paper-8 (``task0``..``task7``): MNIST digit 0 / digit 6 / odd-vs-even /
  10-way, CIFAR-10 {automobile, cat, ship} / {cat, ship, truck} indicators,
  {bird, frog, horse, other}, 10-way.
* Slides variants: ``mnist_5class`` ({0,1,2,3,other}); CIFAR-100 tasks on
  fine labels: vehicles 1 & 2 indicator, household devices & furniture
  indicator, 11-class (10 vehicles + other), 21-class (vehicles, household,
  other).
* TA-NAS bases: ``mnist_digit{0..9}`` and ``fashion_<object>`` indicators;
  ``quickdraw_<object>`` indicators among the 10 TA-NAS Quick, Draw! classes.
* ``offline8`` — an offline analogue of paper-8 with the same shape per
  dataset (two binary class-group indicators, one {3 classes + other}, one
  10-way) on MNIST (bundled subset or full) and Fashion-MNIST.  Its class
  groups reuse the CIFAR-10 task ids {1,3,8}, {3,8,9}, {2,6,7}.

User tasks (``docs/tasks.md``): a spec file (``*.toml``/``*.json``), an inline form (``folder:PATH``,
``npz:PATH``, ``tfds:NAME``) or :func:`register_arrays` registers a task over the user's data
(``tanas_jax.data.spec`` parses specs, ``tanas_jax.data.user`` reads the data); :func:`canonical`
accepts a spec wherever a task name is.  A user task a bank holds networks of resolves by its bare
name once that bank is attached (:func:`attach_bank`): it is rebuilt from the spec its networks recorded,
or, when its data is not here, registered for its networks only (enough for a base).  Their splits are
stratified per class, and their :meth:`TaskData.record` carries the spec and a sha256 of the loaded arrays.

Splits are deterministic and independent of the training seed: the raw train
split is permuted with ``split_seed`` (default 0) and its last
``val_fraction`` is the validation split; the raw test split is the test
split, used only for final reports, never for selection.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from tanas_jax.data import DATASETS, RawDataset, load_dataset
from tanas_jax.data.spec import INLINE, REST, TaskSpec, check_name, from_record, is_spec_ref, spec_from_ref
from tanas_jax.data.user import (
    UserData,
    from_arrays,
    from_raw,
    read_arrays,
    read_image_folder,
    read_tfds,
    resize_images,
)
from tanas_jax.errors import UserError, did_you_mean


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    dataset: str
    label_map: tuple[int, ...]           # source class -> task label
    class_names: tuple[str, ...]         # task label names
    indicator: bool                      # binary "positives vs rest" (balanced)
    description: str
    aliases: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_REGISTRY: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


def _register(task: Task) -> None:
    _REGISTRY[task.name] = task
    for a in task.aliases:
        _ALIASES[a] = task.name


def _indicator(name, dataset, positives: Sequence[int], desc, aliases=()):
    n = len(DATASETS[dataset].class_names)
    lm = tuple(1 if c in positives else 0 for c in range(n))
    _register(Task(name, dataset, lm, ("rest", "positive"), True, desc, tuple(aliases)))


def _groups(name, dataset, classes: Sequence[int], desc, other=True, aliases=()):
    """One task label per listed class (in order), the rest -> 'other' (last label)."""
    n = len(DATASETS[dataset].class_names)
    names = DATASETS[dataset].class_names
    lm = []
    for c in range(n):
        lm.append(list(classes).index(c) if c in classes else len(classes))
    cls_names = tuple(names[c] for c in classes) + (("other",) if other else ())
    if not other and len(classes) != n:
        raise ValueError("a task without 'other' must list every class")
    _register(Task(name, dataset, tuple(lm), cls_names, False, desc, tuple(aliases)))


def _all_classes(name, dataset, desc, aliases=()):
    n = len(DATASETS[dataset].class_names)
    _register(Task(name, dataset, tuple(range(n)), DATASETS[dataset].class_names, False, desc,
                   tuple(aliases)))


# --- LD-NAS paper-8 -------------------------------------------------------------------------
_indicator("mnist_digit0", "mnist", [0], "MNIST: digit 0 vs rest", ["task0"])
_indicator("mnist_digit6", "mnist", [6], "MNIST: digit 6 vs rest", ["task1"])
_register(Task("mnist_odd_even", "mnist", tuple(c % 2 for c in range(10)), ("even", "odd"), False,
               "MNIST: odd vs even digits", ("task2",)))
_all_classes("mnist_10way", "mnist", "MNIST: 10 digits", ["task3"])
_indicator("cifar10_auto_cat_ship", "cifar10", [1, 3, 8], "CIFAR-10: {automobile, cat, ship} vs rest",
           ["task4"])
_indicator("cifar10_cat_ship_truck", "cifar10", [3, 8, 9], "CIFAR-10: {cat, ship, truck} vs rest",
           ["task5"])
_groups("cifar10_4class", "cifar10", [2, 6, 7], "CIFAR-10: bird, frog, horse, other", aliases=["task6"])
_all_classes("cifar10_10way", "cifar10", "CIFAR-10: 10 objects", ["task7"])

# --- TA-NAS slides variants -------------------------------------------------------------------
_groups("mnist_5class", "mnist", [0, 1, 2, 3], "MNIST: digits 0, 1, 2, 3, other")
# CIFAR-100 fine ids: vehicles 1 (bicycle, bus, motorcycle, pickup truck, train) and
# vehicles 2 (lawn mower, rocket, streetcar, tank, tractor); household electrical devices
# (clock, keyboard, lamp, telephone, television) and furniture (bed, chair, couch, table, wardrobe).
CIFAR100_VEHICLES = (8, 13, 48, 58, 90, 41, 69, 81, 85, 89)
CIFAR100_HOUSEHOLD = (22, 39, 40, 86, 87, 5, 20, 25, 84, 94)
_indicator("cifar100_vehicles", "cifar100", CIFAR100_VEHICLES, "CIFAR-100: vehicles 1 & 2 vs rest")
_indicator("cifar100_household", "cifar100", CIFAR100_HOUSEHOLD,
           "CIFAR-100: household devices & furniture vs rest")
_groups("cifar100_11class", "cifar100", CIFAR100_VEHICLES, "CIFAR-100: 10 vehicles + other")
_groups("cifar100_21class", "cifar100", CIFAR100_VEHICLES + CIFAR100_HOUSEHOLD,
        "CIFAR-100: 10 vehicles, 10 household objects + other")

# --- TA-NAS bases -----------------------------------------------------------------------------
for _d in range(10):
    if f"mnist_digit{_d}" not in _REGISTRY:
        _indicator(f"mnist_digit{_d}", "mnist", [_d], f"MNIST: digit {_d} vs rest")
for _i, _n in enumerate(DATASETS["fashion_mnist"].class_names):
    _indicator(f"fashion_{_n.replace('-', '_')}", "fashion_mnist", [_i], f"Fashion-MNIST: {_n} vs rest")
for _i, _n in enumerate(DATASETS["quickdraw10"].class_names):
    _indicator(f"quickdraw_{_n.replace(' ', '_')}", "quickdraw10", [_i],
               f"Quick, Draw! (10 classes): {_n} vs rest")
_all_classes("quickdraw_10way", "quickdraw10", "Quick, Draw!: 10 objects")

# --- offline8: paper-8's shape on data these machines have ----------------------------------
_indicator("mnist_138", "mnist", [1, 3, 8], "MNIST: digits {1, 3, 8} vs rest", ["off0"])
_indicator("mnist_389", "mnist", [3, 8, 9], "MNIST: digits {3, 8, 9} vs rest", ["off1"])
_groups("mnist_4class", "mnist", [2, 6, 7], "MNIST: digits 2, 6, 7, other", aliases=["off2"])
_ALIASES["off3"] = "mnist_10way"
_indicator("fashion_138", "fashion_mnist", [1, 3, 8], "Fashion-MNIST: {trouser, dress, bag} vs rest",
           ["off4"])
_indicator("fashion_389", "fashion_mnist", [3, 8, 9],
           "Fashion-MNIST: {dress, bag, ankle boot} vs rest", ["off5"])
_groups("fashion_4class", "fashion_mnist", [2, 6, 7], "Fashion-MNIST: pullover, shirt, sneaker, other",
        aliases=["off6"])
_all_classes("fashion_10way", "fashion_mnist", "Fashion-MNIST: 10 objects", ["off7"])

TASK_SETS: dict[str, tuple[str, ...]] = {
    "paper8": ("mnist_digit0", "mnist_digit6", "mnist_odd_even", "mnist_10way",
               "cifar10_auto_cat_ship", "cifar10_cat_ship_truck", "cifar10_4class", "cifar10_10way"),
    "offline8": ("mnist_138", "mnist_389", "mnist_4class", "mnist_10way",
                 "fashion_138", "fashion_389", "fashion_4class", "fashion_10way"),
    "slides_mnist": ("mnist_digit0", "mnist_digit6", "mnist_5class", "mnist_10way"),
    "slides_cifar100": ("cifar100_vehicles", "cifar100_household", "cifar100_11class", "cifar100_21class"),
    "tanas_base": tuple(f"mnist_digit{d}" for d in range(10))
    + tuple(f"fashion_{n.replace('-', '_')}" for n in DATASETS["fashion_mnist"].class_names),
    "tanas_small": ("mnist_digit0", "mnist_digit3", "fashion_trouser", "fashion_bag"),
}


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def canonical(name: str) -> str:
    """A task name, alias, spec path (``*.toml``/``*.json``) or inline form (``folder:PATH``,
    ``npz:PATH``, ``tfds:NAME``) -> the registered task name (a spec is loaded and registered once)."""
    name = name.strip()
    if name in _REGISTRY or name in _USER:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    if is_spec_ref(name):
        return register_spec(name)
    banked = _from_banks(name)
    if banked is not None:
        return banked
    import difflib

    close = difflib.get_close_matches(name, list(_REGISTRY) + list(_ALIASES) + list(_USER), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UserError(f"unknown task '{name}': {hint}task sets: {', '.join(TASK_SETS)}; list all "
                    f"{len(_REGISTRY)} tasks with `bin/train --list-tasks`; your own data: a spec file "
                    "(my_task.toml) or folder:PATH / npz:PATH (docs/tasks.md)")


def get_task(name: str) -> Task:
    n = canonical(name)
    return _USER[n].task if n in _USER else _REGISTRY[n]


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """A task-set name, or comma-separated task names/aliases -> canonical names (ordered, unique)."""
    if isinstance(spec, str):
        if spec in TASK_SETS:
            return list(TASK_SETS[spec])
        items = [s for s in spec.split(",") if s.strip()]
        if not items:
            raise UserError(f"empty task list; give a task set ({', '.join(TASK_SETS)}) or task names")
    else:
        items = list(spec)
    out = []
    for item in items:
        item = item.strip()
        if item in TASK_SETS:
            names = TASK_SETS[item]
        else:
            names = [canonical(item)]
        for n in names:
            if n not in out:
                out.append(n)
    return out


# --- user tasks: spec files, inline forms, in-memory arrays (docs/tasks.md) ---------------------------
@dataclasses.dataclass(frozen=True)
class UserTask:
    """A task from a spec: its :class:`Task`, the spec, and its data (loaded at registration; ``None``
    for a built-in dataset source, which is loaded from ``data.source`` like the built-in tasks)."""

    task: Task
    spec: TaskSpec
    data: UserData | None
    network_only: str = ""     # a banked task whose data is not here: where its networks are (no data)


_USER: dict[str, UserTask] = {}
_REFS: dict[tuple, str] = {}
_BUILTIN_CACHE: dict[tuple, UserData] = {}


def user_task_names() -> list[str]:
    """The tasks registered from specs or arrays in this process."""
    return sorted(_USER)


def user_task(name: str) -> UserTask | None:
    return _USER.get(canonical(name))


def _ref_key(text: str) -> tuple:
    t = text.strip()
    if t.startswith(INLINE):
        return (t, os.getcwd())
    p = os.path.abspath(os.path.expanduser(t))
    try:
        st = os.stat(p)
        return (p, st.st_mtime_ns, st.st_size)
    except OSError:
        return (p,)


def register_spec(ref: str | TaskSpec) -> str:
    """Load a spec (path, inline form or :class:`TaskSpec`), check its data and class map, register the
    task; returns its name.  The same spec again returns the same name without reloading."""
    key = _ref_key(ref) if isinstance(ref, str) else None
    if key is not None and key in _REFS:
        return _REFS[key]
    spec = spec_from_ref(ref) if isinstance(ref, str) else ref
    data = _read_source(spec)
    name = _register_user(spec, data)
    if key is not None:
        _REFS[key] = name
    return name


def register_arrays(name: str, x_train, y_train, x_test=None, y_test=None, *, class_names=None,
                    description: str = "") -> str:
    """Register in-memory arrays as task ``name`` (images NHWC/NHW/NCHW, uint8 or float; integer labels
    0..K-1); without a test split one is carved (20%, fixed seed).  Returns the task name."""
    where = f"register_arrays('{name}')"
    check_name(name, where)
    data = from_arrays(x_train, y_train, x_test, y_test, class_names=class_names, where=where,
                       source=f"memory:{name}")
    spec = TaskSpec(name=name, source={"memory": name}, description=description, origin="python")
    return _register_user(spec, data)


def _read_source(spec: TaskSpec) -> UserData | None:
    src, size, ch = spec.source, spec.input_size, spec.channels
    if spec.kind == "image_folder":
        return read_image_folder(src["image_folder"], size, ch)
    if spec.kind == "arrays":
        return read_arrays(src["arrays"], size, ch)
    if spec.kind == "tfds":
        return read_tfds(src["tfds"], src["image_key"], src["label_key"], src["data_dir"], size, ch)
    return None


def _register_user(spec: TaskSpec, data: UserData | None) -> str:
    name, where = spec.name, spec.origin
    if name in _REGISTRY or name in _ALIASES or name in TASK_SETS:
        raise UserError(f"{where}: task name '{name}' is a built-in task or set; set name = \"my_{name}\"")
    source_names = data.class_names if data is not None else DATASETS[spec.source["dataset"]].class_names
    label_map, class_names = _label_map(spec, source_names)
    dataset = spec.source["dataset"] if spec.kind == "dataset" else f"user:{spec.kind}"
    desc = spec.description or f"{name}: {len(class_names)} classes from {data.source if data else dataset}"
    task = Task(name, dataset, label_map, class_names, False, desc)
    old = _USER.get(name)
    if old is not None and not old.network_only:
        same = (_comparable(old.spec) == _comparable(spec) and old.task == task
                and (old.data is None) == (data is None) and (data is None or old.data.fingerprint == data.fingerprint))
        if not same:
            raise UserError(f"{where}: task name '{name}' is already taken by {old.spec.origin} with other data "
                            "or classes; give this task another name")
        return name
    _USER[name] = UserTask(task, spec, data)
    return name


def _comparable(spec: TaskSpec) -> dict:
    d = spec.to_dict()
    d.pop("origin")
    return d


def _class_index(sel, names: tuple[str, ...], where: str) -> int:
    if isinstance(sel, str) and sel in names:
        return names.index(sel)
    if isinstance(sel, int) and 0 <= sel < len(names):
        return sel
    raise UserError(f"{where}: classes: no source class {sel!r}; {did_you_mean(str(sel), names)}")


def _label_map(spec: TaskSpec, names: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Source class -> task label (-1: dropped) and the task's class names, from the spec's class map."""
    if spec.classes is None:
        return tuple(range(len(names))), tuple(names)
    lm, out, rest = [-1] * len(names), [], None
    for label, (new_name, sels) in enumerate(spec.classes):
        for sel in sels:
            if sel == REST:
                rest = label
                continue
            i = _class_index(sel, names, spec.origin)
            if lm[i] != -1:
                raise UserError(f"{spec.origin}: classes: source class '{names[i]}' is listed twice; "
                                "list each source class once")
            lm[i] = label
        out.append(new_name if new_name is not None else names[_class_index(sels[0], names, spec.origin)])
    if rest is not None:
        lm = [rest if v == -1 else v for v in lm]
    empty = [out[k] for k in range(len(out)) if k not in lm]
    if empty:
        raise UserError(f"{spec.origin}: classes: '{empty[0]}' gets no source class ('*' matches none left); "
                        "list at least one class for it")
    return tuple(lm), tuple(out)


# --- user tasks a bank holds: resolved by bare name ---------------------------------------------
_BANKS: dict = {}    # bank root -> bank, in the order attached (the latest is asked first)
_BANKS_KEPT = 8      # the banks of the last few commands / api calls
_BANK_SOURCES = ("image_folder", "arrays", "tfds")


def attach_bank(bank) -> None:
    """Let the bare names of the user tasks ``bank`` holds networks of resolve in :func:`canonical` (a name
    the registry lacks is looked up in the attached banks, the latest attached first)."""
    _BANKS.pop(bank.root, None)
    _BANKS[bank.root] = bank
    while len(_BANKS) > _BANKS_KEPT:
        _BANKS.pop(next(iter(_BANKS)))


def banked_record(bank, name: str) -> dict | None:
    """What ``bank`` recorded about user task ``name`` (the ``data`` record of its first readable network:
    ``spec``, ``data_sha256``, ``class_counts``, ``source``..., plus ``class_names`` and ``net``), or None
    when the bank has no network of a user task of that name.  Built-in task names are never looked up."""
    if name in _REGISTRY or name in _ALIASES or name in TASK_SETS:
        return None
    try:
        entries = bank.network_entries(name)
    except UserError:            # not a name the bank can hold
        return None
    for t, net, seed in entries:
        try:
            found = bank.find_network(t, net, seed)
        except UserError:        # a damaged entry: another seed may be fine (bin/bank verify reports it)
            continue
        meta = found[1] if found else {}
        rec = meta.get("data") or {}
        if rec.get("spec"):
            return {**rec, "class_names": list(meta.get("class_names") or []), "net": net}
    return None


def banked_user_tasks(bank) -> dict[str, dict]:
    """``{name: record}`` (:func:`banked_record`) of every user task ``bank`` holds networks of."""
    out = {}
    for name in bank.tasks():
        rec = banked_record(bank, name)
        if rec is not None:
            out[name] = rec
    return out


def has_data(name: str) -> bool:
    """Whether task ``name``'s data can be loaded here: False only for a banked user task registered for
    its networks only (:func:`register_banked`)."""
    u = _USER.get(canonical(name))
    return not (u is not None and u.network_only)


def _from_banks(name: str) -> str | None:
    for bank in reversed(list(_BANKS.values())):
        rec = banked_record(bank, name)
        if rec is not None:
            return register_banked(name, rec, f"task {name} (bank {bank.root})")
    return None


def register_banked(name: str, record: dict, origin: str) -> str:
    """Register user task ``name`` from a bank's ``record`` (:func:`banked_record`): rebuilt from the
    recorded spec when its data is here with the recorded sha256; otherwise for its banked networks only
    (a base needs just those): loading its data then says to pass its spec or data again."""
    spec = from_record(record["spec"], origin)
    if spec.name != name:
        raise UserError(f"{origin}: its networks record the spec of task '{spec.name}'; remove the entry "
                        "(bin/bank rm) or retrain it")
    if spec.kind == "dataset":
        return _register_user(spec, None)
    data = None
    if spec.kind in _BANK_SOURCES:
        try:
            data = _read_source(spec)
        except UserError:        # moved or deleted: the networks still serve as a base
            data = None
    if data is not None and data.fingerprint == record.get("data_sha256"):
        return _register_user(spec, data)
    names = tuple(record.get("class_names") or ())
    task = Task(name, f"user:{spec.kind}", tuple(range(len(names))), names, False,
                spec.description or f"{name}: {len(names)} classes (banked networks only)")
    where = "its data is not here" if data is None else "its data has changed since"
    _USER[name] = UserTask(task, spec, None, network_only=f"{origin}: {where}")
    return name


# --- preprocessing --------------------------------------------------------------------------
NORMALIZATIONS = ("none", "half", "cifar")
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2023, 0.1994, 0.2010], np.float32)


def preprocess(images: np.ndarray, input_shape: tuple[int, int, int],
               normalization: str = "none") -> np.ndarray:
    """uint8 NHWC -> float32 NHWC in [0, 1] at ``input_shape``.

    28 -> 32 pads 2 px each side (LD-NAS code); 32 -> 28 crops 2 px; grayscale is
    repeated to 3 channels when the net wants 3; RGB -> 1 channel is the channel
    mean.  ``normalization``: ``none`` ([0,1]), ``half`` ((x-0.5)/0.5, the LD-NAS
    CIFAR loader), ``cifar`` (the usual CIFAR mean/std, the FTD repo).
    """
    h, w, c = input_shape
    x = images.astype(np.float32) / 255.0
    ih = x.shape[1]
    if ih < h:
        p = (h - ih) // 2
        x = np.pad(x, ((0, 0), (p, h - ih - p), (p, w - x.shape[2] - p), (0, 0)))
    elif ih > h:
        p = (ih - h) // 2
        x = x[:, p:p + h, p:p + w, :]
    if x.shape[-1] == 1 and c == 3:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 3 and c == 1:
        x = x.mean(axis=-1, keepdims=True)
    if normalization == "half":
        x = (x - 0.5) / 0.5
    elif normalization == "cifar":
        if x.shape[-1] != 3:
            raise UserError("normalization 'cifar' needs 3-channel inputs; use 'half' or 'none'")
        x = (x - CIFAR_MEAN) / CIFAR_STD
    elif normalization != "none":
        raise UserError(f"unknown normalization '{normalization}': valid: {', '.join(NORMALIZATIONS)}")
    return np.ascontiguousarray(x, np.float32)


def _select(task: Task, labels: np.ndarray) -> np.ndarray:
    """Indices kept for ``task`` (balanced indicators: positives + first equally many negatives)."""
    mapped = np.asarray(task.label_map)[labels]
    if not task.indicator:
        return np.arange(len(labels))
    pos = np.flatnonzero(mapped == 1)
    neg = np.flatnonzero(mapped == 0)[: len(pos)]
    return np.sort(np.concatenate([pos, neg]))


@dataclasses.dataclass(frozen=True)
class TaskData:
    task: str
    dataset: str
    source: str
    num_classes: int
    class_names: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, int, int]
    settings: dict

    @property
    def sizes(self) -> dict:
        return {"train": int(len(self.y_train)), "val": int(len(self.y_val)), "test": int(len(self.y_test))}

    def summary(self) -> str:
        s = self.sizes
        line = (f"task {self.task}: {self.dataset} from {self.source}; {self.num_classes} classes; "
                f"train {s['train']}, val {s['val']}, test {s['test']} examples")
        counts = self.settings.get("class_counts")
        if counts:   # user tasks: examples per class and split
            per = ", ".join(f"{c} {'/'.join(str(counts[sp][c]) for sp in ('train', 'val', 'test'))}"
                            for c in self.class_names)
            line += f"; per class (train/val/test): {per}"
        return line

    def record(self) -> dict:
        """What a result file records about the data."""
        return {"task": self.task, "dataset": self.dataset, "source": self.source,
                "num_classes": self.num_classes, "sizes": self.sizes,
                "input_shape": list(self.input_shape), **self.settings}


def default_normalization(dataset: str) -> str:
    return "half" if dataset.startswith("cifar") else "none"


def load_task_data(task: str, input_shape: tuple[int, int, int], source: str = "auto", *,
                   split_seed: int = 0, val_fraction: float = 0.1, max_train: int | None = None,
                   max_eval: int | None = None, normalization: str | None = None,
                   data_dir: str | None = None) -> TaskData:
    """Task ``task``'s train/val/test arrays, preprocessed for a net with ``input_shape``.

    ``max_train``/``max_eval`` cap the number of examples (after balancing; a
    fixed prefix of the permuted split, so the cap is deterministic).
    """
    t = get_task(task)
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if t.name in _USER:
        return _load_user_task(_USER[t.name], tuple(input_shape), source, split_seed=split_seed,
                               val_fraction=val_fraction, max_train=max_train, max_eval=max_eval,
                               normalization=normalization, data_dir=data_dir)
    raw: RawDataset = load_dataset(t.dataset, source, data_dir)
    norm = normalization or default_normalization(t.dataset)

    perm = np.random.default_rng(split_seed).permutation(len(raw.train_labels))
    n_val = int(round(val_fraction * len(perm)))
    tr_idx, va_idx = np.sort(perm[: len(perm) - n_val]), np.sort(perm[len(perm) - n_val:])

    def split(images, labels, idx, cap, shuffle_seed):
        labels_sub = labels[idx]
        keep = idx[_select(t, labels_sub)]
        # a fixed, label-mixing order so that caps keep the class mix
        keep = keep[np.random.default_rng(shuffle_seed).permutation(len(keep))]
        if cap is not None:
            keep = keep[:cap]
        y = np.asarray(t.label_map)[labels[keep]].astype(np.int32)
        return preprocess(images[keep], input_shape, norm), y

    x_tr, y_tr = split(raw.train_images, raw.train_labels, tr_idx, max_train, split_seed + 1)
    x_va, y_va = split(raw.train_images, raw.train_labels, va_idx, max_eval, split_seed + 2)
    x_te, y_te = split(raw.test_images, raw.test_labels, np.arange(len(raw.test_labels)), max_eval,
                       split_seed + 3)
    if len(y_tr) == 0 or len(y_va) == 0 or len(y_te) == 0:
        raise UserError(f"task {t.name} has an empty split (train {len(y_tr)}, val {len(y_va)}, "
                        f"test {len(y_te)}) from {raw.source}; check the data files")
    settings = {"split_seed": split_seed, "val_fraction": val_fraction, "max_train": max_train,
                "max_eval": max_eval, "normalization": norm, "balanced": t.indicator}
    return TaskData(task=t.name, dataset=t.dataset, source=raw.source, num_classes=t.num_classes,
                    class_names=t.class_names, x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va,
                    x_test=x_te, y_test=y_te, input_shape=tuple(input_shape), settings=settings)


def _builtin_data(spec: TaskSpec, source: str, data_dir: str | None) -> UserData:
    key = (spec.source["dataset"], source, data_dir, spec.input_size, spec.channels)
    if key not in _BUILTIN_CACHE:
        raw = load_dataset(spec.source["dataset"], source, data_dir)
        _BUILTIN_CACHE.clear()   # one at a time: they are large
        _BUILTIN_CACHE[key] = from_raw(raw, spec.input_size, spec.channels)
    return _BUILTIN_CACHE[key]


def _stratified(y: np.ndarray, fraction: float, seed: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, carved)`` indices: ``fraction`` of each class (at least one) carved with a fixed seed."""
    rng = np.random.default_rng(list(seed))
    carved = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        carved.append(idx[:max(1, int(round(fraction * len(idx))))])
    carved = np.sort(np.concatenate(carved))
    return np.setdiff1d(np.arange(len(y)), carved), carved


def _check_enough(u: UserTask, y: np.ndarray, need: int, val_fraction: float) -> None:
    counts = np.bincount(y, minlength=u.task.num_classes)
    k = int(np.argmin(counts))
    if counts[k] < need:
        test = f", test {u.spec.test_fraction}" if need > 2 else ""
        raise UserError(f"{u.spec.origin}: class '{u.task.class_names[k]}' has {counts[k]} example(s); the splits "
                        f"(val {val_fraction}{test}) need at least {need} per class: add examples, merge "
                        "classes in `classes`, or drop it")


def fit_to_net(x: np.ndarray, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A user task's uint8 images for a net: within 8 px of its (square) input they are padded/cropped
    by :func:`preprocess` like the built-in datasets (28 <-> 32), any other size is resized (bilinear)."""
    h, w = input_shape[:2]
    ih, iw = x.shape[1:3]
    if (ih, iw) == (h, w) or (ih == iw and h == w and abs(ih - h) <= 8):
        return x
    return resize_images(x, (h, w))


def _user_splits(u: UserTask, data: UserData, split_seed: int, val_fraction: float) -> dict:
    """Class-mapped train/val/test (uint8, task labels), stratified carving with fixed seeds."""
    lm = np.asarray(u.task.label_map)

    def mapped(x, y):
        keep = np.flatnonzero(lm[y] >= 0)
        return x[keep], lm[y[keep]].astype(np.int32)

    xtr, ytr = mapped(data.train_images, data.train_labels)
    carve = data.test_images is None
    _check_enough(u, ytr, 3 if carve else 2, val_fraction)
    if carve:
        keep, te = _stratified(ytr, u.spec.test_fraction, (split_seed, 1))
        (xte, yte), (xtr, ytr) = (xtr[te], ytr[te]), (xtr[keep], ytr[keep])
    else:
        xte, yte = mapped(data.test_images, data.test_labels)
    if len(yte) == 0:
        raise UserError(f"{u.spec.origin}: the test split has no example of the task's classes; add test "
                        "images of them or drop the test/ tree (a test split is then carved)")
    keep, va = _stratified(ytr, val_fraction, (split_seed, 2))
    return {"train": (xtr[keep], ytr[keep]), "val": (xtr[va], ytr[va]), "test": (xte, yte)}


def _load_user_task(u: UserTask, input_shape, source: str, *, split_seed: int, val_fraction: float,
                    max_train, max_eval, normalization, data_dir) -> TaskData:
    spec, t = u.spec, u.task
    if u.network_only:
        raise UserError(f"{u.network_only} ({spec.source_text()}): as a base it needs only its banked networks; "
                        "to use it as a target or train new networks, pass its spec or data again")
    data = u.data if u.data is not None else _builtin_data(spec, source, data_dir)
    val_fraction = spec.val_fraction or val_fraction
    caps = {"train": _least(max_train, spec.max_train), "val": max_eval, "test": _least(max_eval, spec.max_test)}
    norm = normalization or default_normalization(t.dataset)
    out, counts = {}, {}
    for k, (split, (x, y)) in enumerate(_user_splits(u, data, split_seed, val_fraction).items()):
        order = np.random.default_rng(split_seed + 1 + k).permutation(len(y))[:caps[split]]
        x, y = x[order], y[order]
        out[split] = (preprocess(fit_to_net(x, input_shape), input_shape, norm), y)
        n = np.bincount(y, minlength=t.num_classes)
        counts[split] = {c: int(n[i]) for i, c in enumerate(t.class_names)}
    settings = {"split_seed": split_seed, "val_fraction": val_fraction, "max_train": caps["train"],
                "max_eval": max_eval, "normalization": norm, "balanced": False, "spec": spec.to_dict(),
                "data_sha256": data.fingerprint, "class_counts": counts}
    return TaskData(task=t.name, dataset=t.dataset, source=f"{data.source} (sha256 {data.fingerprint[:12]})",
                    num_classes=t.num_classes, class_names=t.class_names, x_train=out["train"][0],
                    y_train=out["train"][1], x_val=out["val"][0], y_val=out["val"][1], x_test=out["test"][0],
                    y_test=out["test"][1], input_shape=tuple(input_shape), settings=settings)


def _least(*caps):
    given = [c for c in caps if c is not None]
    return min(given) if given else None


def task_data(task: str, input_shape: tuple[int, int, int], data_cfg, *, max_train: int | None = None) -> TaskData:
    """:func:`load_task_data` with the settings of config section ``data`` (a
    :class:`tanas_jax.config.DataConfig` or the ConfigDict section); ``max_train`` (when given)
    replaces ``data.max_train``, e.g. ``search.max_train`` for a search."""
    from tanas_jax.config import DataConfig, from_section

    d = data_cfg if isinstance(data_cfg, DataConfig) else from_section(DataConfig, data_cfg, "data")
    return load_task_data(task, tuple(input_shape), d.source, split_seed=d.split_seed, val_fraction=d.val_fraction,
                          max_train=d.max_train if max_train is None else max_train, max_eval=d.max_eval,
                          normalization=d.normalization, data_dir=d.data_dir)
