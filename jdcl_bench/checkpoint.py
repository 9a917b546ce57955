"""What a checkpoint holds besides the method's state, and what to say when a run diverges.

A checkpoint keeps every generator a resumed run needs to compute exactly what an uninterrupted
one does: the run's ``ctx.rng`` and torch's global CPU and CUDA generators (each rank's, in a
distributed run). It is never written with NaN or inf in it: :func:`nonfinite_tensors` finds
them first.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from . import distributed as D


def rng_state(ctx_rng: torch.Generator, device: torch.device) -> dict:
    """The generators of this process (call on every rank: in a distributed run it gathers each
    rank's global generators, which differ, into ``per_rank``)."""
    state = {"ctx": ctx_rng.get_state(), "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}
    if D.is_distributed():
        state["per_rank"] = D.gather_objects({"torch": torch.get_rng_state(),
                                              "cuda": torch.cuda.get_rng_state(device)
                                              if device.type == "cuda" else None})
    return state


def restore_rng(state: dict, ctx_rng: torch.Generator, device: torch.device) -> None:
    """Set the generators :func:`rng_state` saved (this rank's own where they were kept per rank)."""
    ctx_rng.set_state(state["ctx"])
    mine = state.get("per_rank", [])
    if D.is_distributed() and D.rank() < len(mine):
        torch.set_rng_state(mine[D.rank()]["torch"])
        if mine[D.rank()]["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(mine[D.rank()]["cuda"], device)
    else:
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_note(run_dir: Path) -> str:
    """What a run stopped by non-finite values has left: only claim a checkpoint that exists."""
    if (run_dir / "checkpoint.pt").is_file():
        return (f"The last checkpoint, {run_dir / 'checkpoint.pt'}, was written before that and holds finite "
                "values only (checkpoints are checked before they are written).")
    return f"No checkpoint has been written yet in {run_dir}: nothing to resume, a new start begins afresh."


def nonfinite_hint(runner: Any) -> str:
    """Advice naming the method's own learning-rate keys (``classifier.lr`` for fine-tune), never a key
    the method does not have."""
    method = getattr(runner, "method", None)
    cfg = getattr(method, "cfg", None)
    keys: list[tuple[str, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        if not dataclasses.is_dataclass(obj):
            return
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif (f.name == "lr" or f.name.startswith("lr_") or f.name.endswith("_lr")) and \
                    isinstance(value, (int, float)) and not isinstance(value, bool):
                keys.append((f"{prefix}{f.name}", value))

    walk(cfg, "")
    name = getattr(method, "name", "") or "the method"
    if keys:
        shown = ", ".join(f"--set {k}={v:g}" for k, v in keys[:4])
        return f"Lower {name}'s learning rate (now: {shown}; a smaller value) or check the data."
    return f"Check the data and {name}'s config (`--set` keys are its Config fields)."


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Dotted paths of floating-point tensors holding NaN or inf, anywhere in nested dicts/lists
    (one device sync per device, not one per tensor)."""
    found: list[tuple[str, torch.Tensor]] = []

    def walk(o: Any, path: str) -> None:
        if isinstance(o, torch.Tensor):
            if (o.is_floating_point() or o.is_complex()) and o.numel():
                found.append((path or "<tensor>", o))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")

    walk(obj, prefix)
    bad: list[str] = []
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for path, t in found:
        by_device.setdefault(t.device, []).append((path, t))
    for items in by_device.values():
        flags = torch.stack([~torch.isfinite(t.detach()).all() for _, t in items]).tolist()
        bad += [path for (path, _), b in zip(items, flags) if b]
    return bad
