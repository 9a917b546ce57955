"""Sweeps: run a grid of methods x protocols x seeds, skipping the cells that are already done.

A cell is one ``jdcl-bench run``. Its run directory follows the runner's rule
(:func:`jdcl_bench.runner.run_dir_for`, the preset defaulting to the method's ``default_preset``);
a cell whose ``metrics.json`` says ``"complete": true`` is skipped, any other one is run, which
resumes it from its last checkpoint if it has one. Executors:

- ``local``: the cells one after another in this process; a failing cell is reported and the
  sweep goes on.
- ``submitit-local`` / ``slurm``: one submitit job per cell (a job array on Slurm), each calling
  :func:`run_cell` and writing into the shared results folder; the runner writes atomically and
  locks each run directory, so parallel jobs lose nothing. submitit (the ``cluster`` extra) is
  imported only inside :func:`make_executor`.

Unknown methods, protocols, presets and ``--set`` keys fail before any cell runs
(:func:`validate`), with the same errors ``jdcl-bench run`` gives.
"""
from __future__ import annotations

import itertools
import re
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from .runner import RunConfig, run_dir_for

EXECUTORS = ("local", "submitit-local", "slurm")


@dataclass(frozen=True)
class Cell:
    method: str
    protocol: str
    seed: int

    def __str__(self) -> str:
        return f"{self.method} on {self.protocol} (seed {self.seed})"


@dataclass
class CellResult:
    """What happened to one cell. status: done, skipped (already complete), failed, stopped (time
    limit, resumable), submitted (a job is queued), pending (dry run: would run; ``resume`` when it
    has a checkpoint to resume from)."""

    cell: Cell
    status: str
    run_dir: str | None = None
    final_acc: float | None = None
    tasks_done: int | None = None
    num_tasks: int | None = None
    error: str | None = None  # one line; the full traceback is in ``details``
    details: str | None = None
    job_id: str | None = None
    resume: bool = False


@dataclass
class SweepSpec:
    """The grid and what every cell shares (the fields of :class:`RunConfig` besides the cell's own)."""

    methods: list[str]
    protocols: list[str]
    seeds: list[int]
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    out: str = "jdcl-runs"  # runner.DEFAULT_OUT
    device: str = "auto"
    time_limit_s: float | None = None
    download: bool = False

    def cells(self) -> list[Cell]:
        return expand_grid(self.methods, self.protocols, self.seeds)

    def run_config(self, cell: Cell) -> RunConfig:
        return RunConfig(protocol=cell.protocol, method=cell.method, seed=cell.seed, preset=self.preset,
                         overrides=dict(self.overrides), data_dir=self.data_dir, out=self.out, device=self.device,
                         time_limit_s=self.time_limit_s, download=self.download)


# ---- grid expansion ---------------------------------------------------------------------

def split_list(values: str | Iterable[str]) -> list[str]:
    """``"a,b"`` or ``["a,b", "c"]`` -> ``["a", "b", "c"]``, order kept, duplicates dropped."""
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        for item in str(v).split(","):
            item = item.strip()
            if item and item not in out:
                out.append(item)
    return out


def parse_seeds(values: str | Iterable[str]) -> list[int]:
    """``"0,1,2"``, ``"0-4"`` (inclusive range) or a mix of both."""
    seeds: list[int] = []
    for item in split_list(values):
        m = re.fullmatch(r"(\d+)-(\d+)", item)
        if m and int(m[1]) <= int(m[2]):
            rng = list(range(int(m[1]), int(m[2]) + 1))
        elif re.fullmatch(r"\d+", item):
            rng = [int(item)]
        else:
            raise ValueError(f"--seeds {item!r}: expected integers (0,1,2) or an inclusive range (0-4)")
        seeds += [s for s in rng if s not in seeds]
    return seeds


def expand_grid(methods: Iterable[str], protocols: Iterable[str], seeds: Iterable[int]) -> list[Cell]:
    """Every (method, protocol, seed), methods outermost, seeds innermost."""
    return [Cell(m, p, int(s)) for m, p, s in itertools.product(list(methods), list(protocols), list(seeds))]


# ---- validation and skip logic ----------------------------------------------------------

def validate(spec: SweepSpec) -> None:
    """Fail before anything runs: an unknown method or protocol raises the registry's error (which
    lists the known names), a bad preset or ``--set`` key the config's, exactly as ``run`` does."""
    from .protocol import get_protocol
    from .registry import METHODS

    if not (spec.methods and spec.protocols and spec.seeds):
        raise ValueError("a sweep needs at least one method, one protocol and one seed")
    for name in spec.methods:
        METHODS.get(name).config_for(spec.preset, spec.overrides)
    for name in spec.protocols:
        get_protocol(name)


def resolve_run_dir(cfg: RunConfig) -> Path:
    """The run directory the runner will use for ``cfg``."""
    from .registry import METHODS

    return run_dir_for(cfg, cfg.preset or METHODS.get(cfg.method).default_preset)


def read_metrics(run_dir: Path) -> dict | None:
    from .records import read_json

    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):  # unreadable: treat as not done, the runner will redo it
        return None


def _from_metrics(result: CellResult, metrics: dict | None) -> CellResult:
    if metrics:
        result.final_acc = metrics.get("final_acc")
        result.tasks_done = metrics.get("tasks_done")
        result.num_tasks = metrics.get("num_tasks")
    return result


def plan(spec: SweepSpec) -> list[tuple[Cell, RunConfig, CellResult | None]]:
    """Each cell with its run config and, for a cell that is already complete, its ``skipped``
    result; ``None`` means run it. Call :func:`validate` first."""
    out = []
    for cell in spec.cells():
        cfg = spec.run_config(cell)
        run_dir = resolve_run_dir(cfg)
        metrics = read_metrics(run_dir)
        if metrics and metrics.get("complete"):
            out.append((cell, cfg, _from_metrics(CellResult(cell, "skipped", str(run_dir)), metrics)))
        else:
            out.append((cell, cfg, None))
    return out


# ---- one cell ---------------------------------------------------------------------------

def run_cell(cfg: RunConfig, quiet: bool = False) -> CellResult:
    """Run (or resume) one cell and say how it ended; never raises for a failing run. This is what
    every executor calls, submitit jobs included (so it must stay importable at module level)."""
    from .progress import Reporter
    from .runner import run

    cell = Cell(cfg.method, cfg.protocol, cfg.seed)
    try:
        run_dir = run(cfg, Reporter(quiet=quiet))
    except Exception as exc:  # a failing cell must not take the sweep down
        first = str(exc).strip().splitlines()
        res = CellResult(cell, "failed", error=f"{type(exc).__name__}: {first[0] if first else ''}".rstrip(": "),
                         details=traceback.format_exc())
        try:  # it may have got some tasks done before failing
            run_dir = resolve_run_dir(cfg)
            res.run_dir = str(run_dir)
            _from_metrics(res, read_metrics(run_dir))
        except Exception:
            pass
        return res
    metrics = read_metrics(run_dir)
    status = "done" if metrics and metrics.get("complete") else "stopped"
    return _from_metrics(CellResult(cell, status, str(run_dir)), metrics)


# ---- executors --------------------------------------------------------------------------

def run_local(todo: list[tuple[Cell, RunConfig]], log: Callable[[str], None] = print,
              quiet: bool = False) -> list[CellResult]:
    results = []
    for i, (cell, cfg) in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] {cell}")
        res = run_cell(cfg, quiet=quiet)
        if res.status == "failed":
            log(f"[{i}/{len(todo)}] {cell} failed: {res.error}")
        results.append(res)
    return results


@dataclass
class SubmititOptions:
    """Job resources. ``time_min`` is Slurm's time limit and submitit-local's timeout;
    ``max_parallel`` caps the jobs running at once (a Slurm array's parallelism, or waves of
    submitit-local jobs, which would otherwise all start together)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 600
    gpus_per_job: int | None = None  # None: 1, or 0 for --device cpu
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    max_parallel: int | None = None
    job_name: str = "jdcl-bench"


def executor_parameters(executor: str, opts: SubmititOptions, device: str = "auto") -> dict[str, Any]:
    """The ``update_parameters`` arguments for ``executor`` ("submitit-local" or "slurm")."""
    # a CPU-only sweep asks for no GPU (submitit-local then hides the GPUs from its jobs)
    gpus = opts.gpus_per_job if opts.gpus_per_job is not None else (0 if device == "cpu" else 1)
    params: dict[str, Any] = {"timeout_min": opts.time_min, "gpus_per_node": gpus, "tasks_per_node": 1, "nodes": 1}
    if executor == "slurm":
        params["name"] = opts.job_name
        if opts.cpus_per_job is not None:
            params["cpus_per_task"] = opts.cpus_per_job
        if opts.mem_gb is not None:
            params["mem_gb"] = opts.mem_gb
        for key, value in (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos),
                           ("constraint", opts.constraint), ("array_parallelism", opts.max_parallel)):
            if value is not None:
                params[f"slurm_{key}"] = value
    return params


def make_executor(executor: str, folder: str | Path, opts: SubmititOptions, device: str = "auto"):
    """A ``submitit.LocalExecutor`` (submitit-local) or ``submitit.AutoExecutor`` on Slurm, configured."""
    try:
        import submitit
    except ImportError:
        raise RuntimeError("the submitit executors need submitit: pip install 'jdcl-bench[cluster]'") from None

    params = executor_parameters(executor, opts, device)
    if executor == "slurm":
        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    else:
        ex = submitit.LocalExecutor(folder=str(folder))
    ex.update_parameters(**params)
    return ex


def job_config(cfg: RunConfig, opts: SubmititOptions) -> RunConfig:
    """``cfg`` as a job runs it: absolute paths, and a time limit inside the job's."""
    # a job may start in another working directory (Slurm's default is the submission directory,
    # but a site can change it): absolute paths make it write into the same results folder
    cfg = replace(cfg, out=str(Path(cfg.out).resolve()),
                  data_dir=str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None)
    if cfg.time_limit_s is None:
        # stop cleanly (checkpointed, resumable by the next sweep) a little before the scheduler kills
        # the job: 5 minutes early, or 10 % of the job's time if that is shorter
        job_s = 60.0 * opts.time_min
        cfg = replace(cfg, time_limit_s=job_s - min(300.0, 0.1 * job_s))
    return cfg


def collect(todo: list[tuple[Cell, RunConfig]], jobs: list) -> list[CellResult]:
    """Wait for the jobs; a job that died (killed, timed out) is a failed cell."""
    results = []
    for (cell, cfg), job in zip(todo, jobs):
        try:
            res = job.result()
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            res = CellResult(cell, "failed", error=f"job {job.job_id}: " + (lines[-1] if lines else type(exc).__name__),
                             details=str(exc))
            run_dir = resolve_run_dir(cfg)
            res.run_dir = str(run_dir)
            _from_metrics(res, read_metrics(run_dir))  # it may have got some tasks done before dying
        res.job_id = str(job.job_id)
        results.append(res)
    return results


def run_submitit(todo: list[tuple[Cell, RunConfig]], executor: str, out: str | Path, opts: SubmititOptions,
                 device: str = "auto", wait: bool = True, log: Callable[[str], None] = print) -> list[CellResult]:
    """One job per cell; with ``wait``, block until they end and return how each did."""
    folder = Path(out).resolve() / "sweep_logs" / "%j"
    ex = make_executor(executor, folder, opts, device)
    todo = [(cell, job_config(cfg, opts)) for cell, cfg in todo]
    # Slurm throttles an array itself; LocalExecutor starts every job at once, so cap it in waves
    wave = len(todo) if executor == "slurm" or not wait or not opts.max_parallel else opts.max_parallel
    results: list[CellResult] = []
    for start in range(0, len(todo), wave):
        chunk = todo[start:start + wave]
        jobs = ex.map_array(run_cell, [cfg for _, cfg in chunk])
        log(f"submitted {len(jobs)} job(s) ({executor}): {', '.join(str(j.job_id) for j in jobs)}; "
            f"logs in {folder.parent}")
        if wait:
            results += collect(chunk, jobs)
        else:
            results += [CellResult(cell, "submitted", str(resolve_run_dir(cfg)), job_id=str(job.job_id))
                        for (cell, cfg), job in zip(chunk, jobs)]
    return results


def sweep(spec: SweepSpec, executor: str = "local", opts: SubmititOptions | None = None, wait: bool | None = None,
          dry_run: bool = False, log: Callable[[str], None] = print, quiet: bool = False) -> list[CellResult]:
    """Validate the grid, run what is not done, and return one result per cell in grid order.
    ``wait`` (submitit executors) defaults to True for submitit-local and False for Slurm."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; executors: {', '.join(EXECUTORS)}")
    validate(spec)
    planned = plan(spec)
    results: dict[Cell, CellResult] = {cell: res for cell, _, res in planned if res is not None}
    todo = [(cell, cfg) for cell, cfg, res in planned if res is None]
    if dry_run:
        for cell, cfg in todo:
            run_dir = resolve_run_dir(cfg)
            res = _from_metrics(CellResult(cell, "pending", str(run_dir)), read_metrics(run_dir))
            res.resume = (run_dir / "checkpoint.pt").exists()
            results[cell] = res
    elif todo:
        if executor == "local":
            ran = run_local(todo, log=log, quiet=quiet)
        else:
            ran = run_submitit(todo, executor, spec.out, opts or SubmititOptions(), spec.device,
                               wait=executor != "slurm" if wait is None else wait, log=log)
        for res in ran:
            results[res.cell] = res
    return [results[cell] for cell, _, _ in planned]


# ---- summary ------------------------------------------------------------------------------

STATUS_STYLE = {"done": "green", "skipped": "cyan", "failed": "red", "stopped": "yellow", "submitted": "blue",
                "pending": "magenta"}


def summary_table(results: list[CellResult], title: str = "sweep"):
    """A rich table, one row per cell, with the counts per status as its caption."""
    from rich.table import Table

    counts = {s: sum(r.status == s for r in results) for s in STATUS_STYLE}
    caption = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    table = Table(title=title, caption=caption)
    for col, kw in (("method", {}), ("protocol", {}), ("seed", {"justify": "right"}), ("status", {}),
                    ("tasks", {"justify": "right"}), ("final acc", {"justify": "right"}),
                    ("run dir / job / error", {"overflow": "fold"})):
        table.add_column(col, **kw)
    for r in results:
        status = r.status + (" (resume)" if r.resume else "")
        tasks = f"{r.tasks_done}/{r.num_tasks}" if r.tasks_done is not None else "-"
        acc = f"{r.final_acc:.2f}" if r.final_acc is not None and r.status in ("done", "skipped") else "-"
        if r.status == "failed":
            detail = r.error or ""
        elif r.status == "submitted":
            detail = f"job {r.job_id}: {r.run_dir}"
        else:
            detail = r.run_dir or ""
        table.add_row(r.cell.method, r.cell.protocol, str(r.cell.seed), f"[{STATUS_STYLE[r.status]}]{status}[/]",
                      tasks, acc, detail)
    return table
