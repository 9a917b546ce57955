"""Can Triton's Gluon feed a wgmma from a shifted window of one shared-memory tile? (no GPU needed)

The fused convolution that the DDIM target needs (results/bench/README.md) would activate a halo
tile of the input once, keep it in shared memory, and feed each of the nine 3x3 taps to the tensor
cores from the same tile, shifted by the tap's pixel offset. This compiles, for sm_90 and without
a GPU, a small Gluon kernel that slices a [256, 64] bf16 shared-memory tile at row offset OFF
(length 128) and feeds that slice to ``warpgroup_mma`` in two ways:

- as a shared-memory operand, in NVMMA layouts with 128/64/32-byte swizzles;
- loaded into registers first (a dot-operand layout), from plain swizzled layouts.

It prints which offsets compile. Measured with Triton 3.8 (torch 2.14's), 2026-11-25: only offsets
that are multiples of the slice length (0, 128) compile. Every other offset (8, 16, 35) fails in
both forms, with "The split offset may not touch the tile". Shifted windows therefore need CUDA
C++ (the wgmma descriptor has a base-offset field for this) or another Gluon release.

Usage: python benchmarks/gluon_window_probe.py
"""
from __future__ import annotations

import os
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia import hopper


@gluon.jit
def _window_mma(A, B, C, OFF: gl.constexpr, SWIZZLE: gl.constexpr, IN_REGISTERS: gl.constexpr):
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    rows = gl.arange(0, 256, layout=gl.SliceLayout(1, blk))
    cols = gl.arange(0, 64, layout=gl.SliceLayout(0, blk))
    a = gl.load(A + rows[:, None] * 64 + cols[None, :])
    if IN_REGISTERS:
        a_layout: gl.constexpr = gl.SwizzledSharedLayout(8, 1, 8, [1, 0])
    else:
        a_layout: gl.constexpr = gl.NVMMASharedLayout(SWIZZLE, 16, rank=2)
    a_s = gl.allocate_shared_memory(gl.bfloat16, [256, 64], a_layout, a)
    brows = gl.arange(0, 64, layout=gl.SliceLayout(1, blk))
    bcols = gl.arange(0, 128, layout=gl.SliceLayout(0, blk))
    b = gl.load(B + brows[:, None] * 128 + bcols[None, :])
    b_s = gl.allocate_shared_memory(gl.bfloat16, [64, 128], gl.NVMMASharedLayout(128, 16, rank=2), b)
    hopper.fence_async_shared()
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 16])
    window = a_s.slice(OFF, 128, dim=0)  # the tap's rows of the halo tile
    if IN_REGISTERS:
        window = window.load(gl.DotOperandLayout(0, mma, 2))
    acc = hopper.warpgroup_mma(window, b_s, gl.zeros([128, 128], gl.float32, layout=mma))
    crows = gl.arange(0, 128, layout=gl.SliceLayout(1, mma))
    ccols = gl.arange(0, 128, layout=gl.SliceLayout(0, mma))
    gl.store(C + crows[:, None] * 128 + ccols[None, :], acc)


def compiles(off: int, swizzle: int, in_registers: bool) -> str:
    sig = {"A": "*bf16", "B": "*bf16", "C": "*fp32", "OFF": "constexpr", "SWIZZLE": "constexpr",
           "IN_REGISTERS": "constexpr"}
    names = list(sig)
    src = gluon._runtime.GluonASTSource(
        fn=_window_mma, signature=sig, constexprs={(3,): off, (4,): swizzle, (5,): in_registers},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in ("A", "B", "C")})
    # the compiler writes its diagnostics to the process's stderr, not into the exception
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
        except RuntimeError:
            ptx = None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        why = [line.split("error: ", 1)[1] for line in err.read().decode(errors="replace").splitlines()
               if "error: " in line]
    if ptx is None:
        return "refused: " + (why[0] if why else "compile error")
    return f"compiles ({ptx.count('wgmma.mma_async')} wgmma)"


def main() -> None:
    print(f"Triton {triton.__version__}")
    for form, swizzles, in_registers in (("shared-memory operand", (128, 64, 32), False),
                                         ("registers, loaded from a swizzled tile", (0,), True)):
        for swizzle in swizzles:
            for off in (0, 8, 16, 35, 128):
                label = form + (f", {swizzle}-byte swizzle" if not in_registers else "")
                print(f"{label:<42} offset {off:>3}: {compiles(off, swizzle, in_registers)}", flush=True)


if __name__ == "__main__":
    main()
