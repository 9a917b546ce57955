"""One submitit job per cell, on this machine (submitit-local) or on Slurm. submitit (the ``cluster``
extra) is imported only inside :func:`make_executor`."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..runner import RunConfig
from .cells import Cell, CellResult, from_metrics, read_metrics, resolve_run_dir, run_cell


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
            from_metrics(res, read_metrics(run_dir))  # it may have got some tasks done before dying
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
