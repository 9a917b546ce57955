"""Run records on disk: atomic writes, a per-run lock, and the manifest.

A run directory holds ``config.json`` (resolved config), ``manifest.json`` (code version,
packages, hardware, dataset identity, timings, budget), ``metrics.json`` (accuracy matrix and
final metrics; ``complete`` is false until the last task is evaluated) and ``checkpoint.pt``.
Every file is written to a temporary name and renamed into place, so a crash leaves the previous
version readable; runs only ever write inside their own directory, and a lock file stops two
processes from driving the same run, so many runs can share one results folder safely.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask (read without changing it where /proc allows; else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """What open() would give a new file: 0666 less the umask. mkstemp makes files 0600, which left
    records of a shared results folder unreadable to the other users."""
    return 0o666 & ~current_umask()


def safe_name(text: str, replace: str = "_") -> str:
    """``text`` as part of a file name: letters, digits, '.', '_' and '-' kept, every other
    character as ``replace`` (the device machines return only such names; '+' and '/' of presets
    and paths would otherwise reach the file system)."""
    return "".join(ch if ch.isalnum() or ch in "._-" else replace for ch in text)


def gpu_shared_by() -> int | None:
    """How many runs share this process's GPU, as the launcher says (``JDCL_BENCH_GPU_SHARED_BY``,
    set by scripts/gpu_batch.py and ``jdcl-bench sweep``); None when no launcher said."""
    value = os.environ.get("JDCL_BENCH_GPU_SHARED_BY")
    return int(value) if value else None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def flat_items(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested config as ``("a.b", value)`` pairs, in order: how records compare and show settings."""
    out = []
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.extend(flat_items(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def atomic_torch_save(obj: Any, path: Path) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def keep_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` as it is now, atomically: a hard link where the file system
    allows it (``src`` is later replaced, never rewritten in place, so the link keeps this version),
    else a byte copy."""
    import shutil

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: damaged, truncated, foreign or tampered with."""


CHECKPOINT_KEYS = ("phase", "task", "method", "rng", "acc_rows", "seen_acc", "wall_s")


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Load a run's ``checkpoint.pt`` with ``weights_only=True``: tensors, generator states and plain
    containers and numbers only, so a crafted file cannot run code. Anything else, a damaged file
    or one that is not a checkpoint of this suite raises CheckpointError naming the file and how to
    start the run afresh."""
    import pickle

    import torch

    path = Path(path)
    fresh = (f"To start this run afresh, run the same command with --restart (or delete {path}; "
             f"the whole run directory {path.parent} to drop its records too).")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} holds objects that this suite's checkpoints never hold, so it was not "
                              f"loaded and nothing in it ran ({first.strip()}); it was not written by "
                              f"jdcl-bench, or was tampered with. {fresh}") from None
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated zip, bad CRC, not a torch file at all: all mean "damaged"
        raise CheckpointError(f"{path} is damaged or not a checkpoint ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}). "
                              f"{fresh}") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"{path} is not a jdcl-bench checkpoint (missing {', '.join(missing)}). {fresh}")
    return state


class RunLocked(RuntimeError):
    pass


@contextmanager
def run_lock(run_dir: Path):
    """Exclusive lock on a run directory (released automatically if the process dies)."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunLocked(f"another process is already running in {run_dir}; wait for it or use another --out") from None
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version() -> dict:
    from . import __version__

    root = Path(__file__).resolve().parent.parent
    info = {"package_version": __version__, "commit": None, "dirty": None, "source_hash": source_hash()}
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
            # results/ is where runs land; writing a record must not make the code "dirty"
            status = run("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
            info["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    if os.environ.get("JDCL_BENCH_COMMIT"):
        # a copied working tree (a GPU machine) may have no .git or a stale one: the launcher names the
        # commit it copied, and source_hash above is what proves the code matches it
        info["git_saw"] = {"commit": info["commit"], "dirty": info["dirty"]}
        info["commit"], info["dirty"] = os.environ["JDCL_BENCH_COMMIT"], None
        info["commit_from"] = "JDCL_BENCH_COMMIT"
    return info


def source_hash() -> str:
    """sha256 over the package's own source files: identifies the code even where there is no .git
    (a copied working tree on a GPU machine, an installed wheel)."""
    pkg = Path(__file__).resolve().parent
    return hash_sources((f.relative_to(pkg), f.read_bytes) for f in sorted(pkg.rglob("*.py")))


def hash_sources(files) -> str:
    """The source hash of ``(path relative to the package, read bytes)`` pairs, in path order: one
    definition for a working tree (source_hash) and a git commit (scripts/commit_for_source_hash.py)."""
    import hashlib

    h = hashlib.sha256()
    for rel, read in files:
        h.update(str(rel).encode())
        h.update(read())
    return h.hexdigest()[:16]


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "numpy", "scikit-learn", "pandas"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def hardware(device: str) -> dict:
    import torch

    info = {"device": device, "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu_name"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info
