"""Data-parallel runs with torch.distributed, as launched by ``torchrun``.

Outside torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) every helper here is a no-op, so the
single-process code path is untouched. Under ``torchrun --nproc_per_node N`` with N > 1,
:func:`init` starts the process group (NCCL on CUDA, gloo on CPU) and a second, CPU-only gloo group
for small control messages (stop/checkpoint decisions, RNG states, predictions), so these never
go through NCCL.

The batch rule (docs/distributed.md): a method config's batch size is the **global** batch. Every
rank draws the same global batch (indices, augmentation parameters and diffusion noise come from
generators that advance identically on every rank) and keeps its slice of it; DDP averages the
gradients, so a step equals one single-process step on the global batch (up to float reduction
order, and except for BatchNorm statistics on CPU, which stay per rank).
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .seeds import derive_seed

_state: dict[str, Any] = {"ctrl": None}


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def init(device: str = "auto") -> torch.device:
    """Start the process group from torchrun's variables; returns this rank's device.

    ``device`` is the run's --device: ``cpu`` (or ``auto`` without CUDA) runs on CPU with gloo;
    CUDA uses ``cuda:LOCAL_RANK`` with NCCL (one GPU per process, whatever index was asked for)."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        dev = torch.device("cpu")
    elif device == "auto" or device.startswith("cuda"):
        dev = torch.device("cuda", local_rank())
        torch.cuda.set_device(dev)
    else:
        raise ValueError(f"distributed runs need --device cpu or cuda, got {device!r}")
    if not is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        # long timeout: rank 0 alone writes checkpoints and evaluates while the others wait
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
        _state["ctrl"] = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    return dev


def shutdown(wait_for_all: bool = False) -> None:
    """End the process group. ``wait_for_all`` (after a run that ended well on this rank) first
    waits for every rank, so that a rank that is done does not tear its connections down while
    rank 0 still evaluates and writes the record. After an error there is no waiting: the other
    ranks may be blocked in another collective, and torchrun stops them."""
    if is_initialized():
        if wait_for_all and is_distributed():
            dist.barrier(group=_state["ctrl"])
        dist.destroy_process_group()
    _state["ctrl"] = None


def barrier() -> None:
    if is_distributed():
        dist.barrier(group=_state["ctrl"])


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (CPU control group; for small Python objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_state["ctrl"])
    return box[0]


def broadcast_flags(*flags: bool) -> tuple[bool, ...]:
    """Rank 0's booleans on every rank; cheaper than broadcast_object, for decisions taken every step."""
    if not is_distributed():
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.uint8)
    dist.broadcast(t, src=0, group=_state["ctrl"])
    return tuple(bool(v) for v in t.tolist())


def gather_objects(obj: Any) -> list[Any]:
    """A list with every rank's ``obj``, on every rank (CPU control group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_state["ctrl"])
    return out


def all_reduce_mean(value: float) -> float:
    """The mean of a Python float over ranks (CPU control group); NaN on any rank gives NaN."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, group=_state["ctrl"])
    return float(t.item()) / world_size()


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order; the first dim may differ per rank."""
    if not is_distributed():
        return t
    ws = world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(ws)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    m = max(sizes)
    t = t.contiguous()
    if t.shape[0] < m:  # all_gather wants equal shapes: pad, then cut each part back
        t = torch.cat([t, t.new_zeros((m - t.shape[0], *t.shape[1:]))])
    out = [torch.empty_like(t) for _ in range(ws)]
    dist.all_gather(out, t)
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


def local_batch(global_batch: int, what: str = "batch_size") -> int:
    """The per-rank batch for a global batch; a config error if it does not divide by the world size."""
    ws = world_size()
    if global_batch % ws:
        from .config import ConfigError

        raise ConfigError(f"{what}={global_batch} is the global batch and must be divisible by the number of "
                          f"processes ({ws}); pick a multiple of {ws}")
    return global_batch // ws


def shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (tensor_split: sizes differ by at most one)."""
    if not is_distributed():
        return t
    return torch.tensor_split(t, world_size())[rank()]


def rank_seed(seed: int) -> int:
    """A seed of this rank's own, derived from a seed shared by all ranks; rank 0 keeps ``seed``
    itself, so that a one-process run sees exactly the seeds it always did."""
    if rank() == 0:
        return seed
    return derive_seed(seed, "rank", rank())


@torch.no_grad()
def sync_params(module: torch.nn.Module) -> torch.nn.Module:
    """Copy rank 0's parameters and buffers to every rank (ranks initialise from different seeds)."""
    if is_distributed():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)
    return module


def wrap_ddp(module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when distributed, else ``module`` itself.

    DDP averages gradients in ``backward()`` and only sees calls of ``forward``: call the wrapper,
    never another method of the inner module, in a training step. ``find_unused_parameters`` is
    for losses that leave some parameters out in some steps (their gradients then stay None, as in
    one process)."""
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = next(module.parameters()).device
    return DDP(module, device_ids=[dev.index] if dev.type == "cuda" else None,
               find_unused_parameters=find_unused_parameters)


def convert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm when distributed on CUDA, so BatchNorm sees the global batch. PyTorch's
    SyncBatchNorm has no CPU kernel: on CPU the statistics stay per rank."""
    if is_distributed() and next(module.parameters()).device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def describe(global_batch: int | None) -> dict:
    """The ``distributed`` section of config.json and manifest.json."""
    ws = world_size()
    return {"world_size": ws, "backend": dist.get_backend() if is_initialized() else None,
            "global_batch": global_batch,
            "per_rank_batch": None if global_batch is None else global_batch // ws}
