import json
import time

import pytest
from click.testing import CliRunner

from jdcl_bench.cli import main


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list_methods_shows_builtins_and_the_installed_plugin():
    r = invoke("list", "methods")
    assert r.exit_code == 0
    for name in ("finetune", "joint", "jdcl"):
        assert name in r.output
    # tests/plugin_fixture is a separate distribution registering through the entry point
    assert "toy-ncm" in r.output and "jdcl-bench-toy-plugin" in r.output
    # its broken method is listed as broken, and breaks nothing else
    assert "toy-broken" in r.output and "failed to load" in r.output


def test_plugin_method_and_protocol_run_and_pass_conformance(tmp_path):
    from jdcl_bench.testing import check_method

    assert "toy-digits-t2" in invoke("list", "protocols").output
    r = invoke("run", "--protocol", "toy-digits-t2", "--method", "toy-ncm", "--preset", "smoke", "--device", "cpu",
               "--out", str(tmp_path))
    assert r.exit_code == 0 and "complete" in r.output
    check_method("toy-ncm", workdir=tmp_path / "kit")


def test_broken_plugin_fails_alone(tmp_path):
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "toy-broken", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "failed to load" in r.output and "broken on purpose" in r.output


def test_unknown_names_list_the_known_ones(tmp_path):
    r = CliRunner().invoke(main, ["run", "--protocol", "cifar10-t5", "--method", "jdlc", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown method 'jdlc'" in r.output and "jdcl" in r.output and "finetune" in r.output
    r = CliRunner().invoke(main, ["run", "--protocol", "cifar10-t3", "--method", "jdcl", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown protocol 'cifar10-t3'" in r.output and "cifar10-t5" in r.output
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "huge",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 2 and "no preset 'huge'" in r.output and "smoke" in r.output
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "finetune", "--set", "lr=x",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown config key 'lr'" in r.output


def test_missing_cifar_fails_fast_with_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("JDCL_BENCH_DATA", raising=False)
    t0 = time.time()
    r = CliRunner().invoke(main, ["run", "--protocol", "cifar100-semi-5pct", "--method", "joint",
                                  "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and time.time() - t0 < 30
    assert str(tmp_path / "nowhere") in r.output and "cifar-100-python" in r.output and "--download" in r.output


def test_cifar100_semi_on_a_torchvision_format_fixture(tmp_path, monkeypatch):
    from jdcl_bench.data.fixtures import write_cifar_fixture

    write_cifar_fixture(tmp_path / "data", kind="cifar100", n_train_per_class=30, n_test_per_class=2)
    monkeypatch.setenv("JDCL_BENCH_CACHE", str(tmp_path / "cache"))
    # fixture files are not the official release, so their md5s differ: load them as a non-canonical variant
    monkeypatch.setenv("JDCL_BENCH_ALLOW_NONCANONICAL", "1")
    r = invoke("run", "--protocol", "cifar100-semi-5pct", "--method", "joint", "--preset", "smoke",
               "--set", "classifier.epochs=0.2", "--data-dir", str(tmp_path / "data"), "--device", "cpu",
               "--out", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    d = tmp_path / "out/runs/cifar100-semi-5pct/joint"
    m = json.loads(next(d.rglob("metrics.json")).read_text())
    assert m["complete"] and m["num_tasks"] == 10
    man = json.loads(next(d.rglob("manifest.json")).read_text())
    assert man["dataset"]["name"] == "cifar100" and man["dataset"]["canonical"] is False
    # 25 labelled per class: the fixture is not in canonical order, so the class-balanced fallback applies
    assert man["dataset"]["labels"]["labelled_total"] == 2500


def test_table_and_show_after_runs(tmp_path):
    for seed in (0, 1):
        assert invoke("run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "smoke",
                      "--seed", str(seed), "--device", "cpu", "--out", str(tmp_path)).exit_code == 0
    md = invoke("table", "--results", str(tmp_path))  # smoke runs: not in the standard table, said so
    assert md.exit_code == 0 and "| Fine-tune (lower bound) | missing |" in md.output and "--preset smoke" in md.output
    md = invoke("table", "--results", str(tmp_path), "--preset", "smoke")
    assert md.exit_code == 0 and "Fine-tune (lower bound)" in md.output and "n=2" in md.output
    tex = invoke("table", "--results", str(tmp_path), "--format", "latex", "--all")
    assert "\\toprule" in tex.output and "\\bottomrule" in tex.output and "synthetic-t2" in tex.output
    csv = invoke("table", "--results", str(tmp_path), "--format", "csv", "--metric", "final_acc",
                 "--metric", "forgetting", "--all")
    assert "forgetting" in csv.output
    show = invoke("show", str(next(tmp_path.rglob("seed0"))))
    assert show.exit_code == 0 and "synthetic-t2" in show.output
    empty = CliRunner().invoke(main, ["table", "--results", str(tmp_path / "none")])
    assert empty.exit_code != 0


def test_config_file_sets_what_set_would_and_set_wins(tmp_path):
    """--config FILE.toml: nested tables are nested configs, values pass the same typed checks, the
    same settings give the same run directory as --set, and --set wins over the file."""
    settings = tmp_path / "settings.toml"
    settings.write_text("[classifier]\nepochs = 0.2\nwidth = 8\naugment = false\n")
    out = tmp_path / "out"
    base = ["run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "smoke", "--device", "cpu",
            "--out", str(out)]
    r = invoke(*base, "--config", str(settings), "--set", "classifier.width=4")
    assert r.exit_code == 0, r.output
    cfg = json.loads(next(out.rglob("config.json")).read_text())["method_config"]["classifier"]
    assert (cfg["epochs"], cfg["width"], cfg["augment"]) == (0.2, 4, False)
    # the same settings through --set alone name the same, now complete, run
    r = invoke(*base, "--set", "classifier.epochs=0.2", "--set", "classifier.width=4",
               "--set", "classifier.augment=false")
    assert r.exit_code == 0 and len(list(out.rglob("config.json"))) == 1, r.output


@pytest.mark.parametrize("text, says", [
    ("[classifier]\nwidht = 8\n", "unknown config key 'classifier.widht'"),
    ("[classifier]\nwidth = 1.5\n", "classifier.width: expected int"),
    ("[classifier\nwidth = 8\n", "not valid TOML"),
])
def test_config_file_errors_name_the_file_or_the_key(tmp_path, text, says):
    settings = tmp_path / "bad.toml"
    settings.write_text(text)
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "smoke",
                                  "--config", str(settings), "--device", "cpu", "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and says in r.output, r.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("config.json"))
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "finetune",
                                  "--config", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "missing.toml: no such file" in r.output
