"""Where a run lives, and whether the directory's record lets this command continue it.

A run is named by (protocol, method, preset, ``--set`` overrides, seed). A directory holding a
complete record is left as it is; one holding a checkpoint resumes only if its record is of the
same protocol, method, preset, seed and method config; anything else is refused with what
differs, before any work starts.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import distributed as D
from . import records
from .config import ConfigError
from .progress import Reporter
from .protocol import Protocol, get_protocol


class RunMismatch(ConfigError):
    """The run directory holds a run of another protocol, config or dataset."""


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def check_same_protocol(run_dir: Path, old_config: dict, protocol: Protocol) -> None:
    """Refuse a run directory whose record is of another protocol (settings both records have must agree:
    a setting added to protocols later is absent from older records)."""
    old = old_config.get("protocol_spec")
    if not isinstance(old, dict):
        return
    new = protocol.spec()
    differ = sorted(k for k in set(old) & set(new) if k not in ("source", "path")
                    and old[k] != json.loads(json.dumps(new[k])))
    if differ:
        raise RunMismatch(f"{run_dir} holds a run of a different protocol ({', '.join(differ)} differ: "
                          f"{_short({k: old[k] for k in differ})} there, {_short({k: new[k] for k in differ})} "
                          "now); use another --out or delete the directory")


def _config_diff(old: dict, new: dict, limit: int = 4) -> str:
    """'key: X there, Y now' for the (flattened) settings that differ, at most ``limit`` of them."""
    a, b = dict(records.flat_items(old)), dict(records.flat_items(json.loads(json.dumps(new))))
    diff = [f"{k}: {a.get(k, '(absent)')} there, {b.get(k, '(absent)')} now" for k in sorted(set(a) | set(b))
            if a.get(k, "(absent)") != b.get(k, "(absent)")]
    return "; ".join(diff[:limit]) + (f"; {len(diff) - limit} more" if len(diff) > limit else "")


def run_dir_for(cfg: Any, preset: str, protocol: Protocol | None = None) -> Path:
    """``<out>/runs/<protocol>/<method>/<preset>[+<overrides hash>]/seed<N>``; a user's protocol file
    is named by its content (``Protocol.run_name``), not by how its path is spelled."""
    tag = preset
    if cfg.overrides:
        digest = hashlib.sha256(json.dumps(cfg.overrides, sort_keys=True).encode()).hexdigest()[:8]
        tag = f"{preset}+{digest}"
    protocol = protocol or get_protocol(cfg.protocol)
    return Path(cfg.out) / "runs" / protocol.run_name / cfg.method / tag / f"seed{cfg.seed}"


def prepare(run_dir: Path, config_doc: dict, protocol: Protocol, restart: bool, reporter: Reporter) -> tuple[bool, bool]:
    """(complete, resume) for this command in ``run_dir``, the same on every rank; a new run's
    config.json is written here. ``restart`` drops the directory's checkpoint and records first."""
    ckpt_path, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.json"
    if restart and D.is_main():
        dropped = [f.name for f in (ckpt_path, run_dir / "checkpoint-task.pt", metrics_path,
                                    run_dir / "manifest.json", run_dir / "config.json") if f.exists()]
        for name in dropped:
            (run_dir / name).unlink()
        if dropped:
            reporter.info(f"--restart: removed {', '.join(dropped)} from {run_dir}")
    complete = metrics_path.exists() and bool(records.read_json(metrics_path).get("complete"))
    resume = ckpt_path.exists()
    complete, resume = D.broadcast_flags(complete, resume)  # what rank 0 sees, on every rank
    old: dict = {}
    if (complete or resume) and D.is_main():
        try:
            old = records.read_json(run_dir / "config.json")
        except (OSError, ValueError):  # missing or damaged: nothing to compare (a resume then refuses)
            old = {}
        old = old if isinstance(old, dict) else {}
        check_same_protocol(run_dir, old, protocol)
    if complete:
        reporter.info(f"run already complete: {run_dir}")
        # the directory is named by preset and --set overrides, not by the defaults: after a
        # default changed (NNCSL's BatchNorm), the record here ran with another config
        if D.is_main() and "method_config" in old and \
                old["method_config"] != json.loads(json.dumps(config_doc["method_config"])):
            reporter.info(f"note: that record ran with another method config than this command "
                          f"asks for ({_config_diff(old['method_config'], config_doc['method_config'])}); "
                          "it keeps its own config.json. --restart or another --out runs this one")
        return True, resume
    if resume and D.is_main():
        for key in ("protocol", "method", "preset", "seed", "method_config"):
            if old.get(key) != json.loads(json.dumps(config_doc[key])):
                raise RunMismatch(f"{run_dir} holds a checkpoint of a different run ({key} differs: "
                                  f"{_short(old.get(key))} there, {_short(config_doc[key])} now); "
                                  "use another --out or delete the directory")
    elif D.is_main():
        records.write_json(run_dir / "config.json", config_doc)
    return False, resume


def check_same_data(run_dir: Path, identity: dict) -> None:
    """Refuse to resume a run that was trained on other data than ``identity`` describes."""
    if not (D.is_main() and (run_dir / "manifest.json").is_file()):
        return
    before = records.read_json(run_dir / "manifest.json").get("dataset", {}).get("content_hash")
    if before and before != identity.get("content_hash"):
        raise RunMismatch(f"{run_dir} was trained on other data (dataset content hash "
                          f"{before[:12]}... there, {identity.get('content_hash', '')[:12]}... now, "
                          f"from {identity.get('source')}); point --data-dir at the data it ran on, "
                          "or use another --out or delete the directory to start afresh")
