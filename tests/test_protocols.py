import numpy as np
import pytest

from jdcl_bench.protocol import ProtocolError, get_protocol, list_protocols, load_protocol_file
from jdcl_bench.registry import RegistryError
from jdcl_bench.splits import labelled_indices

BUILTIN = ["cifar10-t5", "cifar100-t5", "cifar100-t10", "imagenet100-t5", "cifar10-semi-0.8pct",
           "cifar10-semi-5pct", "cifar10-semi-25pct", "cifar100-semi-0.8pct", "cifar100-semi-5pct",
           "cifar100-semi-25pct", "digits-t5", "digits-semi-10pct", "synthetic-t2"]


def test_all_builtin_protocols_parse():
    names = {p.name for p in list_protocols()}
    assert set(BUILTIN) <= names
    for p in list_protocols():
        assert not p.description.startswith("BROKEN"), p.description


@pytest.mark.parametrize("name,n_classes,tasks,first", [
    ("cifar10-t5", 10, 5, [0, 1]), ("cifar100-t10", 100, 10, list(range(10))),
    ("cifar100-t5", 100, 5, list(range(20))), ("imagenet100-t5", 100, 5, list(range(20)))])
def test_task_splits(name, n_classes, tasks, first):
    p = get_protocol(name)
    split = p.tasks(n_classes)
    assert len(split) == tasks and split[0] == first
    assert sorted(c for t in split for c in t) == list(range(n_classes))


@pytest.mark.parametrize("name,total,per_class", [
    ("cifar10-semi-0.8pct", 400, 40), ("cifar10-semi-5pct", 2500, 250), ("cifar10-semi-25pct", 12500, 1250),
    ("cifar100-semi-0.8pct", 400, 4), ("cifar100-semi-5pct", 2500, 25)])
def test_nncsl_index_files_are_class_balanced(name, total, per_class):
    p = get_protocol(name)
    path = p.resolve_index_file()
    idx = np.loadtxt(path, dtype=np.int64)
    cls = np.loadtxt(path.with_name(path.stem + "_cls.txt"), dtype=np.int64)
    assert len(idx) == total == len(set(idx.tolist()))
    assert set(np.bincount(cls).tolist()) == {per_class}
    # a dataset in canonical order whose labels agree with the file uses the file as is
    y = np.zeros(50000, dtype=np.int64)
    y[idx] = cls
    lab, info = labelled_indices(p, y)
    assert info["regime"] == "index_file" and np.array_equal(lab, np.sort(idx))


def test_index_file_falls_back_with_warning_on_non_canonical_data():
    p = get_protocol("cifar100-semi-5pct")
    y = np.repeat(np.arange(100), 30)
    with pytest.warns(UserWarning, match="does not match"):
        lab, info = labelled_indices(p, y)
    assert info["regime"] == "per_class_fallback"
    assert set(np.bincount(y[lab]).tolist()) == {25}


def test_fraction_and_per_class_regimes():
    y = np.repeat(np.arange(4), 50)
    lab, info = labelled_indices(get_protocol("digits-semi-10pct"), y)
    assert info["per_class"] == 5 and set(np.bincount(y[lab]).tolist()) == {5}
    lab2, _ = labelled_indices(get_protocol("digits-semi-10pct"), y)
    assert np.array_equal(lab, lab2)  # fixed by the protocol, not by a run seed


def test_unknown_protocol_lists_known():
    with pytest.raises(RegistryError, match="known protocols: .*cifar10-t5"):
        get_protocol("cifar11-t5")


@pytest.mark.parametrize("text,needle", [
    ('[tasks]\nnum_tasks = 2\n', "missing table [dataset]"),
    ('[dataset]\nname = "mnist"\n[tasks]\nnum_tasks = 2\n', "[dataset].name = 'mnist' is not a known dataset"),
    ('[dataset]\nname = "cifar10"\n', "missing table [tasks]"),
    ('[dataset]\nname = "cifar10"\n[tasks]\nnum_tasks = 0\n', "[tasks].num_tasks must be an integer >= 1"),
    ('[dataset]\nname = "cifar10"\n[tasks]\nnum_tasks = 2\nclasses = [[0]]\n', "exactly one of num_tasks or classes"),
    ('[dataset]\nname = "cifar10"\n[tasks]\nclasses = [[0, 1], [1, 2]]\n', "more than one task"),
    ('[dataset]\nname = "cifar10"\n[tasks]\nnum_tasks = 2\n[labels]\nregime = "some"\n', "[labels].regime"),
    ('[dataset]\nname = "cifar10"\n[tasks]\nnum_tasks = 2\n[labels]\nregime = "fraction"\nfraction = 2\n',
     "[labels].fraction must be a number in (0, 1]"),
    ('[dataset]\nname = "cifar10"\n[tasks]\nnum_tasks = 2\n[eval]\nmetrics = ["acc"]\n', "unknown metric"),
    ('[dataset\nname = "cifar10"\n', "not valid TOML"),
    ('colour = 1\n[dataset]\nname = "cifar10"\n[tasks]\nnum_tasks = 2\n', "unknown top-level field"),
])
def test_malformed_protocol_names_field(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ProtocolError) as e:
        load_protocol_file(f)
    assert needle in str(e.value) and str(f) in str(e.value)


def test_uneven_split_needs_explicit_classes(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[dataset]\nname = "cifar10"\n[tasks]\nnum_tasks = 3\n')
    with pytest.raises(ProtocolError, match="do not split into 3 equal tasks"):
        load_protocol_file(f).tasks(10)


def test_user_protocol_by_path_with_explicit_classes(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('description = "x"\n[dataset]\nname = "digits"\n[tasks]\nclasses = [[3, 1], [0]]\n')
    p = get_protocol(str(f))
    assert p.name == "mine" and p.tasks(10) == [[3, 1], [0]] and p.num_tasks == 2


def test_hflip_is_off_for_digits_and_on_elsewhere_unless_the_file_says(tmp_path):
    assert get_protocol("digits-t5").hflip is False and get_protocol("digits-semi-10pct").hflip is False
    assert get_protocol("cifar10-t5").hflip is True and get_protocol("synthetic-t2").hflip is True
    f = tmp_path / "d.toml"
    f.write_text('[dataset]\nname = "digits"\n[tasks]\nnum_tasks = 5\n')
    assert load_protocol_file(f).hflip is False  # the dataset's default, without an [augment] table
    f.write_text('[dataset]\nname = "digits"\n[tasks]\nnum_tasks = 5\n[augment]\nhflip = true\n')
    assert load_protocol_file(f).hflip is True
    f.write_text('[dataset]\nname = "cifar10"\n[tasks]\nnum_tasks = 5\n[augment]\nhflip = false\n')
    assert load_protocol_file(f).hflip is False and load_protocol_file(f).to_dict()["hflip"] is False


@pytest.mark.parametrize("aug,needle", [('hflip = "no"', "[augment].hflip must be true or false"),
                                        ("vflip = true", "[augment] has unknown field(s) ['vflip']")])
def test_malformed_augment_table(tmp_path, aug, needle):
    f = tmp_path / "bad.toml"
    f.write_text(f'[dataset]\nname = "cifar10"\n[tasks]\nnum_tasks = 2\n[augment]\n{aug}\n')
    with pytest.raises(ProtocolError) as e:
        load_protocol_file(f)
    assert needle in str(e.value) and str(f) in str(e.value)
