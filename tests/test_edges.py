"""Issue 25, "trust at the edges": each finding of the issue with a test that failed before its fix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from jdcl_bench.cli import main
from jdcl_bench.data import datasets as D
from jdcl_bench.progress import Reporter
from jdcl_bench.runner import RunConfig, run

QUIET = Reporter(quiet=True)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in (D.DATA_ENV, D.ALLOW_NONCANONICAL_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path / "cache"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---- 1. the dataset a run loads must be the protocol's ----------------------------------------

@pytest.mark.parametrize("protocol", ["cifar100-t5", "cifar100-semi-5pct"])
def test_cifar100_protocol_refuses_a_cifar10_image_folder(tmp_path, protocol):
    from jdcl_bench.data.fixtures import write_imagefolder_fixture

    write_imagefolder_fixture(tmp_path / "c10", D.CIFAR10_CLASSES, 2, 32, fmt="png")
    r = invoke("run", "--protocol", protocol, "--method", "finetune", "--preset", "smoke", "--device", "cpu",
               "--data-dir", tmp_path / "c10", "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    msg = " ".join(r.output.split())
    assert "CIFAR-100" in msg and "10 classes instead of 100" in msg and str(tmp_path / "c10") in msg
    assert "--data-dir" in msg and "airplane" in msg
    assert not list((tmp_path / "out").rglob("metrics.json"))


def test_wrong_image_shape_and_class_names_are_named(tmp_path):
    ds = D.make_synthetic(num_classes=4, image_size=8)
    with pytest.raises(D.DatasetError, match=r"images of shape 8x8x3 \(HxWxC\) instead of 16x16x3"):
        D.check_dataset(ds, "synthetic", synthetic={"image_size": 16}, protocol="p")
    ds.classes = ["a", "b", "c", "d"]
    with pytest.raises(D.DatasetError, match="label 0: 'a' instead of 'class0'"):
        D.check_dataset(ds, "synthetic", protocol="p")
    digits = D.load_digits()
    D.check_dataset(digits, "digits", protocol="digits-t5")  # the real thing passes
    with pytest.raises(D.DatasetError, match="10 classes instead of 100"):
        D.check_dataset(digits, "cifar100", protocol="cifar100-t5")


def test_an_injected_dataset_of_another_protocol_is_refused(tmp_path):
    ds = D.make_synthetic(num_classes=6)
    with pytest.raises(D.DatasetError, match="6 classes instead of 4"):
        run(RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), device="cpu"), QUIET, dataset=ds)


# ---- 2. a user protocol's identity is its content, not its file name -------------------------

def _user_protocol(folder: Path, tasks: str = "num_tasks = 2") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "my.toml"
    f.write_text(f'description = "mine"\n[dataset]\nname = "synthetic"\n[tasks]\n{tasks}\n')
    return f


def test_same_file_name_different_content_gets_its_own_run(tmp_path):
    from jdcl_bench.runner import run_dir_for

    a = _user_protocol(tmp_path / "A")
    b = _user_protocol(tmp_path / "B", "classes = [[1, 0], [3, 2]]")
    base = dict(method="finetune", preset="smoke", out=str(tmp_path / "out"), device="cpu")
    da = run(RunConfig(str(a), **base), QUIET)
    db = run(RunConfig(str(b), **base), QUIET)
    assert da != db and da.parts[-4].startswith("my-") and db.parts[-4].startswith("my-")
    mb = json.loads((db / "metrics.json").read_text())
    assert mb["complete"] and mb["task_classes"] == [[1, 0], [3, 2]]
    assert json.loads((db / "config.json").read_text())["protocol"] == db.parts[-4]
    # the same file however its path is spelled: one run directory
    same = _user_protocol(tmp_path / "C")  # same content as A, other folder
    cfg = lambda p: RunConfig(p, "finetune", preset="smoke", out="o")  # noqa: E731
    import os
    cwd = os.getcwd()
    os.chdir(tmp_path / "A")
    try:
        dirs = {run_dir_for(cfg(p), "smoke") for p in ("my.toml", "./my.toml", str(a.resolve()), str(same))}
    finally:
        os.chdir(cwd)
    assert len(dirs) == 1 and not next(iter(dirs)).parts[2].startswith(".")


def test_builtin_protocols_keep_their_run_directories(tmp_path):
    from jdcl_bench.runner import run_dir_for

    for name in ("cifar10-t5", "digits-t5", "synthetic-t2"):
        assert run_dir_for(RunConfig(name, "jdcl", out="results"), "fast") == \
            Path(f"results/runs/{name}/jdcl/fast/seed0")


def test_a_run_directory_of_another_protocol_or_data_is_refused(tmp_path):
    from jdcl_bench.runner import RunMismatch, run_dir_for

    f = _user_protocol(tmp_path)
    cfg = RunConfig(str(f), "finetune", preset="smoke", out=str(tmp_path / "out"), device="cpu")
    d = run(cfg, QUIET)
    # a record whose protocol differs (as the old file-name keyed directories allowed)
    conf = json.loads((d / "config.json").read_text())
    conf["protocol_spec"]["task_classes"] = [[0, 2], [1, 3]]
    (d / "config.json").write_text(json.dumps(conf))
    with pytest.raises(RunMismatch, match="different protocol .*task_classes"):
        run(cfg, QUIET)
    # a resume onto other data
    d2 = run_dir_for(RunConfig("synthetic-t2", "finetune", out=str(tmp_path / "o2"), seed=3), "smoke")
    run(RunConfig("synthetic-t2", "finetune", preset="smoke", seed=3, out=str(tmp_path / "o2"), device="cpu"), QUIET)
    m = json.loads((d2 / "metrics.json").read_text())
    m["complete"] = False
    (d2 / "metrics.json").write_text(json.dumps(m))
    man = json.loads((d2 / "manifest.json").read_text())
    man["dataset"]["content_hash"] = "0" * 64
    (d2 / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(RunMismatch, match="trained on other data"):
        run(RunConfig("synthetic-t2", "finetune", preset="smoke", seed=3, out=str(tmp_path / "o2"), device="cpu"),
            QUIET)


# ---- 3. checkpoints are loaded with weights_only=True; damaged ones are clean errors ----------

class _Payload:
    """Unpickling this runs a shell command (what a crafted checkpoint.pt did on resume)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def _finished_run(tmp_path, seed=0) -> tuple[RunConfig, Path]:
    cfg = RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path / "out"), device="cpu", seed=seed)
    d = run(cfg, QUIET)
    m = json.loads((d / "metrics.json").read_text())
    m["complete"] = False  # as if killed after task 2's checkpoint: the next start resumes
    (d / "metrics.json").write_text(json.dumps(m))
    return cfg, d


def test_a_crafted_checkpoint_does_not_execute_on_resume(tmp_path):
    from jdcl_bench.records import CheckpointError

    cfg, d = _finished_run(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"phase": "task_done", "task": 0, "method": _Payload(marker), "rng": {}, "acc_rows": [],
                "seen_acc": [], "wall_s": 0.0}, d / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not loaded and nothing in it ran") as err:
        run(cfg, QUIET)
    assert not marker.exists()
    assert str(d / "checkpoint.pt") in str(err.value) and "--restart" in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not-a-checkpoint"])
def test_a_damaged_checkpoint_is_a_clean_error_and_restart_starts_afresh(tmp_path, damage):
    cfg, d = _finished_run(tmp_path)
    ckpt = d / "checkpoint.pt"
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:len(ckpt.read_bytes()) // 2])
    elif damage == "garbage":
        ckpt.write_bytes(b"\x00not a zip" * 100)
    else:
        torch.save({"weights": torch.zeros(2)}, ckpt)
    args = ["run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "smoke", "--device", "cpu",
            "--out", tmp_path / "out"]
    r = invoke(*args)
    msg = " ".join(r.output.split())
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert str(ckpt) in msg and "--restart" in msg
    r = invoke(*args, "--restart")
    assert r.exit_code == 0 and "complete" in r.output, r.output
    assert torch.load(ckpt, weights_only=True)["task"] == 1


def test_the_suites_own_checkpoints_load_with_weights_only(tmp_path):
    from jdcl_bench.records import load_checkpoint

    _, d = _finished_run(tmp_path)
    state = load_checkpoint(d / "checkpoint.pt")
    assert state["phase"] == "task_done" and isinstance(state["rng"]["ctx"], torch.Tensor)


# ---- 4. NaN: true messages, no non-finite checkpoint, hints naming the method's own keys -------

def _nan_method(nan_in_weights: bool):
    from dataclasses import dataclass

    from jdcl_bench.methods.base import Method

    @dataclass
    class Cfg:
        nan_at_task: int = 0

    class NaNMethod(Method):
        name = "nan-edge"
        Config = Cfg
        presets = {"smoke": {}}
        supports_resume_in_task = True

        def setup(self, info):
            super().setup(info)
            self.w = torch.zeros(3)

        def train_task(self, task):
            if task.index == self.cfg.nan_at_task:
                if nan_in_weights:
                    self.w[1] = float("nan")  # diverged between two loss checks
                    self.ctx.tick()
                else:
                    self.ctx.check_loss(torch.tensor(float("nan")))

        def predict(self, x):
            return torch.zeros(len(x), self.info.num_classes)

        def state_dict(self):
            return {"w": self.w}

    return NaNMethod


def test_nan_in_the_first_task_does_not_claim_a_checkpoint(tmp_path):
    from jdcl_bench.registry import METHODS
    from jdcl_bench.runner import NonFiniteLoss

    METHODS.register("nan-edge", _nan_method(False))
    try:
        with pytest.raises(NonFiniteLoss) as err:
            run(RunConfig("synthetic-t2", "nan-edge", preset="smoke", out=str(tmp_path), device="cpu"), QUIET)
    finally:
        METHODS.unregister("nan-edge")
    msg = str(err.value)
    assert "became nan in task 1" in msg and "No checkpoint has been written yet" in msg and "intact" not in msg
    assert "--set lr" not in msg  # the method has no lr


def test_a_state_with_nan_is_never_checkpointed(tmp_path):
    from jdcl_bench.registry import METHODS
    from jdcl_bench.runner import NonFiniteLoss

    METHODS.register("nan-edge", _nan_method(True))
    try:
        with pytest.raises(NonFiniteLoss, match=r"holds NaN or inf \(method\.w\); it was not checkpointed"):
            run(RunConfig("synthetic-t2", "nan-edge", preset="smoke", out=str(tmp_path), device="cpu",
                          checkpoint_every_s=0.0), QUIET)
    finally:
        METHODS.unregister("nan-edge")
    assert not list(tmp_path.rglob("checkpoint.pt"))


def test_the_hint_names_the_methods_learning_rate_key(tmp_path, monkeypatch):
    from jdcl_bench.methods.classifier import ClassifierTrainer
    from jdcl_bench.runner import NonFiniteLoss

    real = ClassifierTrainer.loss
    monkeypatch.setattr(ClassifierTrainer, "loss", lambda self, x, y: real(self, x, y) * float("nan"))
    with pytest.raises(NonFiniteLoss) as err:
        run(RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), device="cpu"), QUIET)
    msg = str(err.value)
    assert "--set classifier.lr=0.1" in msg and "--set lr=" not in msg
    # the NaN reached the weights before the check: no checkpoint was written with it
    assert not list(tmp_path.rglob("checkpoint.pt")) and "No checkpoint has been written yet" in msg


# ---- 5. protocol files: unknown keys and wrong types named; subsets tested on their classes ----

BASE = '[dataset]\nname = "synthetic"\n[tasks]\nnum_tasks = 2\n'


@pytest.mark.parametrize("text,needle", [
    ('[dataset]\nname = "synthetic"\n[tasks]\nnum_task = 4\nnum_tasks = 2\n',
     "[tasks] has unknown field(s) ['num_task']; allowed: ['class_order', 'classes', 'num_tasks']"),
    ('[dataset]\nname = "synthetic"\nsize = 8\n[tasks]\nnum_tasks = 2\n', "[dataset] has unknown field(s) ['size']"),
    (BASE + '[labels]\nregime = "full"\nper_clas = 3\n', "[labels] has unknown field(s) ['per_clas']"),
    (BASE + '[eval]\nmetric = ["final_acc"]\n', "[eval] has unknown field(s) ['metric']; allowed: ['metrics']"),
    ('labels = "full"\n' + BASE, "[labels] must be a table"),
    (BASE + '[eval]\nmetrics = "final_acc"\n', "[eval].metrics must be a list of metric names"),
    ('eval = "x"\n' + BASE, "[eval] must be a table"),
    ('description = 3\n' + BASE, "description must be a string"),
    ('[dataset]\nname = "synthetic"\n[tasks]\nnum_tasks = true\n', "[tasks].num_tasks must be an integer"),
    (BASE + '[labels]\nregime = "full"\nper_class = 3\n', "per_class has no meaning with regime = 'full'"),
    ('[dataset]\nname = "synthetic"\n[dataset.synthetic]\nclasses = 3\n[tasks]\nnum_tasks = 2\n',
     "[dataset.synthetic] has unknown field(s) ['classes']"),
])
def test_protocol_files_are_strict(tmp_path, text, needle):
    from jdcl_bench.protocol import ProtocolError, load_protocol_file

    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ProtocolError) as err:
        load_protocol_file(f)
    assert needle in str(err.value) and str(f) in str(err.value)


def test_a_protocol_of_some_classes_is_tested_on_those_classes_only(tmp_path):
    f = tmp_path / "three.toml"
    f.write_text('[dataset]\nname = "synthetic"\n[tasks]\nclasses = [[0, 1], [2]]\n')
    d = run(RunConfig(str(f), "finetune", preset="smoke", out=str(tmp_path), device="cpu"), QUIET)
    m = json.loads((d / "metrics.json").read_text())
    assert m["complete"] and m["test_classes"] == [0, 1, 2]
    # final accuracy = accuracy over the 3 covered classes' test images (16 each), not over all 4 classes
    acc = np.asarray(m["acc_matrix"][-1])
    assert m["final_acc"] == pytest.approx((acc[0] * 32 + acc[1] * 16) / 48)


# ---- 6. values out of range, show/table on bad records, umask, plugin name collisions ----------

@pytest.mark.parametrize("setting,needle", [
    ("classifier.batch_size=0", "classifier.batch_size = 0: a batch size must be >= 1"),
    ("classifier.width=0", "classifier.width = 0: the network width must be >= 1"),
    ("classifier.layers=[]", "classifier.layers = (): needs at least one stage"),
    ("classifier.layers=[2,0]", "classifier.layers = (2, 0)"),
    ("classifier.epochs=0", "classifier.epochs = 0.0: must be > 0"),
])
def test_values_out_of_range_are_config_errors(tmp_path, setting, needle):
    r = invoke("run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "smoke", "--device", "cpu",
               "--set", setting, "--out", tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output and r.exception is not None
    assert needle in " ".join(r.output.split()), r.output
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.parametrize("method,setting,needle", [
    ("jdcl", "local_steps=-1", "local_steps = -1: JDCL needs >= 1"),
    ("jdcl", "ddim_steps=0", "ddim_steps = 0: a sampler needs >= 1 step"),
    ("jdcl", "ema_decay=1.5", "ema_decay = 1.5: must be within [0, 1]"),
    ("jdcl", "global_crop_scale=0", "global_crop_scale = 0.0: a crop scale must be within (0, 1]"),
    ("jdcl", "kd_cls_weight=-1", "kd_cls_weight = -1.0: a loss weight must be >= 0"),
    ("nncsl", "buffer_size=-5", "buffer_size = -5: a count must be >= 0"),
    ("nncsl", "final_lr=-0.1", "final_lr = -0.1: a learning rate must be >= 0"),
    ("gfr", "epochs=-2", "epochs = -2"),
])
def test_the_ranges_every_method_config_follows(tmp_path, method, setting, needle):
    """Ranges that follow from a field's name (step counts, loss weights, learning rates, decays,
    crop scales), in built-in methods and baselines alike: a clear error before anything is written."""
    r = invoke("run", "--protocol", "synthetic-t2", "--method", method, "--preset", "smoke", "--device", "cpu",
               "--set", setting, "--out", tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert needle in " ".join(r.output.split()), r.output
    assert not (tmp_path / "runs").exists()


def test_every_preset_of_every_method_is_in_range():
    from jdcl_bench.config import validate
    from jdcl_bench.registry import METHODS

    checked = 0
    for name in ["finetune", "joint", "jdcl", "nncsl", "dgr", "guide", "gfr"]:
        cls = METHODS.get(name)
        for preset in cls.presets:
            validate(cls.config_for(preset, {}))
            checked += 1
    assert checked >= 15  # paper, standard, fast, smoke (and digits) of each


def test_validate_hook_on_any_config_dataclass():
    from dataclasses import dataclass, field

    from jdcl_bench.config import ConfigError, validate

    @dataclass
    class Inner:
        steps: int = 5
        gen_batch: int = 0

        def validate(self):
            return {"steps": "must be even"} if self.steps % 2 else {}

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)

    with pytest.raises(ConfigError) as err:
        validate(Outer())
    assert "inner.steps = 5: must be even" in str(err.value) and "inner.gen_batch = 0" in str(err.value)
    validate(Outer(Inner(steps=4, gen_batch=1)))


def _complete_run(tmp_path, seed=0) -> Path:
    return run(RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), device="cpu", seed=seed),
               QUIET)


def test_show_survives_a_badly_typed_metrics_file(tmp_path):
    from jdcl_bench.results import render_show_text

    d = _complete_run(tmp_path)
    good = json.loads((d / "metrics.json").read_text())
    for key, bad in [("acc_matrix", 3), ("acc_matrix", [1, "x"]), ("acc_matrix", [None]), ("seen_acc", 3),
                     ("seen_acc", {"a": 1}), ("task_classes", 3), ("task_classes", {"a": 1}), ("final_acc", "abc")]:
        (d / "metrics.json").write_text(json.dumps({**good, key: bad}))
        r = invoke("show", d)
        assert r.exit_code == 0, (key, bad, r.output)
        assert f"metrics.json's {key}" in " ".join(render_show_text(d, width=200).split()), (key, bad)


def test_table_names_every_record_it_skips_and_why(tmp_path):
    from jdcl_bench.results import load_records

    d0, d1, d2 = (_complete_run(tmp_path, seed) for seed in (0, 1, 2))
    m = json.loads((d1 / "metrics.json").read_text())
    (d1 / "metrics.json").write_text(json.dumps({**m, "final_acc": "abc"}))
    (d2 / "metrics.json").write_text(json.dumps({k: v for k, v in m.items() if k != "final_acc"}))
    df = load_records(tmp_path)
    assert list(df["seed"]) == [0]
    said = "\n".join(df.attrs["warnings"])
    assert f"skipped {d1}: metrics.json has final_acc = \"abc\" (not a number)" in said
    assert f"skipped {d2}: metrics.json has no final_acc" in said
    r = invoke("table", "--results", tmp_path)
    assert r.exit_code == 0 and str(d1) in r.output and str(d2) in r.output


def test_records_follow_the_users_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        d = _complete_run(tmp_path)
        cache = D.resolve_cache_dir()
        from jdcl_bench.data.cache import _cache_put

        _cache_put(cache, "synthetic", {"loader": "t"}, D.make_synthetic())
    finally:
        os.umask(old)
    for name in ("metrics.json", "config.json", "manifest.json", "checkpoint.pt"):
        assert (d / name).stat().st_mode & 0o777 == 0o644, name
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in cache.glob("*.npz"))


class _EP:
    def __init__(self, name, value, dist):
        self.name, self.value = name, value
        self.dist = type("Dist", (), {"name": dist})()

    def load(self):
        from importlib import import_module
        mod, attr = self.value.split(":")
        return getattr(import_module(mod), attr)


def test_a_plugin_reusing_a_builtin_name_is_warned_about_and_ignored(monkeypatch):
    from jdcl_bench import registry as R

    eps = [_EP("finetune", "jdcl_toy_plugin.ncm:NearestClassMean", "evil-plugin"),
           _EP("finetune", "jdcl_bench.methods.finetune:Finetune", "jdcl-bench"),
           _EP("joint", "jdcl_bench.methods.joint:Joint", "jdcl-bench")]
    monkeypatch.setattr(R, "entry_points", lambda group: eps)
    reg = R.Registry("method", "jdcl_bench.methods")
    with pytest.warns(R.PluginNameCollision, match="'finetune' from evil-plugin is ignored: 'finetune' is a built-in"):
        entry = reg.entry("finetune")
    assert entry.source == "jdcl-bench" and entry.load().__name__ == "Finetune"


def test_a_plugin_protocol_reusing_a_builtin_name_is_warned_about(monkeypatch, tmp_path):
    from jdcl_bench import protocol as P
    from jdcl_bench.registry import PluginNameCollision

    (tmp_path / "digits-t5.toml").write_text('[dataset]\nname = "digits"\n[tasks]\nnum_tasks = 2\n')
    ep = _EP("x", "os:getcwd", "evil-plugin")
    ep.load = lambda: str(tmp_path)
    _plugin_protocols(monkeypatch, [ep])
    with pytest.warns(PluginNameCollision, match="protocol 'digits-t5' from evil-plugin is ignored"):
        assert P.get_protocol("digits-t5").num_tasks == 5


def _plugin_protocols(monkeypatch, eps):
    """The protocol entry points the suite discovers (through the same Registry as methods)."""
    from jdcl_bench import registry as R

    monkeypatch.setattr(R, "entry_points", lambda group: eps)
    monkeypatch.setattr(R, "PROTOCOL_SOURCES", R.Registry("protocol", "jdcl_bench.protocols"))


def test_a_broken_protocol_plugin_is_listed_with_its_error_and_hides_nothing(monkeypatch):
    from jdcl_bench import protocol as P

    ep = _EP("broken", "no_such_module_xyz:protocols_dir", "broken-plugin")
    _plugin_protocols(monkeypatch, [ep])
    r = invoke("list", "protocols")
    assert r.exit_code == 0
    assert "broken (plugin entry)" in r.output and "No" in r.output and "no_such_module_xyz" in r.output
    assert "cifar10-t5" in r.output  # the built-ins are still there
    assert P.get_protocol("digits-t5").num_tasks == 5
    with pytest.raises(Exception, match="plugin entry 'broken' \\(broken-plugin\\) failed to load"):
        P.get_protocol("toy-digits-t2")  # the fixture's protocols come through the (replaced) entry points only


# ---- 7. a user's runs go to a folder of their own; the committed results/ stays readable ------

def test_runs_default_to_a_folder_of_their_own_and_table_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "smoke", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "jdcl-runs/runs/synthetic-t2/finetune/smoke/seed0/metrics.json").is_file()
    assert not (tmp_path / "results").exists()
    t = invoke("table")
    assert t.exit_code == 0 and "Fine-tune" in t.output and "synthetic-t2" in t.output


def test_table_still_reads_the_committed_results_when_asked(monkeypatch):
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    t = invoke("table", "--results", "results")
    assert t.exit_code == 0 and "cifar10-t5" in t.output and "JDCL" in t.output
    missing = invoke("table", "--results", "no-such-folder")
    assert missing.exit_code == 2 and "--results results" in " ".join(missing.output.split())


def test_a_complete_run_without_its_config_is_still_complete_and_a_resume_without_it_refuses(tmp_path):
    from jdcl_bench.runner import RunMismatch

    d = _complete_run(tmp_path)
    (d / "config.json").unlink()
    cfg = RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), device="cpu")
    assert run(cfg, QUIET) == d
    m = json.loads((d / "metrics.json").read_text())
    (d / "metrics.json").write_text(json.dumps({**m, "complete": False}))
    with pytest.raises(RunMismatch, match="holds a checkpoint of a different run"):
        run(cfg, QUIET)
