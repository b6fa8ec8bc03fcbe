"""A portable bank: ranking needs only the bases' networks and the target's data; ``bin/bank export`` /
``import`` carry chosen tasks as one checksummed archive.

One tiny real bank (MNIST digit 0 and 3 as bases, Fashion-MNIST trouser as the target) is trained once for
the module.  Its export, imported into an empty folder, ranks the target with exactly the same distances,
in a process where loading MNIST (the bases' data) fails.  Then the bad inputs: each is one ``error:``
line, exit 2, and nothing written."""
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

import pytest

from conftest import needs_fashion
from tanas_jax.bank import Bank
from tanas_jax.bank_archive import MANIFEST, export_tasks, import_archive, read_archive
from tanas_jax.cli.bank import main as bank_main
from tanas_jax.config import load_config, updated
from tanas_jax.errors import UserError

BASES, TARGET, NET = ["mnist_digit0", "mnist_digit3"], "fashion_trouser", "small_cnn"
GENOTYPE = {"normal": [["skip_connect", 0]], "note": "a stand-in genotype: the archive only carries it"}

pytestmark = needs_fashion


def tiny_cfg():
    """Tiny settings; P(closest) off (distance.bootstrap=0): these tests compare distances and Fisher counts."""
    return updated(load_config("quick"), {"train.epochs": 1, "data.max_train": 300, "data.max_eval": 100,
                                          "fisher.examples": 64, "train.net": NET, "distance.bootstrap": 0})


def rank(root: str):
    from tanas_jax.distance.table import rank_target

    return rank_target(Bank(root), TARGET, tiny_cfg(), bases=BASES, seeds=[0], log=lambda m: None)


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """The tiny bank (three networks, a genotype, the Fishers of one ranking) and that ranking."""
    from tanas_jax.train import ensure_network

    root = str(tmp_path_factory.mktemp("origin") / "bank")
    bank = Bank(root)
    for task in BASES + [TARGET]:
        ensure_network(bank, task, 0, tiny_cfg(), progress=False, log=lambda m: None)
    bank.save_genotype("mnist_digit0", GENOTYPE, {"source": "test"})
    ranked, table = rank(root)
    return {"root": root, "ranked": ranked, "table": table}


@pytest.fixture(scope="module")
def archive(origin, tmp_path_factory):
    """mnist_digit0's entries (network and genotype) exported through the CLI."""
    path = str(tmp_path_factory.mktemp("archive") / "digit0.tar.gz")
    assert bank_main(["export", "mnist_digit0", "--out", path, "--bank", origin["root"]]) == 0
    return path


@pytest.fixture
def no_mnist(monkeypatch):
    """Loading MNIST (the bases' dataset) fails; ``calls`` records every dataset asked for."""
    import tanas_jax.data
    import tanas_jax.tasks

    real, calls = tanas_jax.data.load_dataset, []

    def guarded(name, *args, **kw):
        calls.append(name)
        if name == "mnist":
            raise AssertionError("the bases' data was loaded")
        return real(name, *args, **kw)

    monkeypatch.setattr(tanas_jax.data, "load_dataset", guarded)
    monkeypatch.setattr(tanas_jax.tasks, "load_dataset", guarded)
    return calls


def files_under(root: str) -> dict:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = f.read()
    return out


# --- the portable bank ------------------------------------------------------------------------
def test_exported_bank_ranks_the_same_without_the_bases_data(origin, tmp_path, no_mnist, capsys):
    out = str(tmp_path / "bank.tar.gz")
    dest = str(tmp_path / "empty")
    os.makedirs(dest)
    assert bank_main(["export", ",".join(BASES + [TARGET]), "--out", out, "--bank", origin["root"]]) == 0
    assert bank_main(["import", out, "--bank", dest]) == 0
    printed = capsys.readouterr().out
    assert "imported network mnist_digit3 small_cnn seed 0" in printed and "imported genotype mnist_digit0" in printed
    assert Bank(dest).tasks() == sorted(BASES + [TARGET])
    assert Bank(dest).artifact_entries(TARGET) == []          # no Fishers carried: they are computed again
    ranked, table = rank(dest)
    assert table["cache"] == origin["table"]["cache"] == {"computed": 3, "reused": 1}   # 3 Fishers, again
    assert ranked == origin["ranked"]                          # exact same distances
    assert table["per_seed"] == origin["table"]["per_seed"]
    assert set(no_mnist) == {"fashion_mnist"}
    assert Bank(dest).load_genotype("mnist_digit0")[0] == GENOTYPE
    # bin/distance --target T --bases ... on the imported bank, Fishers recomputed: the same ranking
    from tanas_jax.cli.distance import main as distance_main

    sets = [a for kv in ("train.epochs=1", "data.max_train=300", "data.max_eval=100", "fisher.examples=64",
                         f"train.net={NET}", "distance.bootstrap=0") for a in ("--set", kv)]
    assert distance_main(["--target", TARGET, "--bases", ",".join(BASES), "--seeds", "0", "--bank", dest,
                          "--recompute", "--no-progress", "--out", str(tmp_path / "rank"), *sets]) == 0
    with open(tmp_path / "rank" / "result.json") as f:
        shown = json.load(f)["ranking"]
    assert [(r["base"], r["mean"], r["std"]) for r in shown] == origin["ranked"]
    assert set(no_mnist) == {"fashion_mnist"}


def test_artifacts_travel_with_with_artifacts(origin, tmp_path, no_mnist):
    out = str(tmp_path / "all.tar.gz")
    summary = export_tasks(Bank(origin["root"]), BASES + [TARGET], out, with_artifacts=True)
    assert summary["networks"] == 3 and summary["genotypes"] == 1 and summary["artifacts"] > 0
    report = import_archive(out, str(tmp_path / "dest"))
    assert len(report["imported"]) == summary["entries"] and report["skipped"] == []
    ranked, table = rank(str(tmp_path / "dest"))
    assert ranked == origin["ranked"] and table["cache"]["computed"] == 0
    again = import_archive(out, str(tmp_path / "dest"))
    assert again["imported"] == [] and len(again["skipped"]) == summary["entries"] and again["files_written"] == 0


def test_manifest_records_tasks_entries_checksums_and_versions(archive):
    import tanas_jax

    man, blobs = read_archive(archive)
    assert man["tasks"] == ["mnist_digit0"] and man["tanas_jax"] == tanas_jax.__version__
    assert man["format"] == "tanas_jax-bank-archive-v1" and man["bank_format"] == "tanas_jax-bank-v2"
    assert sorted(e["entry"] for e in man["entries"]) == ["genotype", "network"]
    assert set(man["files"]) == set(blobs) == {"tasks/mnist_digit0/genotype.json",
                                               "tasks/mnist_digit0/networks/small_cnn-seed0.json",
                                               "tasks/mnist_digit0/networks/small_cnn-seed0.safetensors"}


def test_export_takes_aliases_and_task_sets(origin, tmp_path, capsys):
    out = str(tmp_path / "x.tar.gz")
    assert bank_main(["export", "task0,mnist_digit0", "--out", out, "--bank", origin["root"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == ["mnist_digit0"]
    assert export_tasks(Bank(origin["root"]), BASES, out)["networks"] == 2


def test_a_different_entry_needs_overwrite(origin, archive, tmp_path, capsys):
    dest = str(tmp_path / "dest")
    assert bank_main(["import", archive, "--bank", dest]) == 0
    Bank(dest).save_genotype("mnist_digit0", {"other": 1}, {})
    before = files_under(dest)
    capsys.readouterr()
    assert bank_main(["import", archive, "--bank", dest]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "different genotype mnist_digit0" in err
    assert "--overwrite" in err and files_under(dest) == before
    assert bank_main(["import", archive, "--bank", dest, "--overwrite", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overwritten"] == ["genotype mnist_digit0"]
    assert report["skipped"] == ["network mnist_digit0 small_cnn seed 0"]
    assert Bank(dest).load_genotype("mnist_digit0")[0] == GENOTYPE


# --- bad input: one error line, exit 2, nothing written ----------------------------------------
def rewrite(src: str, dst: str, edit) -> str:
    """Copy the archive ``src`` to ``dst`` through ``edit(members) -> members`` ([(TarInfo, bytes)])."""
    with tarfile.open(src, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in edit(members):
            if info.isfile():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    with open(dst, "wb") as f:
        f.write(buf.getvalue())
    return dst


def flip_tensor_byte(members, fix_manifest=False):
    out, digest = [], None
    for info, data in members:
        if info.name.endswith(".safetensors"):
            data = data[:-1] + bytes([data[-1] ^ 1])
            digest = (info.name, hashlib.sha256(data).hexdigest())
        out.append((info, data))
    if fix_manifest:   # the manifest updated too: the record's own sha256 still refuses it
        man = json.loads(out[0][1])
        man["files"][digest[0]]["sha256"] = digest[1]
        out[0] = (out[0][0], json.dumps(man).encode())
    return out


def extra_member(name, kind=tarfile.REGTYPE, data=b"x"):
    def edit(members):
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        return members + [(info, data)]
    return edit


def rename_seed(members):
    """The network of seed 0 moved to seed 1's place, manifest and all: its sealed record still says 0."""
    out = []
    for info, data in members:
        if info.name == MANIFEST:
            data = data.replace(b"seed0", b"seed1").replace(b'"seed": 0', b'"seed": 1')
        else:
            info = info.replace(name=info.name.replace("seed0", "seed1"))
        out.append((info, data))
    return out


BAD_ARCHIVES = {
    "one byte of a tensor changed": (lambda m: flip_tensor_byte(m), "failed its checksum"),
    "tensor and manifest changed": (lambda m: flip_tensor_byte(m, True), "tensors failed their checksum"),
    "path traversal": (extra_member("../evil.json"), "'..' part"),
    "absolute path": (extra_member("/tmp/evil.json"), "absolute path"),
    "symlink": (extra_member("tasks/mnist_digit0/link.json", tarfile.SYMTYPE, b""), "is a link"),
    "file not in the manifest": (extra_member("tasks/mnist_digit0/extra.json"), "not listed in its manifest"),
    "no manifest": (lambda m: m[1:], f"first member is not {MANIFEST}"),
    "a listed file missing": (lambda m: m[:-1], "is missing"),
    "entry renamed": (lambda m: rename_seed(m), "records"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_bad_archives_are_refused_before_anything_is_written(archive, tmp_path, capsys, case):
    edit, why = BAD_ARCHIVES[case]
    bad = rewrite(archive, str(tmp_path / "bad.tar.gz"), edit)
    dest = str(tmp_path / "dest")
    assert bank_main(["import", bad, "--bank", dest]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and why in err and "nothing written" in err, err
    assert not os.path.exists(dest)
    assert not os.path.exists(str(tmp_path / "evil.json")) and not os.path.exists("/tmp/evil.json")


def _not_an_archive(tmp_path, archive):
    p = tmp_path / "notes.tar.gz"
    p.write_text("not an archive\n")
    return ["import", str(p)]


def _truncated(tmp_path, archive):
    with open(archive, "rb") as f:
        data = f.read()
    p = tmp_path / "cut.tar.gz"
    p.write_bytes(data[: len(data) // 2])
    return ["import", str(p)]


def _not_tar(tmp_path, archive):
    p = tmp_path / "plain.gz"
    p.write_bytes(gzip.compress(b"hello"))
    return ["import", str(p)]


BAD_CLI = {
    "not an archive": (_not_an_archive, "not a readable .tar.gz"),
    "damaged archive": (_truncated, "not a readable .tar.gz"),
    "gzip but not tar": (_not_tar, "not a readable .tar.gz"),
    "missing archive": (lambda t, a: ["import", str(t / "nope.tar.gz")], "no archive file"),
    "unknown task name": (lambda t, a: ["export", "mnist_digit0,no_such_task", "--out", str(t / "x.tar.gz")],
                          "unknown task 'no_such_task'"),
    "task not in the bank": (lambda t, a: ["export", "mnist_digit7", "--out", str(t / "x.tar.gz")],
                             "has nothing for task mnist_digit7"),
    "task set not all banked": (lambda t, a: ["export", "tanas_small", "--out", str(t / "x.tar.gz")],
                                "has nothing for task fashion_bag"),
    "empty task list": (lambda t, a: ["export", " , ", "--out", str(t / "x.tar.gz")], "empty task list"),
    "missing --out": (lambda t, a: ["export", "mnist_digit0"], "--out"),
    "--out a folder": (lambda t, a: ["export", "mnist_digit0", "--out", str(t)], "is a folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLI))
def test_bad_cli_input_is_one_error_line(origin, archive, tmp_path, capsys, case):
    make, why = BAD_CLI[case]
    argv = make(tmp_path, archive)
    dest = str(tmp_path / "dest")
    before = files_under(origin["root"])
    bank = origin["root"] if argv[0] == "export" else dest
    assert bank_main(argv + ["--bank", bank]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and why in err, err
    assert not os.path.exists(dest) and not os.path.exists(str(tmp_path / "x.tar.gz"))
    assert files_under(origin["root"]) == before


def test_export_refuses_a_damaged_entry(origin, tmp_path, capsys):
    root = str(tmp_path / "bank")
    shutil.copytree(os.path.join(origin["root"], "tasks", "mnist_digit0"), os.path.join(root, "tasks", "mnist_digit0"))
    p = Bank(root).network_path("mnist_digit0", NET, 0)
    with open(p, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    out = str(tmp_path / "x.tar.gz")
    assert bank_main(["export", "mnist_digit0", "--out", out, "--bank", root]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "damaged" in err and "bin/bank rm" in err
    assert not os.path.exists(out)
    with pytest.raises(UserError, match="no tasks to export"):
        export_tasks(Bank(root), [], out)
