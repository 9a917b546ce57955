"""Where a step's GPU time goes: torch.profiler's kernels summed by kind, and the ATen ops (with
shapes) that launched the most. Used by `jdcl-bench bench` and benchmarks/ddim_batch.py."""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import torch


# First match wins. Attention comes before convolution because cuDNN's fused attention kernels are
# named like its convolutions ("cudnn_generated_..._sdpa_sm90_flash_fprop_wgmma..."); "_norm_act" is
# jdcl_bench.kernels.triton_norm's kernel, a Triton kernel whose name does not say so.
KERNEL_KINDS = (("triton (fused norm / element-wise)", ("triton", "_norm_act")),
                ("attention", ("flash", "fmha", "sdpa", "attention", "attn")),
                ("convolution", ("fprop", "dgrad", "wgrad", "conv", "implicit_gemm", "xmma")),
                ("matmul", ("gemm", "nvjet", "cutlass", "cublas")),
                ("copy / layout", ("copy", "memcpy", "memset")))


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in KERNEL_KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def kernel_breakdown(fn, repeats: int = 3, no_grad: bool = False, top: int = 25) -> dict:
    """GPU kernel time of ``fn`` by kind, from torch.profiler over ``repeats`` calls (after one warm call)."""
    from torch.profiler import ProfilerActivity, profile

    ctx = torch.no_grad if no_grad else torch.enable_grad
    with ctx():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                fn()
            torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    kernels = []
    for e in prof.key_averages():
        us = _gpu_us(e, "device_time_total")
        if not us:
            continue
        kind = kernel_kind(e.key)
        kinds[kind] = kinds.get(kind, 0.0) + us
        kernels.append((us, e.key, kind, e.count / repeats))
    total = sum(kinds.values()) or 1.0
    kernels.sort(reverse=True)
    by_kind = sorted(kinds.items(), key=lambda kv: -kv[1])
    return {"gpu_ms_per_call": total / repeats / 1000,
            "share_pct": {k: 100 * v / total for k, v in by_kind},
            "gpu_ms_by_kind": {k: v / repeats / 1000 for k, v in by_kind},
            # launches per call: inductor reuses one kernel for every block of the same shape
            "top_kernels": [{"name": n[:160], "ms_per_call": us / repeats / 1000, "kind": kind, "launches": c}
                            for us, n, kind, c in kernels[:top]],
            "top_ops": _top_ops(fn, ctx, top)}


def _gpu_us(event, field: str) -> float:
    """A profiler event's GPU microseconds: ``device_*`` in current torch, ``cuda_*`` in older ones."""
    us = getattr(event, field, None)
    return getattr(event, field.replace("device", "cuda"), 0.0) if us is None else us


def _top_ops(fn, ctx, top: int) -> list[dict] | str:
    """Which ATen ops (with input shapes) launched the most GPU time: names a copy's source tensor."""
    from torch.profiler import ProfilerActivity, profile

    try:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with ctx(), profile(activities=acts, record_shapes=True) as prof:
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        rows = []
        for e in prof.key_averages(group_by_input_shape=True):
            us = _gpu_us(e, "self_device_time_total")
            if us and e.key.startswith("aten::"):
                rows.append({"op": e.key, "self_gpu_ms": us / 1000, "calls": e.count,
                             "input_shapes": str(e.input_shapes)[:200]})
        return sorted(rows, key=lambda r: -r["self_gpu_ms"])[:top]
    except Exception as exc:  # a diagnostic: never fail the benchmark over it
        return f"unavailable: {type(exc).__name__}: {exc}"


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU. What every timer here brackets with."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- where a training loop's time goes, host side included (the loop bench) ----------------------

# CUDA runtime calls that make the host wait for the device (by name prefix, and the blocking
# cudaMemcpy by its exact name: as a prefix it would take cudaMemcpyAsync too). A cudaMemcpyAsync from
# pageable memory waits as well (PyTorch's .to(device) of an unpinned tensor); it is counted apart, as
# "copies".
SYNC_CALLS, SYNC_EXACT = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"), ("cudaMemcpy",)
LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cudaLaunchKernelExC", "cuLaunchKernelEx")


class StepProfile:
    """torch.profiler over ``steps`` consecutive calls of a loop's tick (or of a bare step), host and
    device: ``start`` and ``stop`` bracket the window, ``summary`` says per step how long the host
    took, how long the device computed, how often the host waited for it, how many launches, and
    which operators cost the host most (self time). A device busy far less than the host's step
    time means the loop is host-bound; syncs per step say where it waits, and on CUDA ``sync_sites``
    which lines of Python made them. On an H200 (results/bench/loop-NVIDIA_H200-20261206T232507.json)
    the kernels replayed from CUDA graphs were seen one by one (the bare step's device busy 97-98 %)."""

    def __init__(self, device: torch.device, steps: int):
        self.device, self.steps, self.prof, self.wall = device, steps, None, 0.0
        self._warnings, self.sync_records = None, []

    def start(self) -> None:
        import time

        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self.prof = profile(activities=acts)
        sync_device(self.device)
        if self.device.type == "cuda":  # each synchronising call warns, from the Python line that made it
            self._warnings = warnings.catch_warnings(record=True)
            self.sync_records = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        self.prof.__enter__()
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        import time

        sync_device(self.device)
        self.wall = time.perf_counter() - self.t0
        self.prof.__exit__(None, None, None)
        if self._warnings is not None:
            torch.cuda.set_sync_debug_mode(0)
            self._warnings.__exit__(None, None, None)
            self._warnings = None

    def summary(self, top: int = 15) -> dict:
        from torch.autograd import DeviceType

        n = self.steps
        events = self.prof.key_averages()
        # kernels are the events on the device; an operator's device time is its kernels' again
        gpu_us = sum(_gpu_us(e, "self_device_time_total") or 0.0 for e in events
                     if getattr(e, "device_type", None) == DeviceType.CUDA)
        events = [e for e in events if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU]

        def count(prefixes: tuple[str, ...], exact: tuple[str, ...] = ()) -> int:
            return sum(e.count for e in events if e.key.startswith(prefixes) or e.key in exact)

        host = sorted(((e.self_cpu_time_total, e) for e in events if e.self_cpu_time_total > 0),
                      key=lambda kv: -kv[0])[:top]
        wall_ms = 1000 * self.wall / n
        return {"steps": n, "host_ms_per_step": wall_ms, "device_ms_per_step": gpu_us / 1000 / n,
                "device_busy_share": (gpu_us / 1000 / n) / wall_ms if wall_ms and self.device.type == "cuda" else None,
                "syncs_per_step": count(SYNC_CALLS, SYNC_EXACT) / n,
                "copies_per_step": count(("cudaMemcpyAsync",)) / n,
                "launches_per_step": count(LAUNCH_CALLS) / n,
                "sync_sites": sync_sites(self.sync_records, n) if self.device.type == "cuda" else None,
                "top_host_ops": [{"op": e.key[:120], "self_ms_per_step": us / 1000 / n, "calls_per_step": e.count / n}
                                 for us, e in host]}


def sync_sites(records: list, steps: int, top: int = 8) -> list[dict]:
    """Where the host waited, from the warnings of ``torch.cuda.set_sync_debug_mode("warn")``: the
    Python lines whose torch calls synchronised (``file:line``, a frame of the suite or of torch),
    with how often per step. The profiler counts the waits; this names the code behind them. The
    final synchronisation of the window is the profiler's own and not a warning."""
    counts = Counter(f"{Path(r.filename).name}:{r.lineno}" for r in records if "synchroniz" in str(r.message))
    return [{"site": site, "per_step": c / steps} for site, c in counts.most_common(top)]
