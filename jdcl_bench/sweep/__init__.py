"""Sweeps: run a grid of methods x protocols x seeds, skipping the cells that are already done.

A cell is one ``jdcl-bench run``. Its run directory follows the runner's rule
(:func:`jdcl_bench.runner.run_dir_for`, the preset defaulting to the method's ``default_preset``);
a cell whose ``metrics.json`` says ``"complete": true`` is skipped (its result names the settings
in which that record's config differs from what the cell would run today: ``cells.stale_config``),
any other one is run, which resumes it from its last checkpoint if it has one. Executors:

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

from typing import Callable

from ..runner import RunConfig
from .cells import (Cell, CellResult, SweepSpec, expand_grid, from_metrics, parse_seeds, plan,  # noqa: F401
                    read_metrics, resolve_run_dir, run_cell, split_list, validate)
from .pack import PackOptions, cell_command, cell_env, measured_per_gpu, pack_slots, run_packed  # noqa: F401
from .slurm import SubmititOptions, executor_parameters, job_config, make_executor, run_submitit  # noqa: F401

EXECUTORS = ("local", "submitit-local", "slurm")


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
            res = from_metrics(CellResult(cell, "pending", str(run_dir)), read_metrics(run_dir))
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
        elif r.status == "skipped" and r.error:  # a record of an older config (cells.stale_config)
            detail = f"{r.run_dir}: {r.error}"
        else:
            detail = r.run_dir or ""
        table.add_row(r.cell.method, r.cell.protocol, str(r.cell.seed), f"[{STATUS_STYLE[r.status]}]{status}[/]",
                      tasks, acc, detail)
    return table
