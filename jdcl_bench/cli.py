"""The ``jdcl-bench`` command line."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .config import ConfigError, settings_overrides
from .protocol import ProtocolError
from .registry import METHODS, RegistryError

USER_ERRORS = (ConfigError, ProtocolError, RegistryError)
# where runs land by default (runner.DEFAULT_OUT; not imported from runner: it pulls in torch)
DEFAULT_OUT = "jdcl-runs"


def _fail(exc: Exception) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="jdcl-bench")
def main() -> None:
    """Continual learning with generative replay: run protocols, build leaderboards."""


@main.command("list")
@click.argument("what", type=click.Choice(["protocols", "methods"]))
def list_cmd(what: str) -> None:
    """List registered protocols or methods, with where each comes from."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    if what == "protocols":
        from .protocol import list_protocols

        for col in ("name", "dataset", "tasks", "labels", "description", "from"):
            table.add_column(col)
        for p in list_protocols():
            labels = {"full": lambda: "all", "per_class": lambda: f"{p.per_class}/class",
                      "fraction": lambda: f"{p.fraction:.0%} per class",
                      "index_file": lambda: f"{p.per_class}/class (index file)"}.get(p.label_regime, lambda: "?")()
            table.add_row(p.name, p.dataset, str(p.num_tasks), labels, p.description, p.source)
    else:
        for col in ("name", "description", "capabilities", "from"):
            table.add_column(col)
        for e in METHODS.entries():
            try:
                cls = e.load()
                caps = [c for c, on in (("unlabelled", cls.uses_unlabelled), ("generator", cls.has_generator),
                                        ("buffer", cls.stores_buffer)) if on]
                table.add_row(e.name, cls.description, ", ".join(caps) or "-", e.source)
            except RegistryError:
                table.add_row(e.name, f"[red]failed to load: {e.error}[/red]", "-", e.source)
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


def _emit(text: str, output: str | None) -> None:
    """Print, or write atomically to a file (a table being regenerated is never left half-written)."""
    if output:
        from .records import atomic_write_bytes

        atomic_write_bytes(Path(output), text.encode())
        click.echo(f"wrote {output}")
    else:
        click.echo(text)


@main.command()
@click.option("--protocol", required=True, help="Protocol name (see `list protocols`) or path to a .toml file.")
@click.option("--method", required=True, help="Method name (see `list methods`).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--preset", default=None, help="Method preset: paper (default), fast, smoke, ...")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")
@click.option("--config", "settings_file", default=None, type=click.Path(), metavar="FILE.toml",
              help="Method settings from a TOML file (config fields as keys, tables for nested configs); "
                   "checked like --set, and --set wins over it.")
@click.option("--data-dir", default=None, type=click.Path(), help="Dataset root (default: $JDCL_BENCH_DATA).")
@click.option("--download", is_flag=True, help="Download the dataset if it is missing.")
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(),
              help="Results folder (the repository's results/ holds the committed records).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--time-limit", default=None, type=float, help="Stop cleanly (checkpointed) after this many seconds.")
@click.option("--checkpoint-every", default=600.0, show_default=True, type=float,
              help="Seconds between checkpoints inside a task.")
@click.option("--restart", is_flag=True,
              help="Start the run afresh: remove its checkpoint and records first (instead of resuming).")
@click.option("--stop-between-tasks", is_flag=True,
              help="With --time-limit: stop only between tasks (never inside one), before a task that the "
                   "tasks so far say would not finish (a task that opened a process counts its compilation); "
                   "the checkpoint left is small enough to carry between machines.")
def run(protocol, method, seed, preset, sets, settings_file, data_dir, download, out, device, time_limit,
        checkpoint_every, restart, stop_between_tasks) -> None:
    """Run one experiment; resumes if the run directory already holds a checkpoint."""
    from .data.datasets import DatasetError
    from .progress import Reporter
    from .records import CheckpointError, RunLocked, read_json
    from .runner import NonFiniteLoss, RunConfig, run as run_experiment

    cfg = RunConfig(protocol=protocol, method=method, seed=seed, preset=preset, data_dir=data_dir, out=out,
                    device=device, time_limit_s=time_limit, checkpoint_every_s=checkpoint_every, download=download,
                    restart=restart, stop_between_tasks=stop_between_tasks)
    try:
        cfg.overrides = settings_overrides(settings_file, sets)
        run_dir = run_experiment(cfg, Reporter())
    except (*USER_ERRORS, DatasetError, RunLocked, NonFiniteLoss, CheckpointError) as exc:
        _fail(exc)
    if os.environ.get("RANK", "0") != "0":
        return  # a torchrun worker other than rank 0: rank 0 reports the run
    metrics_path = Path(run_dir) / "metrics.json"
    if not metrics_path.exists():
        click.echo(f"stopped before the first task finished; run the same command again to resume ({run_dir})")
        return
    m = read_json(metrics_path)
    state = "complete" if m["complete"] else f"stopped after task {m['tasks_done']}/{m['num_tasks']} (run again to resume)"
    click.echo(f"\n{m['method_label']} on {protocol} (seed {seed}): {state}\n"
               f"  final accuracy {m['final_acc']:.2f}%   average incremental {m['avg_inc_acc']:.2f}%   "
               f"forgetting {m['forgetting']:.2f} pp\n  run directory: {run_dir}")


@main.command()
@click.option("--protocol", required=True, help="Protocol name or .toml path: its dataset's reference classifier.")
@click.option("--data-dir", default=None, type=click.Path(), help="Dataset root (default: $JDCL_BENCH_DATA).")
@click.option("--device", default="auto", show_default=True)
def reference(protocol, data_dir, device) -> None:
    """Train (or load) the dataset's reference classifier of the replay diagnostics and report it.

    Runs do this on first use; doing it once beforehand keeps parallel runs from training it each."""
    from .data.datasets import DatasetError, load_dataset
    from .protocol import get_protocol
    from .replay_quality import for_dataset
    from .runner import resolve_device

    try:
        p = get_protocol(protocol)
        ds = load_dataset(p.dataset, data_dir=data_dir, image_size=p.image_size, class_names=p.class_names,
                          synthetic=p.synthetic)
    except (*USER_ERRORS, DatasetError) as exc:
        _fail(exc)
    diag = for_dataset(ds, resolve_device(device), flip=p.hflip, log=click.echo)
    click.echo(f"{p.dataset}: reference classifier {100 * diag.reference_acc:.2f} % on the test set "
               f"({diag.cache_note})")


def _per_gpu(value: str, spec, records: str) -> int:
    """``--per-gpu``: a number, or ``auto`` (the sweep's cells' measured best on this GPU model)."""
    from .sweep import measured_per_gpu

    if value != "auto":
        try:
            return int(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is neither a number nor 'auto'", param_hint="--per-gpu") from None
    import torch

    gpu = torch.cuda.get_device_name(0) if spec.device != "cpu" and torch.cuda.is_available() else None
    n, why = measured_per_gpu(records, gpu, spec.methods, spec.protocols, spec.preset)
    click.echo(f"--per-gpu auto: {n} ({why})")
    return n


@main.command()
@click.option("--methods", multiple=True, required=True, help="Method names, comma-separated or repeated.")
@click.option("--protocols", multiple=True, required=True, help="Protocol names or .toml paths, comma-separated or repeated.")
@click.option("--seeds", multiple=True, default=("0",), show_default=True,
              help="Seeds: 0,1,2 or an inclusive range 0-4 (comma-separated or repeated).")
@click.option("--preset", default=None, help="Method preset for every cell (default: each method's own).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override for every cell (repeatable).")
@click.option("--config", "settings_file", default=None, type=click.Path(), metavar="FILE.toml",
              help="Method settings for every cell from a TOML file; --set wins over it.")
@click.option("--data-dir", default=None, type=click.Path(), help="Dataset root (default: $JDCL_BENCH_DATA).")
@click.option("--download", is_flag=True, help="Download datasets that are missing.")
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(), help="Shared results folder.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--time-limit", default=None, type=float,
              help="Per cell: stop cleanly (checkpointed) after this many seconds. Default with submitit: "
                   "a little under --time-min.")
@click.option("--executor", default="local", show_default=True, type=click.Choice(["local", "submitit-local", "slurm"]),
              help="local: cells one after another here; submitit-local / slurm: one submitit job per cell.")
@click.option("--partition", default=None, help="Slurm partition.")
@click.option("--account", default=None, help="Slurm account.")
@click.option("--qos", default=None, help="Slurm QOS.")
@click.option("--constraint", default=None, help="Slurm constraint (e.g. a GPU type).")
@click.option("--time-min", default=600, show_default=True, type=int, help="Job time limit in minutes (submitit).")
@click.option("--gpus-per-job", default=None, type=int, help="GPUs per job (submitit; default 1, or 0 with --device cpu).")
@click.option("--cpus-per-job", default=None, type=int, help="CPUs per job (Slurm).")
@click.option("--mem-gb", default=None, type=float, help="Memory per job in GB (Slurm).")
@click.option("--max-parallel", default=None, type=int, help="Jobs running at once (submitit).")
@click.option("--wait/--no-wait", default=None,
              help="Wait for the submitit jobs to end (default: wait for submitit-local, not for slurm).")
@click.option("--per-gpu", default="1", show_default=True,
              help="Local executor: run up to this many cells side by side on each device, as subprocesses "
                   "(each manifest records how many shared it); 'auto': the N with the best throughput in a "
                   "packing record of these cells on this GPU model (--packing-records), else 1.")
@click.option("--packing-records", default="results/bench", show_default=True, type=click.Path(),
              help="Where --per-gpu auto looks for sweep-packing-*.json records (benchmarks/sweep_packing.py).")
@click.option("--gpus", default=None, help="Local executor: GPUs to pin cells to (CUDA_VISIBLE_DEVICES values, "
                                           "e.g. 0,1,2,3), --per-gpu cells on each, filled round robin.")
@click.option("--dry-run", is_flag=True, help="Only list the cells and what would run; writes nothing.")
def sweep(methods, protocols, seeds, preset, sets, settings_file, data_dir, download, out, device, time_limit, executor, partition,
          account, qos, constraint, time_min, gpus_per_job, cpus_per_job, mem_gb, max_parallel, wait, per_gpu, packing_records,
          gpus, dry_run) -> None:
    """Run methods x protocols x seeds, skipping cells whose run is already complete.

    Cells that are not complete run (resuming from their checkpoint); a failing cell is reported
    and the sweep goes on. The exit status is 1 if any cell failed. Running the same sweep again
    picks up where it left off.
    """
    from rich.console import Console

    from . import sweep as sw

    try:
        spec = sw.SweepSpec(methods=sw.split_list(methods), protocols=sw.split_list(protocols),
                            seeds=sw.parse_seeds(seeds), preset=preset, overrides=settings_overrides(settings_file, sets),
                            data_dir=data_dir,
                            out=out, device=device, time_limit_s=time_limit, download=download)
        opts = sw.SubmititOptions(partition=partition, account=account, qos=qos, constraint=constraint,
                                  time_min=time_min, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
                                  mem_gb=mem_gb, max_parallel=max_parallel)
        pack = sw.PackOptions(per_gpu=_per_gpu(per_gpu, spec, packing_records),
                              gpus=sw.split_list(gpus) if gpus else None)
        results = sw.sweep(spec, executor=executor, opts=opts, wait=wait, dry_run=dry_run, log=click.echo, pack=pack)
    except (*USER_ERRORS, ValueError, RuntimeError) as exc:  # RuntimeError: submitit missing or refusing
        _fail(exc)
    title = f"sweep: {len(results)} cell(s) in {out}" + (" (dry run)" if dry_run else "")
    Console(width=200 if not sys.stdout.isatty() else None).print(sw.summary_table(results, title=title))
    if any(r.status == "submitted" for r in results):
        click.echo("run the same sweep again once the jobs have ended: complete cells show as skipped")
    if any(r.status == "failed" for r in results):
        sys.exit(1)


@main.command()
@click.option("--results", default=DEFAULT_OUT, show_default=True, type=click.Path(),
              help="Folder of run records (`--results results`: the committed leaderboard runs).")
@click.option("--format", "fmt", default="markdown", show_default=True, type=click.Choice(["markdown", "latex", "csv"]))
@click.option("--metric", "metrics", multiple=True, default=("final_acc",), show_default=True,
              help="final_acc, avg_acc, avg_inc_acc, forgetting, gpu_minutes, wall_minutes (repeatable).")
@click.option("--protocol", "protocols", multiple=True, help="Only these protocols (repeatable; in this order).")
@click.option("--preset", "presets", multiple=True,
              help="Only the tables of these preset tiers (repeatable): standard, paper, fast, smoke, unknown "
                   "(records without a preset); a preset's tier is its name up to the first '-' (fast-5120: fast).")
@click.option("--all", "show_all", is_flag=True,
              help="Every tier: the standard and paper tables, then one table per other tier, labelled.")
@click.option("--output", "-o", default=None, type=click.Path(), help="Write to a file instead of stdout.")
def table(results, fmt, metrics, protocols, presets, show_all, output) -> None:
    """Leaderboard: the budget-matched table (preset standard, missing cells said so), the paper table,
    and with --all or --preset every other tier in a table of its own; mean ± std over seeds."""
    from . import results as lb

    try:
        df = lb.load_records(results)
    except FileNotFoundError as exc:
        _fail(exc)
    for w in df.attrs.get("warnings", []):
        click.secho(f"warning: {w}", fg="yellow", err=True)
    if df.empty:
        _fail(RegistryError(f"no complete run records under {results}; run `jdcl-bench run ...` first"))
    if presets and show_all:
        _fail(click.UsageError("--preset and --all exclude each other: --all shows every tier"))
    try:
        tabs, left_out = lb.tier_tables(df, metric=list(metrics), protocols=list(protocols) or None,
                                        tiers=list(presets) or None, include_all=show_all)
    except ValueError as exc:
        _fail(exc)
    for tab in tabs:
        for w in tab.attrs.get("warnings", []):
            click.secho(f"warning: {w}", fg="yellow", err=True)
    if left_out:
        click.secho("note: " + lb.left_out_sentence(left_out).replace("`", ""), err=True)
    if df.attrs.get("incomplete"):
        click.secho(f"note: {len(df.attrs['incomplete'])} run(s) still in progress are not in the table", err=True)
    _emit(lb.render_tiers(tabs, left_out, fmt), output)


@main.command()
@click.option("--results", default=DEFAULT_OUT, show_default=True, type=click.Path(),
              help="Folder of run records (`--results results`: the committed leaderboard runs).")
@click.option("--published", default=None, type=click.Path(),
              help="TOML of published numbers (default: RESULTS/published.toml, else the repository's results/published.toml).")
@click.option("--output", "-o", default=None, type=click.Path(), help="Write to a file instead of stdout.")
def compare(results, published, output) -> None:
    """Published numbers next to the suite's runs of the same method and protocol, with both budgets."""
    from .results import compare as cmp
    from . import results as lb

    if published is None:
        # the user's folder may have its own; else the repository's committed list of published numbers
        own = Path(results) / "published.toml"
        repo = Path(__file__).resolve().parent.parent / "results" / "published.toml"
        published = own if own.is_file() or not repo.is_file() else repo
    published = Path(published)
    if not published.is_file():
        _fail(FileNotFoundError(f"no published-results file at {published}; pass --published PATH"))
    try:
        pub = cmp.load_published(published)
        df = lb.load_records(results)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    text = ("# Published results vs this suite\n\nGenerated by `jdcl-bench compare` from the run records under "
            f"`{results}` and the published numbers in `{published}`; do not edit by hand.\n\n"
            + cmp.render_comparison(cmp.comparison(df, pub)))
    _emit(text, output)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def show(run_dir) -> None:
    """A run's config, per-task accuracy matrix, timings and artefacts."""
    from rich.console import Console

    from .results import render_show

    try:
        out = render_show(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    Console().print(out)


@main.command()
@click.option("--results", default=DEFAULT_OUT, show_default=True, type=click.Path(),
              help="Folder of run records (`--results results`: the committed leaderboard runs).")
@click.option("--out-dir", default=None, type=click.Path(), help="Where to write PNGs (default: the results folder).")
@click.option("--protocol", "protocols", multiple=True, help="Only these protocols (default: all with records).")
@click.option("--x", "x_axis", type=click.Choice(["tasks", "gpu-minutes"]), default="tasks", show_default=True,
              help="tasks: seen-class accuracy after each task; gpu-minutes: final accuracy and replay fidelity "
                   "against the runs' GPU-minutes (also writes a Markdown table beside the PNG).")
@click.option("--method", "methods", multiple=True, help="Only runs of these methods (registry names).")
@click.option("--curves", "curve_runs", multiple=True, type=click.Path(),
              help="Instead: the training curves of these run directories (their curves.jsonl: loss against "
                   "step, a panel per stage, a line per task), one PNG each, curves.png in the run directory "
                   "or <run name>.png under --out-dir.")
def plot(results, out_dir, protocols, x_axis, methods, curve_runs) -> None:
    """One PNG per protocol: accuracy over the tasks, or accuracy against compute (--x gpu-minutes);
    or the training curves of single runs (--curves RUN_DIR)."""
    from .results import load_records
    from .results.plots import (compute_curve, compute_curve_markdown, plot_compute_curve, plot_seen_accuracy,
                                plot_training_curves, read_curves)

    if curve_runs:
        for run in map(Path, curve_runs):
            try:
                curves = read_curves(run)
            except ValueError as exc:
                _fail(exc)
            name = "_".join(run.resolve().parts[-4:])
            target = Path(out_dir) / f"{name}.png" if out_dir else run / "curves.png"
            click.echo(f"wrote {plot_training_curves(curves, target, title=name)}")
        return

    try:
        df = load_records(results)
    except FileNotFoundError as exc:
        _fail(exc)
    if methods:
        df = df[df["method"].isin(methods)]
    if df.empty:
        _fail(RegistryError(f"no complete run records under {results}" + (f" for methods {list(methods)}" if methods else "")))
    out_dir = Path(out_dir or results)
    for p in protocols or sorted(df["protocol"].unique()):
        try:
            if x_axis == "tasks":
                path = plot_seen_accuracy(df, p, out_dir / f"seen_accuracy_{p}.png")
            else:
                curve = compute_curve(df, p)
                path = plot_compute_curve(curve, p, out_dir / f"compute_curve_{p}.png")
                table = out_dir / f"compute_curve_{p}.md"
                table.write_text(compute_curve_markdown(curve, p))
                click.echo(f"wrote {table}")
        except ValueError as exc:
            _fail(exc)
        click.echo(f"wrote {path}")


# `jdcl-bench bench` lives beside the bench it drives
from .bench_command import bench  # noqa: E402

main.add_command(bench)


if __name__ == "__main__":
    main()
