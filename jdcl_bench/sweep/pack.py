"""Cells side by side on this machine: ``jdcl-bench run`` subprocesses, ``per_gpu`` at once on each
device, pinned with ``CUDA_VISIBLE_DEVICES``; each run's manifest says how many shared its device."""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..protocol import protocol_stem
from ..records import safe_name
from ..runner import RunConfig
from .cells import Cell, CellResult, from_metrics, read_metrics, resolve_run_dir, split_list


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


def measured_per_gpu(records: Path | str, gpu_name: str | None, methods: list[str], protocols: list[str],
                     preset: str | None) -> tuple[int, str]:
    """``--per-gpu auto``: the N with the most finished cells per hour in the newest packing record
    (``benchmarks/sweep_packing.py``, ``sweep-packing-*.json`` under ``records``) made on this GPU
    model with the same methods, protocols and preset; 1 when there is none, since a throughput
    measured for other cells says nothing about these. Returns (N, why)."""
    import json

    name = (gpu_name or "cpu").replace(" ", "_")
    want = {"methods": sorted(methods), "protocols": sorted(protocols), "preset": preset}
    for path in sorted(Path(records).glob(f"sweep-packing-{name}-*.json"), reverse=True):  # newest first
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        s = rec.get("settings", {})
        got = {"methods": sorted(split_list(s.get("methods") or [])),
               "protocols": sorted(split_list(s.get("protocols") or [])),
               "preset": s.get("preset")}
        passes = [p for p in rec.get("passes", {}).values() if p.get("all_done") and p.get("cells_per_hour")]
        if got != want or not passes or s.get("sets"):
            continue
        best = max(passes, key=lambda p: p["cells_per_hour"])
        rates = ", ".join(f"N={p['per_gpu']}: {p['cells_per_hour']:.1f}" for p in sorted(passes, key=lambda p: p["per_gpu"]))
        return int(best["per_gpu"]), f"measured in {path.name} (cells/h {rates})"
    return 1, (f"no packing record for {', '.join(methods)} on {', '.join(protocols)} at preset {preset} on "
               f"{gpu_name or 'this device'} under {records}: 1 per GPU (measure it with benchmarks/sweep_packing.py)")


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
    name = f"{protocol_stem(cell.protocol)}__{cell.method}__seed{cell.seed}__{time.strftime('%Y%m%dT%H%M%S')}"
    return safe_name(name) + ".log"


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
    return from_metrics(res, metrics)


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
