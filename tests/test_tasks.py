"""Task registry: label maps, class counts, balancing, deterministic splits, preprocessing."""
import numpy as np
import pytest

from conftest import needs_fashion
from tanas_jax import tasks
from tanas_jax.data import DATASETS
from tanas_jax.errors import UserError


@pytest.mark.parametrize("name", tasks.task_names())
def test_every_task_label_map_is_consistent(name):
    t = tasks.get_task(name)
    lm = np.asarray(t.label_map)
    assert len(lm) == len(DATASETS[t.dataset].class_names)
    assert sorted(set(lm.tolist())) == list(range(t.num_classes))   # every task label is used
    if t.indicator:
        assert t.num_classes == 2 and lm.sum() >= 1


def test_paper8_definitions():
    g = tasks.get_task
    assert g("task0").label_map == tuple(int(c == 0) for c in range(10))
    assert g("task1").label_map == tuple(int(c == 6) for c in range(10))
    assert g("task2").label_map == tuple(c % 2 for c in range(10))
    assert g("task3").num_classes == 10 and g("task7").num_classes == 10
    assert [c for c in range(10) if g("task4").label_map[c]] == [1, 3, 8]      # automobile, cat, ship
    assert [c for c in range(10) if g("task5").label_map[c]] == [3, 8, 9]      # cat, ship, truck
    assert g("task6").class_names == ("bird", "frog", "horse", "other")
    assert tasks.resolve_tasks("paper8") == [tasks.canonical(f"task{i}") for i in range(8)]


def test_offline8_shape_mirrors_paper8():
    names = tasks.resolve_tasks("offline8")
    assert len(names) == 8
    by_ds = {}
    for n in names:
        t = tasks.get_task(n)
        by_ds.setdefault(t.dataset, []).append(t)
    assert set(by_ds) == {"mnist", "fashion_mnist"}
    for ts in by_ds.values():
        assert sorted(t.num_classes for t in ts) == [2, 2, 4, 10]
        assert sum(t.indicator for t in ts) == 2


def test_slides_cifar100_tasks():
    assert tasks.get_task("cifar100_11class").num_classes == 11
    assert tasks.get_task("cifar100_21class").num_classes == 21
    assert sum(tasks.get_task("cifar100_vehicles").label_map) == 10


def test_resolve_tasks_and_errors():
    assert tasks.resolve_tasks("task0,mnist_digit0,task3") == ["mnist_digit0", "mnist_10way"]
    with pytest.raises(UserError, match="did you mean mnist_digit0"):
        tasks.canonical("mnist_digt0")
    with pytest.raises(UserError, match="empty task list"):
        tasks.resolve_tasks(" , ")


def test_indicator_balanced_on_real_mnist_subset():
    d = tasks.load_task_data("mnist_digit0", (32, 32, 1), "bundled")
    for y in (d.y_train, d.y_val, d.y_test):
        assert (y == 1).sum() == (y == 0).sum() > 0
    assert d.y_test.sum() == 100                     # all 100 test zeros are kept
    assert d.x_train.shape[1:] == (32, 32, 1) and d.x_train.dtype == np.float32
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    # pad 28 -> 32: two blank pixels on each side
    assert np.abs(d.x_train[:, :2]).max() == 0 and np.abs(d.x_train[:, :, -2:]).max() == 0


def test_splits_deterministic_disjoint_and_seed_independent():
    a = tasks.load_task_data("mnist_10way", (28, 28, 3), "bundled")
    b = tasks.load_task_data("mnist_10way", (28, 28, 3), "bundled")
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert a.x_train.shape[-1] == 3 and np.array_equal(a.x_train[..., 0], a.x_train[..., 2])
    assert len(a.y_train) == 3600 and len(a.y_val) == 400 and len(a.y_test) == 1000
    tr = {x.tobytes() for x in a.x_train[:, :, :, 0]}
    assert not any(x.tobytes() in tr for x in a.x_val[:, :, :, 0])
    c = tasks.load_task_data("mnist_10way", (28, 28, 3), "bundled", split_seed=1)
    assert not np.array_equal(a.x_val, c.x_val)
    capped = tasks.load_task_data("mnist_10way", (28, 28, 1), "bundled", max_train=500)
    assert len(capped.y_train) == 500 and len(np.unique(capped.y_train)) == 10


def test_preprocess_normalisations():
    img = np.full((1, 32, 32, 3), 255, np.uint8)
    assert tasks.preprocess(img, (32, 32, 3), "half").max() == 1.0
    np.testing.assert_allclose(tasks.preprocess(img, (32, 32, 3), "cifar")[0, 0, 0],
                               (1 - tasks.CIFAR_MEAN) / tasks.CIFAR_STD, rtol=1e-6)
    assert tasks.preprocess(img, (28, 28, 1), "none").shape == (1, 28, 28, 1)
    with pytest.raises(UserError):
        tasks.preprocess(img, (32, 32, 3), "imagenet")


@needs_fashion
def test_fashion_tasks_real_data():
    d = tasks.load_task_data("fashion_138", (32, 32, 1), "files", max_eval=1000)
    assert d.source.startswith("files:")
    assert (d.y_train == 1).sum() == (d.y_train == 0).sum()
    four = tasks.load_task_data("fashion_4class", (32, 32, 1), "files", max_train=2000)
    assert four.num_classes == 4 and set(np.unique(four.y_train)) == {0, 1, 2, 3}


# --- user tasks: specs over a built-in dataset (the class map), spec validation --------------------
def test_spec_class_map_over_a_builtin_dataset(tmp_path):
    spec = tmp_path / "mnist_small_vs_big.toml"
    spec.write_text('source = "mnist"\nclasses = { small = [0, 1, 2], seven = ["7"], rest = "*" }\n'
                    '[splits]\nmax_train = 200\nmax_test = 50\n')
    name = tasks.canonical(str(spec))
    t = tasks.get_task(name)
    assert name == "mnist_small_vs_big" and t.class_names == ("small", "seven", "rest")
    assert t.label_map == (0, 0, 0, 2, 2, 2, 2, 1, 2, 2) and not t.indicator
    d = tasks.load_task_data(name, (28, 28, 1), "bundled", max_eval=80)
    assert d.sizes == {"train": 200, "val": 80, "test": 50}
    assert d.record()["spec"]["source"] == {"dataset": "mnist"} and len(d.record()["data_sha256"]) == 64


@pytest.mark.parametrize("text, match", [
    ('source = "mnist"\n[splits]\nval_frac = 0.2\n', "unknown field 'splits.val_frac'.*did you mean 'val_fraction'"),
    ('source = { image_folder = "x", size = 3 }\n', "unknown field 'source.size'"),
    ('source = { folder = "x" }\n', "unknown field 'source.folder'.*did you mean 'image_folder'"),
    ('source = "mnits"\n', "not a built-in dataset.*did you mean 'mnist'"),
    ('name = "a b"\nsource = "mnist"\n', "name 'a b'"),
    ('source = "mnist"\nclasses = [3]\n', "at least 2"),
    ('source = "mnist"\nclasses = { a = [1], b = [1] }\n', "listed twice"),
    ('source = "mnist"\ninput_size = 2\n', "input_size"),
    ('source = "mnist"\nchannels = 2\n', "channels must be 1"),
    ('source = "mnist"\n[splits]\nval_fraction = 1.5\n', r"splits.val_fraction must be in \(0, 1\)"),
    ('name = "mnist_10way"\nsource = "mnist"\n', "built-in task"),
    ('source = "mnist"\nclasses = [0, 1\n', "not valid TOML"),
])
def test_spec_validation_is_one_line_naming_the_file(tmp_path, text, match):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=match) as e:
        tasks.canonical(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_task_points_to_specs():
    with pytest.raises(UserError, match="docs/tasks.md"):
        tasks.canonical("no_such_task")
    with pytest.raises(UserError, match="cannot read"):
        tasks.canonical("/nonexistent/spec.toml")
