"""Will a run fit its device? An estimate made before training, so that a preset too large for the
machine is refused with a clear message instead of ending in the kernel's "Killed" (JDCL's `paper`
preset on a CPU: 23.5 GB) or an out-of-memory traceback hours later.

The estimate is measured, not guessed from a formula: the tensors autograd keeps for the backward
pass are counted during one training forward at batch 1 and at batch 2 (``saved_tensor_bytes``): the
difference is what an image adds, scaled to the run's batch; parameters, gradients, optimiser state and the extra model copies (EMA, teachers) are
counted from the parameter count. Allocator overhead and temporary buffers are not counted, so for an
eager run the estimate is a lower bound: a run estimated above what the device has cannot fit.
(torch.compile may recompute some activations instead of saving them; a compiled run can then need
less than the eager count says. No preset comes near that margin on the GPUs used here.)
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from .config import ConfigError

SKIP_ENV = "JDCL_BENCH_SKIP_MEMORY_CHECK"
GB = 1024 ** 3


def saved_tensor_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``step()`` builds its loss
    (each storage counted once: views of one tensor share it)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def available_bytes(device: torch.device) -> int | None:
    """Free memory of the device: the GPU's free memory, or the machine's available RAM (Linux
    ``MemAvailable``); None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class DoesNotFit(ConfigError):
    """The run's settings need more memory than its device has free."""


def free_bytes_to_check(device: torch.device) -> int | None:
    """The free memory a run is checked against, or None: the check is switched off (``SKIP_ENV``)
    or the device's free memory cannot be read. Ask first, so nothing is measured for nothing."""
    return None if os.environ.get(SKIP_ENV) else available_bytes(device)


def check_fits(parts: dict[str, int], free: int, device: torch.device, hint: str,
               warn: Callable[[str], None]) -> None:
    """Compare the estimate (``parts``: what -> bytes) with ``free`` bytes: DoesNotFit naming the
    parts and ``hint`` when it cannot fit, a warning above 80 %."""
    total = sum(parts.values())
    words = ", ".join(f"{k} {v / GB:.1f}" for k, v in parts.items())
    if total > free:
        raise DoesNotFit(f"this run needs at least {total / GB:.1f} GB on {device} ({words}) and {free / GB:.1f} GB "
                          f"are free: {hint}. (The estimate is a lower bound; {SKIP_ENV}=1 runs it anyway.)")
    if total > 0.8 * free:
        warn(f"warning: this run needs at least {total / GB:.1f} GB of the {free / GB:.1f} GB free on {device} "
             f"({words}); it may not fit")


def check_joint_unet_fits(unet_cfg, image_shape: tuple[int, ...], images: int, num_params: int,
                          device: torch.device, autocast: Callable, batch_size: int, info: Callable[[str], None]) -> None:
    """Refuse a JDCL configuration that cannot fit ``device`` before anything trains: the tensors one
    training forward keeps for the backward pass, measured at batch 1 and 2 and scaled to ``images``
    per forward, plus the model, its gradients, AdamW state, EMA and the global stage's teachers and
    previous global model (32 bytes a parameter)."""
    from .jdcl.unet import JointUNet

    free = free_bytes_to_check(device)
    if free is None:
        return
    # a throw-away model (initialisation and dropout draw from the global generators: forked, so
    # the run's own draws stay what they were). Saved tensors at batch 1 and 2: the difference is
    # what each image adds, the rest (weights saved by every layer, their bf16 copies) is paid once.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        net = JointUNet(unet_cfg).to(device)
        saved = []
        for n in (1, 2):
            x = torch.zeros(n, *image_shape, device=device)
            t = torch.zeros(n, dtype=torch.long, device=device)
            with autocast():
                saved.append(saved_tensor_bytes(lambda: net.forward_joint(x, t, x)))
    per_image, once = saved[1] - saved[0], 2 * saved[0] - saved[1]
    fixed = 32 * num_params + max(once, 0)
    fits = max(0, int((0.8 * free - fixed) // max(per_image, 1)))
    hint = (f"a smaller batch (--set batch_size={min(fits, batch_size)} would leave 20 % free), the `fast` "
            "preset's UNet (--set unet=fast) or another device")
    check_fits({"activations": per_image * images, "model, AdamW, EMA and teachers": fixed}, free, device, hint, info)
