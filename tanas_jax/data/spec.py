"""Task spec files (TOML or JSON) and the inline form: parsing and validation, nothing loaded.

A spec names a user's data source, an optional class map, the image size and channels, and split
sizes (format: ``docs/tasks.md``).  :func:`read_spec` parses a ``*.toml``/``*.json`` file,
:func:`parse_inline` the short forms ``folder:PATH``, ``npz:PATH`` and ``tfds:NAME``; both return a
:class:`TaskSpec` with absolute paths, or raise one :class:`~tanas_jax.errors.UserError` line naming
the file and the fix.  Turning a spec into a task (class map -> label map) is the task layer's job.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

from tanas_jax.errors import UserError, did_you_mean

FIELDS = ("name", "source", "classes", "input_size", "channels", "splits", "description")
SPLIT_FIELDS = ("val_fraction", "test_fraction", "max_train", "max_test")
TFDS_FIELDS = ("tfds", "image_key", "label_key", "data_dir")
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
INLINE = ("folder:", "npz:", "tfds:")
SPEC_SUFFIXES = (".toml", ".json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")
REST = "*"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A validated task spec.  ``source`` is normalised: ``{"image_folder": ABS}``, ``{"arrays": ABS}``,
    ``{"arrays": {x_train: ABS, ...}}``, ``{"tfds": NAME, "image_key", "label_key", "data_dir"}``,
    ``{"dataset": NAME}`` (built-in) or ``{"memory": NAME}``; ``classes`` is ``None`` (every source class)
    or a tuple of ``(label name or None, (selectors...))`` where a selector is a source class name or id
    (``"*"``: every class not listed elsewhere) and ``None`` keeps the source's class name."""

    name: str
    source: dict
    classes: tuple | None = None
    input_size: tuple[int, int] | None = None
    channels: int | None = None
    val_fraction: float | None = None
    test_fraction: float = 0.2
    max_train: int | None = None
    max_test: int | None = None
    description: str = ""
    origin: str = ""

    @property
    def kind(self) -> str:
        return next(k for k in ("image_folder", "arrays", "tfds", "dataset", "memory") if k in self.source)

    def source_text(self) -> str:
        """The source in a few words: ``image folder PATH``, ``arrays PATH``, ``tfds NAME``..."""
        v = self.source[self.kind]
        if isinstance(v, dict):
            v = v.get("x_train", "")
        return f"{self.kind.replace('_', ' ')} {v}"

    def to_dict(self) -> dict:
        """The spec as JSON (what the bank records)."""
        classes = None if self.classes is None else [
            {"label": label, "from": list(sel)} for label, sel in self.classes]
        return {"name": self.name, "source": self.source, "classes": classes,
                "input_size": None if self.input_size is None else list(self.input_size),
                "channels": self.channels,
                "splits": {"val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                           "max_train": self.max_train, "max_test": self.max_test},
                "description": self.description, "origin": self.origin}


def from_record(d: dict, origin: str) -> TaskSpec:
    """The :class:`TaskSpec` a bank recorded (:meth:`TaskSpec.to_dict`'s output) back, named ``origin``
    in errors; its source paths are already absolute.  A record that is not a spec is a :class:`UserError`."""
    try:
        classes = None if d["classes"] is None else tuple(
            (c["label"], tuple(c["from"])) for c in d["classes"])
        size, sp = d["input_size"], d["splits"]
        return TaskSpec(name=check_name(d["name"], origin), source=dict(d["source"]), classes=classes,
                        input_size=None if size is None else (int(size[0]), int(size[1])), channels=d["channels"],
                        val_fraction=sp["val_fraction"], test_fraction=sp["test_fraction"],
                        max_train=sp["max_train"], max_test=sp["max_test"], description=d["description"],
                        origin=origin)
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise UserError(f"{origin}: the recorded task spec is incomplete ({type(e).__name__}: {e}); pass the "
                        "task's spec file again") from None


def is_spec_ref(text: str) -> bool:
    """Whether a task argument is a spec path or an inline form rather than a registered name."""
    t = text.strip()
    return t.lower().endswith(SPEC_SUFFIXES) or t.startswith(INLINE)


def read_spec(path: str) -> TaskSpec:
    """Parse and validate a ``*.toml`` or ``*.json`` spec file."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"task spec {path}: cannot read ({e.strerror}); check the path") from None
    d = _decode(path, raw)
    if not isinstance(d, dict):
        raise UserError(f"task spec {path}: expected a table of fields ({', '.join(FIELDS)})")
    stem = os.path.splitext(os.path.basename(path))[0]
    return from_dict(d, path, os.path.dirname(path), default_name=stem)


def _decode(path: str, raw: bytes):
    if path.lower().endswith(".json"):
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
            raise UserError(f"task spec {path}: not valid JSON{where}; fix the syntax") from None
    import tomllib

    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"task spec {path}: not valid TOML ({e}); fix the syntax") from None


def _unknown(where: str, d: dict, valid, prefix: str = "") -> None:
    for k in d:
        if k not in valid:
            raise UserError(f"task spec {where}: unknown field '{prefix}{k}'; {did_you_mean(k, valid)}")


def from_dict(d: dict, where: str, base_dir: str, *, default_name: str | None = None) -> TaskSpec:
    """A :class:`TaskSpec` from the fields of a spec (``where`` names the file in errors; relative paths
    are resolved against ``base_dir``)."""
    _unknown(where, d, FIELDS)
    name = check_name(d.get("name", default_name), f"task spec {where}")
    if "source" not in d:
        raise UserError(f"task spec {where}: no 'source'; give source = {{image_folder = \"PATH\"}}, "
                        "{arrays = \"PATH.npz\"}, {tfds = \"NAME\"} or a built-in dataset name")
    desc = d.get("description", "")
    if not isinstance(desc, str):
        raise UserError(f"task spec {where}: description must be a string")
    splits = _splits(d.get("splits", {}), where)
    return TaskSpec(name=name, source=_source(d["source"], where, base_dir), classes=_classes(d.get("classes"), where),
                    input_size=_input_size(d.get("input_size"), where), channels=_channels(d.get("channels"), where),
                    description=desc, origin=where, **splits)


def check_name(name, where: str) -> str:
    """A task name usable as a bank folder: letters, digits, '.', '_', '-', '=', '+'."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"{where}: name {name!r} must be letters, digits, '.', '_', '-' (starting with a "
                        "letter or digit); set name = \"my_task\"")
    return name


def _path(p, where: str, field: str, base_dir: str) -> str:
    if not isinstance(p, str) or not p:
        raise UserError(f"task spec {where}: {field} must be a path string")
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(p)))


def _source(s, where: str, base_dir: str) -> dict:
    from tanas_jax.data import DATASETS

    if isinstance(s, str):
        if s not in DATASETS:
            raise UserError(f"task spec {where}: source '{s}' is not a built-in dataset; "
                            f"{did_you_mean(s, DATASETS)} (or give a table: {{image_folder = \"PATH\"}})")
        return {"dataset": s}
    if not isinstance(s, dict) or not s:
        raise UserError(f"task spec {where}: source must be a built-in dataset name or a table")
    if "image_folder" in s:
        _unknown(where, s, ("image_folder",), "source.")
        return {"image_folder": _path(s["image_folder"], where, "source.image_folder", base_dir)}
    if "arrays" in s:
        _unknown(where, s, ("arrays",), "source.")
        a = s["arrays"]
        if isinstance(a, dict):
            _unknown(where, a, ARRAY_KEYS, "source.arrays.")
            for k in ("x_train", "y_train"):
                if k not in a:
                    raise UserError(f"task spec {where}: source.arrays needs {k} (a .npy path)")
            if ("x_test" in a) != ("y_test" in a):
                raise UserError(f"task spec {where}: source.arrays needs both x_test and y_test, or neither")
            return {"arrays": {k: _path(v, where, f"source.arrays.{k}", base_dir) for k, v in a.items()}}
        return {"arrays": _path(a, where, "source.arrays", base_dir)}
    if "tfds" in s:
        _unknown(where, s, TFDS_FIELDS, "source.")
        out = {"tfds": s["tfds"], "image_key": s.get("image_key", "image"), "label_key": s.get("label_key", "label"),
               "data_dir": _path(s["data_dir"], where, "source.data_dir", base_dir) if "data_dir" in s else None}
        if not all(isinstance(out[k], str) and out[k] for k in ("tfds", "image_key", "label_key")):
            raise UserError(f"task spec {where}: source.tfds, image_key and label_key must be non-empty strings")
        return out
    k = next(iter(s))
    raise UserError(f"task spec {where}: unknown field 'source.{k}'; "
                    f"{did_you_mean(k, ('image_folder', 'arrays', 'tfds'))}")


def _selector(v, where: str):
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise UserError(f"task spec {where}: classes: {v!r} is not a class name or integer id")
    return v


def _classes(c, where: str):
    if c is None:
        return None
    if isinstance(c, list):
        out = tuple((None, (_selector(v, where),)) for v in c)
    elif isinstance(c, dict):
        out = []
        for label, v in c.items():
            sel = tuple(v) if isinstance(v, list) else (v,)
            if not sel:
                raise UserError(f"task spec {where}: classes.{label} lists no source class")
            out.append((str(label), tuple(_selector(x, where) for x in sel)))
        out = tuple(out)
    else:
        raise UserError(f"task spec {where}: classes must be a list of source classes or a table "
                        "{new_name = [source classes]}")
    if sum(REST in sel for _, sel in out) > 1:
        raise UserError(f"task spec {where}: classes: '*' (every other class) may appear once")
    if len(out) < 2:
        raise UserError(f"task spec {where}: classes gives {len(out)} class; a task needs at least 2")
    return out


def _input_size(v, where: str):
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v, v]
    if (not isinstance(v, list) or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and 4 <= x <= 512 for x in v)):
        raise UserError(f"task spec {where}: input_size must be an integer or [height, width] in 4..512")
    return (int(v[0]), int(v[1]))


def _channels(v, where: str):
    if v is None:
        return None
    if v not in (1, 3) or isinstance(v, bool):
        raise UserError(f"task spec {where}: channels must be 1 (grey) or 3 (RGB), got {v!r}")
    return int(v)


def _splits(s, where: str) -> dict:
    if not isinstance(s, dict):
        raise UserError(f"task spec {where}: splits must be a table ({', '.join(SPLIT_FIELDS)})")
    _unknown(where, s, SPLIT_FIELDS, "splits.")
    out = {}
    for k in ("val_fraction", "test_fraction"):
        if k in s:
            v = s[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise UserError(f"task spec {where}: splits.{k} must be in (0, 1), got {v!r}")
            out[k] = float(v)
    for k in ("max_train", "max_test"):
        if k in s:
            v = s[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"task spec {where}: splits.{k} must be an integer >= 1, got {v!r}")
            out[k] = v
    return out


def derived_name(path: str) -> str:
    """A task name from a path or TFDS name: its last part, unsafe characters as '_'."""
    base = os.path.basename(os.path.normpath(path)) or "task"
    stem = os.path.splitext(base)[0] if base.lower().endswith((".npz", ".npy")) else base
    name = re.sub(r"[^A-Za-z0-9._=+-]", "_", stem).lstrip("._=+-")
    return name or "task"


def parse_inline(text: str) -> TaskSpec:
    """``folder:PATH``, ``npz:PATH`` or ``tfds:NAME`` -> a spec named after the path's last part."""
    t = text.strip()
    kind, _, arg = t.partition(":")
    if not arg:
        raise UserError(f"task '{t}': give a path after '{kind}:' (e.g. folder:/data/images, npz:data.npz)")
    if kind == "tfds":
        return from_dict({"name": derived_name(arg.replace("/", "_")), "source": {"tfds": arg}}, t, os.getcwd())
    path = os.path.abspath(os.path.expanduser(arg))
    source = {"image_folder": path} if kind == "folder" else {"arrays": path}
    return from_dict({"name": derived_name(path), "source": source}, t, os.getcwd())


def spec_from_ref(text: str) -> TaskSpec:
    """A spec path or an inline form -> :class:`TaskSpec`."""
    t = text.strip()
    return parse_inline(t) if t.startswith(INLINE) else read_spec(t)
