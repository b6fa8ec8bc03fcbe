"""Bank fault tests: damaged, missing and edited parts (networks, genotypes, artifacts), JSON that is not an
object, old-format entries, untrained or non-finite networks, a read-only bank, two concurrent writers,
and the bank CLI's conventions (health in ls/verify, global options after the subcommand, one-line errors)."""
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from tanas_jax.bank import Bank, inputs_digest
from tanas_jax.cli.bank import main as bank_main
from tanas_jax.config import load_config, updated
from tanas_jax.errors import CorruptEntryError, UserError

TASK, NET = "mnist_digit0", "small_cnn"


def small_cfg():
    return updated(load_config("quick"), {"train.epochs": 1, "data.max_train": 128, "data.max_eval": 100})


def tiny_tree(value=0.5):
    return {"params": {"head": {"kernel": np.full((2, 2), value, np.float32), "bias": np.zeros(2, np.float32)}}}


def tiny_metrics(**kw):
    m = {"train_accuracy": 1.0, "val_accuracy": 1.0, "test_accuracy": 0.95, "test_loss": 0.2, "epsilon": 0.1,
         "reached_epsilon": True, "epochs": 1, "steps": 1, "batch_size": 1, "wall_s": 0.0, "compile_s": 0.0,
         "history": [{"epoch": 1, "last_loss": 0.1, "val_accuracy": 1.0}], "n_params": 6}
    return dict(m, **kw)


@pytest.fixture
def fake_train(monkeypatch):
    """Replace the real training with an instant one; ``calls`` records every training."""
    calls = []
    state = {"tree": tiny_tree(), "metrics": tiny_metrics()}

    def train_network(data, net, cfg, seed, progress=True, desc=None):
        calls.append((data.task, net, seed))
        return state["tree"], state["metrics"]

    monkeypatch.setattr("tanas_jax.train.train_network", train_network)
    return calls, state


@pytest.fixture
def never_train(monkeypatch):
    def train_network(*a, **k):
        raise AssertionError("trained, but the bank entry should have been refused before any training")

    monkeypatch.setattr("tanas_jax.train.train_network", train_network)


def banked_network(bank, seed=0):
    meta = {"num_classes": 2, "metrics": tiny_metrics(), "data": {"source": "test", "sizes": {"train": 1}}}
    bank.save_network(TASK, NET, seed, tiny_tree(), meta)
    return bank.network_path(TASK, NET, seed)


def json_of(tensor_path):
    return tensor_path[: -len(".safetensors")] + ".json"


def edit_json(path, fn):
    rec = json.load(open(path))
    rec = fn(rec)
    json.dump(rec, open(path, "w"))


def snapshot(root):
    """Every file under ``root`` with its content hash (locks included: nothing may appear)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def ensure(bank, **kw):
    from tanas_jax.train import ensure_network

    return ensure_network(bank, TASK, 0, kw.pop("cfg", small_cfg()), progress=False, log=kw.pop("log", print), **kw)


def assert_refusal(err, path, *commands):
    msg = str(err)
    assert path in msg, msg
    for c in commands:
        assert c in msg, msg


# --- networks: edited, damaged, missing parts -------------------------------------------------------
EDITS = {
    "accuracy": lambda r: {**r, "metrics": {**r["metrics"], "test_accuracy": 1.0}},
    "reached_epsilon": lambda r: {**r, "metrics": {**r["metrics"], "reached_epsilon": False}},
    "num_classes": lambda r: {**r, "num_classes": 10},
    "net": lambda r: {**r, "net": "lenet"},
    "list": lambda r: [r],
    "no_record_checksum (format v1)": lambda r: {k: v for k, v in r.items() if k not in ("record_sha256", "format")},
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_network_metadata_fails_verify_and_is_refused(bank, edit, never_train):
    p = banked_network(bank)
    edit_json(json_of(p), EDITS[edit])
    with pytest.raises(CorruptEntryError) as e:
        bank.load_network(TASK, NET, 0)
    fix = f"bin/bank rm {TASK} --net {NET} --seed 0 --bank {bank.root}"
    assert_refusal(e.value, json_of(p), fix, "--retrain")
    with pytest.raises(CorruptEntryError) as e:     # never retrained silently: the training sentinel is not hit
        ensure(bank)
    assert_refusal(e.value, json_of(p), fix)
    [rec] = [r for r in bank.verify() if r["entry"] == "network"]
    assert rec["health"] == "damaged" and not rec["ok"] and rec["path"] == p


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_network_tensors_are_refused_with_the_fix(bank, damage, never_train):
    p = banked_network(bank)
    data = bytearray(open(p, "rb").read())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-1] ^= 0xFF
    open(p, "wb").write(bytes(data))
    with pytest.raises(CorruptEntryError) as e:
        ensure(bank)
    assert_refusal(e.value, p, f"bin/bank rm {TASK} --net {NET} --seed 0", f"bin/train --task {TASK}", "--retrain")
    assert open(p, "rb").read() == bytes(data)      # not overwritten


def legacy_tensor_file(p):
    """Rewrite the tensor file ``p`` as entries were written before records were embedded: same tensors,
    no header record."""
    from safetensors.numpy import load, save

    data = save(load(open(p, "rb").read()))
    open(p, "wb").write(data)


@pytest.mark.parametrize("missing", ["weights", "json_of_a_legacy_entry"])
def test_incomplete_network_is_refused_not_retrained(bank, missing, never_train):
    p = banked_network(bank)
    gone, kept = (p, json_of(p)) if missing == "weights" else (json_of(p), p)
    if missing != "weights":
        legacy_tensor_file(p)
    os.unlink(gone)
    before = snapshot(bank.root)
    with pytest.raises(CorruptEntryError) as e:
        ensure(bank)
    assert_refusal(e.value, gone, "incomplete", f"bin/bank rm {TASK} --net {NET} --seed 0", "--retrain")
    assert snapshot(bank.root) == before and not os.path.exists(gone) and os.path.exists(kept)
    [rec] = bank.verify()
    assert rec["health"] == "incomplete" and gone in rec["error"]


def test_a_lost_json_rolls_forward_from_the_record_in_the_tensor_file(bank, never_train):
    """A write interrupted between the tensor file (the commit, carrying its sealed record) and its JSON:
    the next read rebuilds the same JSON, without training, and the entry is healthy."""
    p = banked_network(bank)
    want = json.load(open(json_of(p)))
    os.unlink(json_of(p))
    assert bank.has_network(TASK, NET, 0)
    variables, meta = ensure(bank)
    assert meta == want and json.load(open(json_of(p))) == want
    np.testing.assert_array_equal(variables["params"]["head"]["kernel"], tiny_tree()["params"]["head"]["kernel"])
    [rec] = bank.verify()
    assert rec["health"] == "ok"


def test_a_lost_json_is_not_rolled_forward_over_damaged_tensors(bank, never_train):
    p = banked_network(bank)
    os.unlink(json_of(p))
    data = bytearray(open(p, "rb").read())
    data[-1] ^= 0xFF                      # a tensor byte: the header record's tensors_sha256 no longer matches
    open(p, "wb").write(bytes(data))
    with pytest.raises(CorruptEntryError) as e:
        ensure(bank)
    assert_refusal(e.value, p, "damaged", "metadata file is missing", f"bin/bank rm {TASK} --net {NET} --seed 0")
    assert not os.path.exists(json_of(p))


def test_an_artifact_whose_json_was_lost_rolls_forward_without_recomputing(bank):
    def compute():
        raise AssertionError("recomputed")

    bank.cached(TASK, "fisher", {"a": 1}, lambda: ({"d": np.arange(3.0)}, {"n_examples": 10}), key_prefix="k-")
    p = bank.artifact_path(TASK, "fisher", "k-" + inputs_digest({"a": 1}))
    want = json.load(open(json_of(p)))
    os.unlink(json_of(p))
    tree, meta, hit = bank.cached(TASK, "fisher", {"a": 1}, compute, key_prefix="k-")
    assert hit and meta == want and meta["n_examples"] == 10
    np.testing.assert_array_equal(tree["d"], np.arange(3.0))


def test_retrain_and_rm_are_the_explicit_ways_out(bank, fake_train):
    calls, _ = fake_train
    p = banked_network(bank)
    edit_json(json_of(p), EDITS["accuracy"])
    with pytest.raises(CorruptEntryError):
        ensure(bank)
    assert calls == []
    _, meta = ensure(bank, retrain=True)            # explicit --retrain replaces the damaged entry
    assert calls == [(TASK, NET, 0)] and meta["metrics"]["test_accuracy"] == 0.95
    assert bank.load_network(TASK, NET, 0)[1] == meta
    os.unlink(p)
    assert bank_main(["rm", TASK, "--net", NET, "--seed", "0", "--bank", bank.root]) == 0
    assert not os.path.exists(json_of(p)) and bank.verify() == []
    ensure(bank)                                    # nothing left: trained again, not refused
    assert len(calls) == 2 and all(r["ok"] for r in bank.verify())


# --- genotypes and artifacts ---------------------------------------------------------------------------
GENO_EDITS = {
    "meta": lambda r: {**r, "meta": {**r["meta"], "test_accuracy": 1.0}},
    "genotype": lambda r: {**r, "genotype": {"ops": ["none"]}},
    "list": lambda r: [r],
    "string": lambda r: "genotype",
    "no_record_checksum (format v1)": lambda r: {k: v for k, v in r.items() if k not in ("record_sha256", "format")},
}


@pytest.mark.parametrize("edit", list(GENO_EDITS))
def test_edited_genotype_is_refused_with_the_fix(bank, edit):
    bank.save_genotype(TASK, {"ops": ["skip_connect"]}, {"test_accuracy": 0.8})
    p = bank.genotype_path(TASK)
    edit_json(p, GENO_EDITS[edit])
    with pytest.raises(CorruptEntryError) as e:
        bank.load_genotype(TASK)
    assert_refusal(e.value, p, f"bin/bank rm {TASK} --genotype")
    [rec] = bank.verify()
    assert rec["entry"] == "genotype" and rec["health"] == "damaged"


ARTIFACT_DAMAGE = ["edit_meta", "list", "flip", "no_tensors", "no_json_of_a_legacy_entry"]


@pytest.mark.parametrize("damage", ARTIFACT_DAMAGE)
def test_damaged_artifact_is_refused_not_recomputed(bank, damage):
    calls = []

    def compute():
        calls.append(1)
        return {"d": np.arange(3.0)}, {"n_examples": 10}

    bank.cached(TASK, "fisher", {"a": 1}, compute, key_prefix="k-")
    key = "k-" + inputs_digest({"a": 1})
    p = bank.artifact_path(TASK, "fisher", key)
    if damage == "edit_meta":
        edit_json(json_of(p), lambda r: {**r, "n_examples": 11})
    elif damage == "list":
        edit_json(json_of(p), lambda r: [r])
    elif damage == "flip":
        data = bytearray(open(p, "rb").read())
        data[-1] ^= 0xFF
        open(p, "wb").write(bytes(data))
    else:
        if damage != "no_tensors":
            legacy_tensor_file(p)
        os.unlink(p if damage == "no_tensors" else json_of(p))
    with pytest.raises(CorruptEntryError) as e:
        bank.cached(TASK, "fisher", {"a": 1}, compute, key_prefix="k-")
    assert_refusal(e.value, TASK, f"bin/bank rm {TASK} --artifact fisher/{key}", "--recompute")
    assert calls == [1]
    [rec] = bank.verify()
    assert rec["entry"] == "artifact" and rec["health"] == ("incomplete" if damage.startswith("no_") else "damaged")
    bank.cached(TASK, "fisher", {"a": 1}, compute, key_prefix="k-", recompute=True)   # the explicit way out
    assert calls == [1, 1] and all(r["ok"] for r in bank.verify())


# --- the training contract -----------------------------------------------------------------------------
@pytest.mark.parametrize("epochs", [0, -1])
def test_untrained_network_is_never_banked(bank, epochs):
    from tanas_jax import tasks
    from tanas_jax.train import train_network

    cfg = small_cfg()
    cfg.train.epochs = epochs          # from Python, past the config's own check
    with pytest.raises(UserError, match="epochs"):
        ensure(bank, cfg=cfg)
    assert bank.verify() == [] and not os.path.exists(os.path.dirname(bank.network_path(TASK, NET, 0)))
    data = tasks.task_data(TASK, (32, 32, 1), cfg.data, max_train=64)
    with pytest.raises(UserError, match="epochs"):
        train_network(data, NET, cfg.train, 0, progress=False)


@pytest.mark.parametrize("fault", ["nan_weights", "inf_weights", "nan_test_loss", "inf_final_loss", "no_epochs"])
def test_network_missing_its_contract_is_never_banked(bank, fake_train, fault):
    calls, state = fake_train
    if fault.endswith("weights"):
        state["tree"] = tiny_tree(np.nan if fault == "nan_weights" else np.inf)
    elif fault == "nan_test_loss":
        state["metrics"] = tiny_metrics(test_loss=float("nan"))
    elif fault == "inf_final_loss":
        state["metrics"] = tiny_metrics(history=[{"epoch": 1, "last_loss": float("inf"), "val_accuracy": 0.1}])
    else:
        state["metrics"] = tiny_metrics(epochs=0)
    with pytest.raises(UserError, match="not banked|never banked"):
        ensure(bank)
    assert calls and bank.verify() == [] and not bank.has_network(TASK, NET, 0)


def test_bank_refuses_non_finite_weights(bank):
    with pytest.raises(UserError, match="non-finite"):
        bank.save_network(TASK, NET, 0, tiny_tree(np.nan), {})
    assert bank.verify() == []


# --- a bank that cannot be written is noticed before any training ----------------------------------------
def test_read_only_bank_is_detected_before_training(bank, monkeypatch, never_train):
    real = os.access
    root = bank.root

    def access(path, mode, *a, **k):
        if mode & os.W_OK and os.path.abspath(path).startswith(root):
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(UserError, match="read-only") as e:
        ensure(bank)
    assert root in str(e.value)
    with pytest.raises(UserError, match="read-only"):
        bank.cached(TASK, "fisher", {"a": 1}, lambda: pytest.fail("computed in a read-only bank"))
    assert bank.verify() == [] and not os.path.exists(os.path.join(root, "tasks"))


def test_file_in_place_of_a_bank_folder_is_detected_before_training(bank, never_train):
    folder = os.path.dirname(bank.network_path(TASK, NET, 0))
    os.makedirs(os.path.dirname(folder))
    open(folder, "w").write("not a folder")
    with pytest.raises(UserError, match="not a folder") as e:
        ensure(bank)
    assert folder in str(e.value)


# --- two writers, one training ---------------------------------------------------------------------------
WRITER = """
import json, sys
from tanas_jax.bank import Bank, inputs_digest
from tanas_jax.config import load_config, updated
from tanas_jax.train import ensure_network

log_file = open(sys.argv[2], "a")
logs = []
def log(msg):
    logs.append(msg)
    log_file.write(msg + "\\n")
    log_file.flush()

cfg = updated(load_config("quick"), {"train.epochs": 1, "data.max_train": 128, "data.max_eval": 100})
_, meta = ensure_network(Bank(sys.argv[1]), "mnist_digit0", 0, cfg, progress=False, log=log)
print(json.dumps({"trained": any("test accuracy" in m for m in logs),
                  "waited": any("waiting" in m for m in logs), "meta": meta}))
"""


def test_two_processes_training_one_entry_train_it_once(tmp_path):
    from filelock import FileLock

    bank = Bank(str(tmp_path / "bank"))
    entry = bank.network_path(TASK, NET, 0)
    logs = [str(tmp_path / f"log{i}") for i in range(2)]
    gate = FileLock(bank.lock_path(entry))
    gate.acquire()          # both writers start while the entry is locked, so they must contend for it
    procs = []
    try:
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, bank.root, lf], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for lf in logs]
        deadline = time.time() + 600
        while not all(os.path.exists(lf) and "waiting" in open(lf).read() for lf in logs):
            assert time.time() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.2)
    finally:
        gate.release()
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sorted(r["trained"] for r in results) == [False, True], results
    stored = bank.load_network(TASK, NET, 0)[1]
    assert results[0]["meta"] == results[1]["meta"] == stored


# --- the bank CLI: health, global options, one-line errors -----------------------------------------------
def damaged_bank(bank):
    """A bank with one healthy network, one with an edited accuracy, one missing its weights, a genotype
    whose JSON is a list and an artifact whose JSON is a list."""
    banked_network(bank, 0)
    edit_json(json_of(banked_network(bank, 1)), EDITS["accuracy"])
    os.unlink(banked_network(bank, 2))
    bank.save_genotype(TASK, {"ops": ["skip_connect"]}, {})
    edit_json(bank.genotype_path(TASK), lambda r: [r])
    bank.save_artifact(TASK, "fisher", "k", {"d": np.ones(2)}, {})
    edit_json(json_of(bank.artifact_path(TASK, "fisher", "k")), lambda r: [r])


def test_ls_and_verify_show_each_entrys_health(bank, capsys):
    damaged_bank(bank)
    assert bank_main(["ls", "--json", "--bank", bank.root]) == 0
    out = json.loads(capsys.readouterr().out)
    health = {r["seed"]: r["health"] for r in out["networks"]}
    assert health == {0: "ok", 1: "damaged", 2: "incomplete"}
    assert out["networks"][0]["test_acc"] == 0.95 and out["networks"][1]["test_acc"] is None   # edited value hidden
    assert out["genotypes"][TASK]["health"] == "damaged" and not out["ok"]
    assert [p["entry"] for p in out["problems"]] == ["artifact"]
    assert bank_main(["ls", "--bank", bank.root]) == 0
    text = capsys.readouterr().out
    assert "DAMAGED" in text and "INCOMPLETE" in text and "bin/bank rm" in text
    assert bank_main(["verify", "--json", "--bank", bank.root]) == 1
    got = {(r["entry"], r.get("seed")): r["health"] for r in json.loads(capsys.readouterr().out)["entries"]}
    assert got == {("network", 0): "ok", ("network", 1): "damaged", ("network", 2): "incomplete",
                   ("genotype", None): "damaged", ("artifact", None): "damaged"}
    assert bank_main(["show", TASK, "--json", "--bank", bank.root]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["health"] for e in shown["networks"]] == ["ok", "damaged", "incomplete"]
    assert shown["genotype"] is None and shown["genotype_health"]["health"] == "damaged"
    assert bank_main(["show", TASK, "--bank", bank.root]) == 0
    assert "DAMAGED" in capsys.readouterr().out


def test_rm_removes_damaged_entries_so_they_can_be_rebuilt(bank, capsys):
    damaged_bank(bank)
    for argv in (["rm", TASK, "--net", NET, "--seed", "1"], ["rm", TASK, "--net", NET, "--seed", "2"],
                 ["rm", TASK, "--genotype"], ["rm", TASK, "--artifact", "fisher/k"]):
        assert bank_main(argv + ["--bank", bank.root]) == 0, capsys.readouterr().err
    assert [r["health"] for r in bank.verify()] == ["ok"]
    assert bank_main(["--bank", bank.root, "verify"]) == 0
    assert bank_main(["rm", TASK, "--bank", bank.root, "--json"]) == 0
    capsys.readouterr()
    assert bank.tasks() == [] and bank.verify() == []


@pytest.mark.parametrize("sub", [["ls"], ["show", TASK], ["verify"], ["rm", TASK, "--net", NET, "--seed", "0"]])
def test_global_options_before_or_after_the_subcommand(bank, capsys, sub):
    banked_network(bank)
    assert bank_main([*sub, "--bank", bank.root, "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)
    if sub[0] != "rm":
        assert bank_main(["--bank", bank.root, "--json", *sub]) == 0
        assert json.loads(capsys.readouterr().out)
        assert bank_main(["--bank", "/nonexistent", *sub, "--bank", bank.root]) == 0   # the later one wins


@pytest.mark.parametrize("sub", [[], ["ls"], ["show"], ["verify"], ["rm"]])
def test_every_subcommand_answers_help(capsys, sub):
    assert bank_main([*sub, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bin/bank") and "--bank" in out


def test_bad_bank_invocations_are_one_line_exit_2_and_leave_no_files(tmp_path, capsys, monkeypatch):
    bank = Bank(str(tmp_path / "bank"))
    banked_network(bank)
    bank.save_genotype(TASK, {"ops": ["skip_connect"]}, {})
    missing, empty, a_file = str(tmp_path / "missing"), str(tmp_path / "empty"), str(tmp_path / "file")
    os.makedirs(empty)
    open(a_file, "w").write("x")
    monkeypatch.setenv("TANAS_BANK", missing)
    monkeypatch.chdir(tmp_path)
    b = ["--bank", bank.root]
    cases = [
        [], ["lss"], ["ls", "extra", *b], ["verify", "--frobnicate", *b], ["show", *b], ["show", "a", "b", *b],
        ["show", "no_such_task", *b], ["show", "mnist_10way", *b], ["ls", "--bank"], ["--bank", missing, "ls"],
        ["ls", "--bank", a_file], ["verify", "--bank", ""], ["--bank", empty, "verify"], ["ls"],
        ["rm", *b], ["rm", TASK, "--seed", "0", *b], ["rm", TASK, "--net", NET, "--seed", "-1", *b],
        ["rm", TASK, "--net", NET, "--seed", "x", *b], ["rm", TASK, "--net", NET, "--seed", "5", *b],
        ["rm", TASK, "--net", "bad/name", *b], ["rm", TASK, "--net", "", *b], ["rm", TASK, "--net", NET,
                                                                                "--genotype", *b],
        ["rm", TASK, "--artifact", "fisher/nokey", *b], ["rm", TASK, "--artifact", "../x", *b],
        ["rm", "mnist_digit3", *b], ["rm", "no_such_task", *b], ["rm", TASK, "--net", "lenet", *b],
    ]
    usage = [[], ["lss"], ["ls", "extra", *b], ["verify", "--frobnicate", *b], ["show", *b],
             ["show", "a", "b", *b], ["ls", "--bank"], ["rm", *b], ["rm", TASK, "--seed", "0", *b]]
    before = snapshot(tmp_path)
    failures = []
    for argv in cases:
        code = bank_main(argv)
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        ok = (code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
              and not out and snapshot(tmp_path) == before)
        if argv in usage:        # usage errors point to --help
            ok = ok and lines[0].endswith("--help)") and "bin/bank" in lines[0]
        if not ok:
            failures.append((argv, code, err[-500:], out[-200:]))
    assert not failures, failures
    assert len(cases) >= 15
