"""Sweeps: run a grid of methods x protocols x seeds, skipping the cells that are already done.

A cell is one ``jdcl-bench run``. Its run directory follows the runner's rule
(:func:`jdcl_bench.runner.run_dir_for`, the preset defaulting to the method's ``default_preset``);
a cell whose ``metrics.json`` says ``"complete": true`` is skipped, any other one is run, which
resumes it from its last checkpoint if it has one. Executors:

- ``local``: the cells one after another in this process; a failing cell is reported and the
  sweep goes on. With ``per_gpu`` > 1 or ``gpus`` (:class:`PackOptions`), up to ``per_gpu`` cells
  per device run side by side instead, each a ``jdcl-bench run`` subprocess (:func:`run_packed`),
  pinned to one of ``gpus`` with ``CUDA_VISIBLE_DEVICES``; each run's manifest records how many
  shared its device (``gpu_shared_by``), as ``scripts/gpu_batch.py`` did by hand.
- ``submitit-local`` / ``slurm``: one submitit job per cell (a job array on Slurm), each calling
  :func:`run_cell` and writing into the shared results folder; the runner writes atomically and
  locks each run directory, so parallel jobs lose nothing. submitit (the ``cluster`` extra) is
  imported only inside :func:`make_executor`.

Unknown methods, protocols, presets and ``--set`` keys fail before any cell runs
(:func:`validate`), with the same errors ``jdcl-bench run`` gives.
"""
from __future__ import annotations

import itertools
import os
import queue
import re
import subprocess
import sys
import threading
import time
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
    log: str | None = None          # packed cells: the subprocess's output
    started_at: float | None = None  # packed cells: time.time() at start and end of the subprocess
    ended_at: float | None = None


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
class PackOptions:
    """Cells side by side on the local machine. ``per_gpu``: cells running at once on each device;
    ``gpus``: the devices, as ``CUDA_VISIBLE_DEVICES`` values (one per device; ``None``: the device
    each cell's ``--device`` names, shared by ``per_gpu`` cells)."""

    per_gpu: int = 1
    gpus: list[str] | None = None

    @property
    def packed(self) -> bool:
        return self.per_gpu > 1 or bool(self.gpus)

    def validate(self, device: str) -> None:
        if self.per_gpu < 1:
            raise ValueError(f"--per-gpu must be >= 1, got {self.per_gpu}")
        if self.gpus and (device == "cpu" or device.startswith("cuda:")):
            raise ValueError(f"--gpus pins each cell to a GPU with CUDA_VISIBLE_DEVICES; it needs --device auto or "
                             f"cuda, not {device}")


def pack_slots(n_cells: int, opts: PackOptions) -> list[tuple[str | None, int]]:
    """The worker slots a packed sweep starts: (CUDA_VISIBLE_DEVICES value or None, how many slots share
    that device). Slot i runs on device i mod len(gpus) (round robin), so the devices fill evenly;
    at most ``per_gpu`` slots per device, and no more slots than cells."""
    devices = list(opts.gpus or [None])
    n = min(n_cells, opts.per_gpu * len(devices))
    chosen = [devices[i % len(devices)] for i in range(n)]
    return [(d, chosen.count(d)) for d in chosen]


def cell_command(cfg: RunConfig) -> list[str]:
    """The ``jdcl-bench run`` command line of one cell (what a packed sweep starts as a subprocess)."""
    cmd = [sys.executable, "-m", "jdcl_bench.cli", "run", "--protocol", cfg.protocol, "--method", cfg.method,
           "--seed", str(cfg.seed), "--out", str(cfg.out), "--device", cfg.device]
    if cfg.preset:
        cmd += ["--preset", cfg.preset]
    for key, value in cfg.overrides.items():  # the --set strings as given (parse_set keeps them as text)
        cmd += ["--set", f"{key}={value}"]
    if cfg.data_dir:
        cmd += ["--data-dir", str(cfg.data_dir)]
    if cfg.time_limit_s is not None:
        cmd += ["--time-limit", repr(float(cfg.time_limit_s))]
    if cfg.download:
        cmd.append("--download")
    return cmd


def cell_env(gpu: str | None, shared_by: int, opts: PackOptions, threads: int | None = None) -> dict[str, str]:
    """The subprocess environment: the GPU it is pinned to, and what the runner writes into its manifest
    about sharing the device (``JDCL_BENCH_GPU_SHARED_BY``, ``JDCL_BENCH_RUN_NOTE``). ``threads``: its
    share of the CPU cores as ``OMP_NUM_THREADS`` (torch's intra-op threads), unless the caller's
    environment sets that already: N processes each starting a thread per core oversubscribe the CPU."""
    env = dict(os.environ)
    if threads is not None and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, threads))
    env.pop("JDCL_BENCH_GPU_SHARED_BY", None)
    env.pop("JDCL_BENCH_RUN_NOTE", None)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if shared_by > 1:
        where = f"GPU {gpu}" if gpu is not None else "one device"
        env["JDCL_BENCH_GPU_SHARED_BY"] = str(shared_by)
        env["JDCL_BENCH_RUN_NOTE"] = (f"ran as one of up to {shared_by} sweep cells side by side on {where} "
                                      f"(jdcl-bench sweep --per-gpu {opts.per_gpu}); GPU-seconds are shared wall time")
    return env


def _log_name(cell: Cell) -> str:
    name = f"{Path(cell.protocol).stem}__{cell.method}__seed{cell.seed}__{time.strftime('%Y%m%dT%H%M%S')}"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) + ".log"


def _run_subprocess(cell: Cell, cfg: RunConfig, gpu: str | None, shared_by: int, opts: PackOptions,
                    log_dir: Path, threads: int | None) -> CellResult:
    log_path = log_dir / _log_name(cell)
    started = time.time()
    with open(log_path, "w") as fh:
        rc = subprocess.call(cell_command(cfg), stdout=fh, stderr=subprocess.STDOUT,
                             env=cell_env(gpu, shared_by, opts, threads))
    ended = time.time()
    run_dir = resolve_run_dir(cfg)
    metrics = read_metrics(run_dir)
    if rc == 0:
        res = CellResult(cell, "done" if metrics and metrics.get("complete") else "stopped", str(run_dir))
    else:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        res = CellResult(cell, "failed", str(run_dir), error=f"exit {rc}: " + (lines[-1].strip()[:200] if lines else ""),
                         details=f"see {log_path}")
    res.log, res.started_at, res.ended_at = str(log_path), started, ended
    return _from_metrics(res, metrics)


def run_packed(todo: list[tuple[Cell, RunConfig]], opts: PackOptions, out: str | Path,
               log: Callable[[str], None] = print) -> list[CellResult]:
    """Run the cells as ``jdcl-bench run`` subprocesses, up to ``opts.per_gpu`` at once on each device.
    Each worker slot takes the next cell when its last one ends; output goes to ``<out>/sweep_logs/``."""
    log_dir = Path(out) / "sweep_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    slots = pack_slots(len(todo), opts)
    threads = (os.cpu_count() or 1) // len(slots)
    pending: queue.Queue = queue.Queue()
    for i, item in enumerate(todo, 1):
        pending.put((i, item))
    results: dict[int, CellResult] = {}
    lock = threading.Lock()

    def worker(gpu: str | None, shared_by: int) -> None:
        while True:
            try:
                i, (cell, cfg) = pending.get_nowait()
            except queue.Empty:
                return
            where = f"GPU {gpu}" if gpu is not None else "the device"
            with lock:
                log(f"[{i}/{len(todo)}] {cell}: started on {where} ({shared_by} side by side)")
            try:
                res = _run_subprocess(cell, cfg, gpu, shared_by, opts, log_dir, threads)
            except Exception as exc:  # could not even start it: a failed cell, the others go on
                res = CellResult(cell, "failed", error=f"{type(exc).__name__}: {exc}", details=traceback.format_exc())
            with lock:
                results[i] = res
                log(f"[{i}/{len(todo)}] {cell}: {res.status}" + (f" ({res.error})" if res.error else "")
                    + (f", log {res.log}" if res.log else ""))

    log(f"{len(todo)} cell(s), {len(slots)} at a time ({opts.per_gpu} per device"
        + (f", GPUs {','.join(opts.gpus)}" if opts.gpus else "") + f"); logs in {log_dir}")
    workers = [threading.Thread(target=worker, args=slot, daemon=True) for slot in slots]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return [results[i] for i in range(1, len(todo) + 1)]


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
          dry_run: bool = False, log: Callable[[str], None] = print, quiet: bool = False,
          pack: PackOptions | None = None) -> list[CellResult]:
    """Validate the grid, run what is not done, and return one result per cell in grid order.
    ``wait`` (submitit executors) defaults to True for submitit-local and False for Slurm. ``pack``
    (local executor only) runs cells side by side as subprocesses (:func:`run_packed`)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; executors: {', '.join(EXECUTORS)}")
    pack = pack or PackOptions()
    pack.validate(spec.device)
    if pack.packed and executor != "local":
        raise ValueError("--per-gpu and --gpus pack cells on this machine: they go with --executor local "
                         "(submitit jobs each get their own GPU; use --max-parallel there)")
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
        if executor == "local" and pack.packed:
            ran = run_packed(todo, pack, spec.out, log=log)
        elif executor == "local":
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
