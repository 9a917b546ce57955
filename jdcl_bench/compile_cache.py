"""Torch's compiled graphs carried from one machine to the next (opt-in: ``JDCL_BENCH_COMPILE_CACHE``).

A fresh device machine compiles JDCL's graphs from cold: about 90 s a stage on an H100, against
about 25 s in a new process on a machine whose inductor cache on disk is already filled (the
cifar10-semi runs' logs of 2026-12-07, docs/jdcl.md). The device machines are lent fresh each
session, so every session paid the cold compile. ``torch.compiler.save_cache_artifacts()``
serialises what a process compiled or read from the caches (inductor's graphs with their Triton
kernels, AOTAutograd's, autotuning results) into one blob; ``load_cache_artifacts()`` puts blobs
back into the caches before anything compiles. Torch keys every entry by its graph, torch
version and GPU, so a blob from another GPU model or torch version only misses.

One file per run (``<run>.bin``): each process of a run loads every file of the folder and, at its
end, writes its own file again with what it used (artifacts it loaded but never used are not in it,
so files are never merged). Torch reads these blobs with pickle: load only files that this suite
wrote on your own machines (``scripts/device_run.sh`` does), never one you were handed.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

ENV = "JDCL_BENCH_COMPILE_CACHE"


def file_name(run: str) -> str:
    """``run`` as a file name the device returns (letters, digits, '.', '_', '-')."""
    from .records import safe_name

    return safe_name(run, "-") + ".bin"


def load_all(folder: Path, log: Callable[[str], None]) -> int:
    """Put every blob of ``folder`` into torch's caches; a blob torch cannot read is reported and
    skipped (the run then compiles as it would have). Returns how many were loaded."""
    import torch

    loaded = 0
    for f in sorted(folder.glob("*.bin")):
        try:
            info = torch.compiler.load_cache_artifacts(f.read_bytes())
        except Exception as exc:  # a cache must never stop a run
            log(f"compile cache: {f} not loaded ({type(exc).__name__}: {exc}); compiling as usual")
            continue
        n = sum(len(v) for v in info.artifacts.values()) if info is not None else 0
        log(f"compile cache: {n} artifacts from {f.name} ({f.stat().st_size / 2**20:.1f} MB)")
        loaded += 1
    return loaded


def save(folder: Path, run: str, log: Callable[[str], None]) -> Path | None:
    """Write what this process compiled or read from the caches to ``folder/<run>.bin`` (replaced
    whole, through a temporary file); nothing when it compiled nothing."""
    import torch

    from .records import atomic_write_bytes

    try:
        saved = torch.compiler.save_cache_artifacts()
    except Exception as exc:
        log(f"compile cache: not saved ({type(exc).__name__}: {exc})")
        return None
    if not saved or not saved[0]:
        return None
    path = folder / file_name(run)
    atomic_write_bytes(path, saved[0])
    log(f"compile cache: saved {path} ({len(saved[0]) / 2**20:.1f} MB)")
    return path


@contextlib.contextmanager
def kept(run: str, log: Callable[[str], None], folder: str | None = None) -> Iterator[None]:
    """Around one process's run: load the folder's blobs first, save this run's blob at the end,
    also when the run stops at its time limit or fails. ``folder`` defaults to ``$JDCL_BENCH_COMPILE_CACHE``;
    without either, nothing happens."""
    folder = folder or os.environ.get(ENV)
    if not folder:
        yield
        return
    load_all(Path(folder), log)
    try:
        yield
    finally:
        save(Path(folder), run, log)
