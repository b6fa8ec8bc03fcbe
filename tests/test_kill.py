"""SIGKILL fault tests for the commands that do long work: bin/train, bin/fuse, bin/search and bin/tanas.

Each command runs once uninterrupted (the reference), then in a subprocess into a fresh bank and out
folder, killed with SIGKILL once some work is saved (a bank entry or a search checkpoint).  Right after
the kill nothing may be half-written: no ``.tmp-*`` file, every JSON parses, every checkpoint loads,
every tensor file has its JSON or carries its sealed record (the next reader rolls it
forward), and ``bin/bank verify`` finds no damage.  The same
command then reruns to completion and must give the reference result: every field of ``result.json``
but wall times, paths and the reused/computed bookkeeping.

Settings are tiny and the references are shared (module fixtures); references and reruns run
in-process through the commands' ``main``, only the killed run is a real ``bin/`` process.
Ctrl-C (SIGINT) during bin/fuse exits 130 with one line naming the saved state, and a rerun resumes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

DATA = ["--data-source", "bundled", "--no-progress", "--set", "data.max_train=200", "--set", "data.max_eval=100"]
TRAIN = ["--task", "mnist_digit0,mnist_5class", "--seeds", "0", "--set", "train.epochs=1", *DATA]
SEARCH_DATA = ["--set", "search.max_train=200", "--set", "search.input_shape=(12,12,1)", "--set", "final.steps=5"]
FUSE_SPACE = "ops:none,skip_connect,max_pool_3x3,avg_pool_3x3"
FUSE = ["--task", "mnist_digit0", "--space", FUSE_SPACE, "--set", "fuse.rounds=4", "--set", "fuse.max_stages=1",
        "--set", "fuse.weight_steps=5", "--set", "fuse.alpha_steps=2", "--set", "fuse.batch_size=16",
        *SEARCH_DATA, *DATA]
# 30 cheap DARTS steps, a checkpoint every 10: the kill lands between two checkpoints
SEARCH = ["--method", "darts1", "--task", "mnist_digit0", "--space", "ops:none,skip_connect,avg_pool_3x3",
          "--set", "search.darts.steps=30", "--set", "search.darts.checkpoint_every=10",
          "--set", "search.darts.history_every=5", "--set", "search.darts.input_shape=(8,8,1)",
          "--set", "search.max_train=64", "--set", "search.input_shape=(12,12,1)", "--set", "final.steps=5", *DATA]
TANAS = ["--target", "mnist_digit6", "--bases", "mnist_digit0,mnist_5class", "--skip-baselines",
         "--set", "train.epochs=1", "--set", "fisher.examples=32", "--set", "fuse.rounds=3",
         "--set", "fuse.max_stages=1", "--set", "fuse.weight_steps=4", "--set", "fuse.alpha_steps=2",
         "--set", "fuse.batch_size=16", "--set", "distance.bootstrap=0", *SEARCH_DATA, *DATA]

# result.json fields that are not the computation's result: times, paths, what was reused
VOLATILE = {"provenance", "bank", "out", "files", "config", "reused", "computed", "timings", "status", "seconds",
            "table_text", "alpha_plot", "beta_plot", "resumed_from_round", "resumed_from_step"}


def _main(cmd: str):
    import importlib

    return importlib.import_module(f"tanas_jax.cli.{cmd}").main


def _stable(obj, root: str = ""):
    """``obj`` without wall times (``*_s``), paths below ``root`` and bookkeeping (VOLATILE)."""
    if isinstance(obj, dict):
        return {k: _stable(v, root) for k, v in obj.items() if k not in VOLATILE and not k.endswith("_s")}
    if isinstance(obj, list):
        return [_stable(v, root) for v in obj]
    if isinstance(obj, str) and root:
        return obj.replace(root, "ROOT")
    return obj


def _same(got: dict, bank: str, ref: dict) -> None:
    """``got`` (a run with ``bank``) is the reference's result, up to VOLATILE fields and the run folders."""
    assert _stable(got, os.path.dirname(bank)) == _stable(ref["result"], os.path.dirname(ref["bank"]))


def _json(path: str):
    with open(path) as f:
        return json.load(f)


def _result(out: str) -> dict:
    return _json(os.path.join(out, "result.json"))


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    """One persistent XLA cache for the module's processes (the killed one and the in-process runs)."""
    path = str(tmp_path_factory.getbasetemp() / "xla-kill")
    old = os.environ.get("TANAS_XLA_CACHE")
    os.environ["TANAS_XLA_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("TANAS_XLA_CACHE", None)
    else:
        os.environ["TANAS_XLA_CACHE"] = old


def _dirs(root, name: str) -> tuple[str, str]:
    """(bank, out) of one run: ``root/name/bank``, ``root/name/out``."""
    return str(root / name / "bank"), str(root / name / "out")


def _reference(cmd: str, argv: list, root, seed_bank=None) -> dict:
    """The uninterrupted run of ``cmd`` (in-process) into ``root/ref``: its result and folders."""
    bank, out = _dirs(root, "ref")
    if seed_bank:
        seed_bank(bank)
    assert _main(cmd)([*argv, "--bank", bank, "--out", out]) == 0
    return {"result": _result(out), "bank": bank, "out": out}


def _kill_when(cmd: str, argv: list, saved, timeout: float = 240) -> str:
    """Run ``bin/<cmd> argv`` in a subprocess, SIGKILL it as soon as ``saved()`` is true; returns its log."""
    log_path = os.path.join(os.path.dirname(argv[argv.index("--out") + 1]), f"{cmd}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", cmd), *argv], stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.time() + timeout
        while not saved() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        mid_run = proc.poll() is None and saved()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    text = open(log_path, errors="replace").read()
    assert mid_run and proc.returncode == -signal.SIGKILL, \
        f"bin/{cmd} was not killed after saving work (exit {proc.returncode}):\n{text}"
    return text


def _checkpoints(out: str, name: str) -> list[str]:
    found = []
    for dirpath, _, files in os.walk(os.path.join(out, "checkpoints")):
        found += [os.path.join(dirpath, f) for f in files if f == f"{name}.npz"]
    return found


def _carries_record(path: str) -> bool:
    """The tensor file's safetensors header holds the entry's sealed record (what a roll-forward reads)."""
    from safetensors import safe_open

    from tanas_jax.bank import HEADER_KEY

    with safe_open(path, "np") as f:
        return HEADER_KEY in (f.metadata() or {})


def _assert_nothing_half_written(*folders: str, bank: str) -> None:
    """No temp file, every JSON parses, every checkpoint loads, every tensor file has its JSON; bank verify
    is clean."""
    from tanas_jax.search import checkpoint as ckpt

    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            for f in files:
                p = os.path.join(dirpath, f)
                assert not f.startswith(".tmp-"), f"leftover temp file {p}"
                if f.endswith(".json"):
                    assert isinstance(_json(p), dict), p
                elif f.endswith(".npz"):
                    assert ckpt.load(dirpath, None, f[: -len(".npz")]) is not None, p
                elif f.endswith(".safetensors"):   # without its JSON, it must be able to roll forward
                    assert (os.path.exists(p[: -len(".safetensors")] + ".json")
                            or _carries_record(p)), f"tensor file without JSON or record: {p}"
    if os.path.isdir(bank):
        r = run_cli("bank", "--bank", bank, "verify")
        assert r.returncode == 0, r.stdout + r.stderr
        assert " 0 bad" in r.stdout, r.stdout


def _killed_then_rerun(cmd: str, argv: list, root, saved_fn, seed_bank=None) -> tuple[dict, str, str]:
    """Kill ``cmd`` once work is saved, check the folders, rerun it in-process; (result, kill log, bank)."""
    bank, out = _dirs(root, "killed")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if seed_bank:
        seed_bank(bank)
    full = [*argv, "--bank", bank, "--out", out]
    log = _kill_when(cmd, full, lambda: saved_fn(bank, out))
    assert not os.path.exists(os.path.join(out, "result.json")), "killed after it had finished"
    _assert_nothing_half_written(bank, out, bank=bank)
    assert _main(cmd)(full) == 0
    return _result(out), log, bank


# files a write may touch in place: tanas_jax/io.py (the atomic writer) and --out's write probe
IN_PLACE_OK = {"tanas_jax/io.py": 1, "tanas_jax/cli/common.py": 1}
WRITES = re.compile(r"""\.savefig\((?!buf)|open\([^)]*,\s*["'][wax]b?\+?["']|np\.savez?(_compressed)?\((?!buf)"""
                    r"""|json\.dump\(|\.write_(text|bytes)\(""")


def _code_lines(path: str) -> list[str]:
    """The file's lines with string literals blanked (a message that *mentions* np.savez is not a write)."""
    import tokenize

    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "rb") as f:
        for tok in tokenize.tokenize(f.readline):
            if tok.type == tokenize.STRING or getattr(tokenize, "FSTRING_MIDDLE", -1) == tok.type:
                (r0, c0), (r1, c1) = tok.start, tok.end
                for r in range(r0, r1 + 1):
                    a = c0 if r == r0 else 0
                    b = c1 if r == r1 else len(lines[r - 1])
                    lines[r - 1] = lines[r - 1][:a] + " " * (b - a) + lines[r - 1][b:]
    return lines


def test_every_file_is_written_atomically():
    """A kill can only leave a half-written file where a write bypasses tanas_jax.io.atomic_write_bytes."""
    found = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "tanas_jax")):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
                hits = [line.strip() for line in _code_lines(os.path.join(dirpath, f)) if WRITES.search(line)]
                if len(hits) > IN_PLACE_OK.get(rel, 0):
                    found[rel] = hits
    assert not found, f"writes that bypass tanas_jax.io.atomic_write_bytes: {found}"


# --- bin/train ---------------------------------------------------------------------------------
def _network_jsons(bank: str) -> list[str]:
    found = []
    for dirpath, _, files in os.walk(os.path.join(bank, "tasks")):
        found += [os.path.join(dirpath, f) for f in files if dirpath.endswith("networks") and f.endswith(".json")]
    return found


def _tensors(bank: str) -> dict:
    from tanas_jax.bank import Bank

    b = Bank(bank, create=False)
    return {e: b.load_network(*e)[0] for e in b.network_entries()}


def test_train_killed_reruns_to_the_uninterrupted_networks(tmp_path_factory, xla_cache):
    import jax
    import numpy as np

    root = tmp_path_factory.mktemp("train")
    ref = _reference("train", TRAIN, root)
    res, _, bank = _killed_then_rerun("train", TRAIN, root, lambda b, o: len(_network_jsons(b)) >= 1)
    assert [r["status"] for r in res["networks"]].count("reused") >= 1, res["networks"]
    _same(res, bank, ref)
    got, want = _tensors(bank), _tensors(ref["bank"])
    assert sorted(got) == sorted(want) and len(got) == 2
    for e in want:
        jax.tree_util.tree_map(np.testing.assert_array_equal, got[e], want[e])


KILL_BETWEEN_PARTS = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tanas_jax import bank
write = bank.atomic_write_json
def dying(path, obj):   # SIGKILL between a network's tensor file (the commit) and its JSON
    if path.endswith(".json") and os.sep + "networks" + os.sep in path:
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, obj)
bank.atomic_write_json = dying
from tanas_jax.cli.train import main
main({argv!r})
"""


def test_train_killed_between_the_two_parts_of_an_entry_reruns(tmp_path, xla_cache, capsys):
    bank, out = _dirs(tmp_path, "between")
    argv = [*TRAIN, "--bank", bank, "--out", out]
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_PARTS.format(root=ROOT, argv=argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert _network_jsons(bank) == [], "the kill came after the JSON: the test no longer tests the window"
    _assert_nothing_half_written(bank, out, bank=bank)      # bank verify rolls the entry forward
    assert len(_network_jsons(bank)) == 1
    assert _main("train")(argv) == 0, capsys.readouterr().err
    assert [r["status"] for r in _result(out)["networks"]][0] == "reused"


# --- bin/fuse ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuse_ref(tmp_path_factory, xla_cache):
    return _reference("fuse", FUSE, tmp_path_factory.mktemp("fuse"))


def _fuse_saved(bank, out) -> bool:
    return bool(_checkpoints(out, "fuse_checkpoint"))


def test_fuse_killed_resumes_to_the_uninterrupted_result(fuse_ref, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse_kill")
    res, _, bank = _killed_then_rerun("fuse", FUSE, root, _fuse_saved)
    (run,) = res["runs"].values()
    assert run["resumed_from_round"] >= 1, "the rerun did not resume from the checkpoint"
    _same(res, bank, fuse_ref)
    got, want = (_json(os.path.join(b, "tasks", "mnist_digit0", "genotype.json")) for b in (bank, fuse_ref["bank"]))
    assert got["genotype"] == want["genotype"]
    _assert_nothing_half_written(bank, bank=bank)


WAIT_AFTER_FIRST_CHECKPOINT = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)   # a shell's background job starts with SIGINT ignored
sys.path.insert(0, {root!r})
from tanas_jax.search import checkpoint
save = checkpoint.save
def save_then_wait(*a, **k):   # the test's Ctrl-C lands here, after the checkpoint, however fast the rounds are
    out = save(*a, **k)
    time.sleep(120)
    return out
checkpoint.save = save_then_wait
from tanas_jax.cli.fuse import main
sys.exit(main({argv!r}))
"""


def test_fuse_ctrl_c_exits_130_naming_the_saved_state_and_resumes(fuse_ref, tmp_path_factory):
    bank, out = _dirs(tmp_path_factory.mktemp("fuse_int"), "int")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    argv = [*FUSE, "--bank", bank, "--out", out]
    proc = subprocess.Popen([sys.executable, "-c", WAIT_AFTER_FIRST_CHECKPOINT.format(root=ROOT, argv=argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 240
    while not _fuse_saved(bank, out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None and _fuse_saved(bank, out), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err
    (ck,) = _checkpoints(out, "fuse_checkpoint")
    assert ck in lines[0] and "rerun" in lines[0], lines
    _assert_nothing_half_written(bank, out, bank=bank)
    assert _main("fuse")(argv) == 0
    res = _result(out)
    assert next(iter(res["runs"].values()))["resumed_from_round"] >= 1
    _same(res, bank, fuse_ref)


def test_interrupt_message_names_the_saved_state(tmp_path, capsys):
    from tanas_jax.cli.common import cli_main
    from tanas_jax.search import checkpoint as ckpt

    def interrupted(directory, after=None):
        def run(argv):
            raise ckpt.interrupted(directory, "fuse_checkpoint", after)
        return cli_main(run)([])

    assert interrupted(str(tmp_path)) == 130
    assert capsys.readouterr().err == "interrupted: nothing saved yet\n"
    assert interrupted(None) == 130
    assert capsys.readouterr().err == "interrupted: nothing saved yet (no checkpoint folder: give --out)\n"
    p = ckpt.save(str(tmp_path), "fp", {"round": 1})
    assert interrupted(str(tmp_path), "round 2") == 130
    assert capsys.readouterr().err == f"interrupted: the state after round 2 is saved in {p}; rerun the same " \
                                      "command to resume\n"


# --- bin/search --------------------------------------------------------------------------------
def test_search_killed_resumes_to_the_uninterrupted_result(tmp_path_factory, xla_cache):
    from tanas_jax.search import checkpoint as ckpt

    root = tmp_path_factory.mktemp("search")
    ref = _reference("search", SEARCH, root)

    def saved(bank, out):
        return bool(_checkpoints(out, "search_checkpoint"))

    res, _, bank = _killed_then_rerun("search", SEARCH, root, saved)
    (run,) = res["runs"]
    # killed after the step-10 checkpoint (a heavily loaded machine may let it reach a later one)
    assert run["resumed_from_step"] in (10, 20, 30), run["resumed_from_step"]
    _same(res, bank, ref)
    (ck,) = _checkpoints(str(root / "killed" / "out"), "search_checkpoint")
    assert ckpt.load(os.path.dirname(ck), None, "search_checkpoint")[0]["step"] == 30


# --- bin/tanas ---------------------------------------------------------------------------------
def test_tanas_killed_resumes_to_the_uninterrupted_result(fuse_ref, tmp_path_factory):
    root = tmp_path_factory.mktemp("tanas")
    base_genotype = os.path.join(fuse_ref["bank"], "tasks", "mnist_digit0", "genotype.json")

    def seed_bank(bank):   # mnist_digit0's genotype from the bin/fuse reference: no standard-space search
        os.makedirs(os.path.join(bank, "tasks", "mnist_digit0"))
        shutil.copy(base_genotype, os.path.join(bank, "tasks", "mnist_digit0", "genotype.json"))

    ref = _reference("tanas", TANAS, root, seed_bank)
    res, _, bank = _killed_then_rerun("tanas", TANAS, root, _fuse_saved, seed_bank)
    assert res["runs"]["task-aware"]["resumed_from_round"] >= 1
    assert any("network" in x for x in res["reused"]), res["reused"]
    _same(res, bank, ref)
