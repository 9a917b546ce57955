"""The optimised execution path shared by JDCL, the DGR/GUIDE generators and the speed benchmark.

Two things live here so that every user of the UNet gets them the same way:

- :func:`tune_backends`: TF32 for the fp32 matrix multiplies and convolutions left outside autocast
  (the bf16 ones are unaffected). cuDNN autotuning (``cudnn.benchmark``) is left off: on an H100
  a bench with it on measured the paper config's compiled step 1 % faster but the fast config's
  18 % slower than the previous bench without it (two machines, not a controlled comparison:
  results/bench/README.md), so nothing shows it pays.
- :func:`unet_memory_format`: channels_last for the UNet only where it runs compiled;
  :func:`cuda_channels_last`: channels_last for the ResNet classifiers and their inputs on CUDA.
- :func:`autocast`: bf16 autocast on CUDA, a no-op elsewhere (every method's mixed precision).
- :func:`maybe_compile`: ``torch.compile`` with a clean fallback. ``torch.compile`` itself never
  fails; a broken toolchain (no C compiler, an unsupported GPU, a Triton problem) surfaces at the
  first call. The wrapper runs that first call compiled, and if it raises, says why once and runs
  eager from then on, so a run never dies because the compiler is unavailable.
"""
from __future__ import annotations

from typing import Callable

import torch


def to_device(t: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU tensor drawn from a run's CPU generator (batch indices, augmentation parameters) onto
    ``device`` without stopping the CPU.

    A plain ``.to("cuda")`` from ordinary (pageable) memory makes PyTorch wait for the GPU to finish
    everything queued before it (a blocking copy synchronises the stream). A training loop draws
    such tensors several times a step, so the CPU waits for each step to end before it prepares the
    next, and the GPU idles meanwhile: for a small model that is much of the step. From pinned
    memory with ``non_blocking`` the copy is queued in order instead, and PyTorch's pinned-memory
    allocator keeps the buffer until the copy has run. The values, and so the results, are unchanged
    (a dtype change happens on the CPU first, with the same IEEE rounding)."""
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def tune_backends(device: torch.device | str) -> None:
    """TF32 for fp32 matmuls/convolutions on CUDA; nothing elsewhere."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def unet_memory_format(device: torch.device | str, compiled: bool) -> torch.memory_format:
    """The UNet's layout: channels_last on CUDA when it runs under torch.compile, NCHW otherwise.

    Measured on an H100, fast config, bf16, each pair in one process: compiled, channels_last
    8,171 img/s training against 5,525 with NCHW (DDIM 1,140 vs 1,048; results/bench/
    bench-NVIDIA_H100_80GB_HBM3-20261125T024013.json); eager, channels_last 4,062 against 4,822 with
    NCHW (DDIM 302 vs 371; ...20261125T021355.json). Eager GroupNorm on CUDA works in NCHW, so an
    eager channels_last UNet converts whole activations twice per block (39 % of its GPU time were
    copies, 17 % with NCHW). A compiled run that falls back to eager at its first call keeps
    channels_last: the fallback is for broken toolchains, not the fast path."""
    return torch.channels_last if compiled and torch.device(device).type == "cuda" else torch.contiguous_format


def autocast(device: torch.device | str, enabled: bool = True):
    """bf16 autocast on CUDA when ``enabled``; a disabled context elsewhere (CPU runs stay fp32, so
    their numbers do not depend on the CPU's bf16 support)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def cuda_channels_last(x):
    """A tensor or module in channels_last on CUDA (cuDNN's fast path for the ResNets), unchanged on CPU."""
    if isinstance(x, torch.Tensor):
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
    on_cuda = any(p.is_cuda for p in x.parameters())
    return x.to(memory_format=torch.channels_last) if on_cuda else x


class _FallbackToEager:
    """Calls the compiled function; on the first call's failure, logs once and uses eager for good."""

    def __init__(self, eager: Callable, compiled: Callable, info: Callable[[str], None], name: str):
        self.eager, self.compiled, self.info, self.name = eager, compiled, info, name
        self.tried = False

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        if self.tried:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as exc:  # the toolchain, not the model: the eager call below still runs it
            self.info(f"torch.compile failed for {self.name} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                      "running it eager")
            self.compiled = None
            return self.eager(*args, **kwargs)
        self.tried = True
        return out

    def __getattr__(self, item):  # modules keep their attributes (train(), parameters(), ...)
        return getattr(self.__dict__["eager"], item)


def maybe_compile(fn: Callable, *, enabled: bool, device: torch.device | str, info: Callable[[str], None] = print,
                  name: str = "the model", mode: str | None = None, dynamic: bool | None = None,
                  compiler: Callable | None = None) -> Callable:
    """``torch.compile(fn, mode=mode, dynamic=dynamic)`` on CUDA when ``enabled``, with a fallback to
    eager at the first failure.

    Compiles only the call (a module's ``forward``): to compile another method, wrap it in a
    module whose ``forward`` calls it. ``dynamic=False``: a graph per input shape, never one with a
    symbolic batch size (torch's default compiles a dynamic graph at a call's second shape).
    ``compiler`` replaces ``torch.compile`` (tests) and takes the same keywords."""
    if not enabled or (torch.device(device).type != "cuda" and compiler is None):
        return fn
    compile_fn = compiler or torch.compile
    try:
        compiled = compile_fn(fn, mode=mode, dynamic=dynamic)
    except Exception as exc:  # pragma: no cover - very old torch without a working dynamo
        info(f"torch.compile unavailable for {name} ({type(exc).__name__}: {exc}); running it eager")
        return fn
    return _FallbackToEager(fn, compiled, info, name)
