"""GroupNorm-apply + SiLU + 3x3 convolution in one CUDA kernel (Hopper wgmma), against the UNet's two.

The UNet's inference step before each 3x3 convolution is ``silu(x * a + d)`` with a per-(sample,
channel) scale ``a`` and shift ``d`` (GroupNorm, its affine and FiLM folded together). Today that is
a Triton kernel writing the activated map, then cuDNN's convolution reading it. This kernel reads
the raw map instead: each CTA stages an activated halo tile (its output rows plus one row and
column on every side) in shared memory, computing the activation once per value, and feeds all
nine taps from it. The taps are shifted windows of the tile, so the activation operand (A) goes
to the tensor cores from registers, loaded with ``ldmatrix`` at per-lane row addresses; the
weights (B) come from shared memory through wgmma descriptors. Triton and Gluon cannot express
the shifted windows (results/bench/gluon-window-probe-triton3.8.log), hence CUDA C++.

Tile: 256 output pixels (whole image rows) x 128 output channels, two warpgroups of 128 pixels
each; the input channels in chunks of 64, each chunk's halo built while the previous chunk's
last taps run; the weights of each (chunk, tap) streamed through a ring of shared-memory stages
with cp.async. Channels_last bf16 in and out, fp32 accumulation, zero padding after the
activation (as ``conv2d(silu(...), padding=1)``).

Run on an H100: ``python benchmarks/wgmma_conv.py`` checks it against torch and times it
against the Triton norm kernel + cuDNN at the UNet's shapes, batch 2000.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

TILE_M, TILE_N, CK = 256, 128, 64
HALO_STRIDE = CK * 2 + 16   # bytes per halo pixel: 64 channels + 16 bytes so ldmatrix rows miss each other's banks
W_STAGE = TILE_N * CK * 2   # one (chunk, tap) weight tile, bytes


def _wgmma_asm() -> str:
    acc = ", ".join(f"%{i}" for i in range(64))
    return ('asm volatile("{\\n.reg .pred p;\\nsetp.ne.b32 p, %69, 0;\\n'
            f'wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {{{acc}}}, '
            '{%64, %65, %66, %67}, %68, p, 1, 1, 0;\\n}\\n"\n'
            '    : ' + ", ".join(f'"+f"(d[{i}])' for i in range(64)) +
            '\n    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d));')


SOURCE = r"""
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned short u16;

#define HALO_W (W_ + 2)
#define HALO_PX ((ROWS + 2) * HALO_W)
#define N_CHUNK (CIN / 64)
#define N_IT (N_CHUNK * 9)

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r; asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p)); return r;
}
__device__ __forceinline__ float bf16_lo(u32 v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(u32 v) { return __uint_as_float(v & 0xffff0000u); }
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    u32 r; asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r;
}
__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.0f + __expf(-v)); }

__device__ __forceinline__ void wgmma_128(float* d, const u32* a, u64 desc, int scale_d) {
    WGMMA_ASM
}

// B descriptor: no swizzle, K-major core matrices (8 rows x 16 bytes, contiguous), LBO = stride
// between core matrices along K, SBO = along N
__device__ __forceinline__ u64 b_desc(u32 addr) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)(LBO >> 4) << 16) | ((u64)(SBO >> 4) << 32);
}

// weight tile of (chunk c, tap t) -> stage: 128 rows (output channels) x 64 channels, core layout
__device__ __forceinline__ void load_w(const u16* __restrict__ wt, unsigned char* stage, int it, int n0, int tid) {
    if (it >= N_IT) return;
    int c = it / 9, t = it - c * 9;
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        int q = tid + 256 * i, co = q >> 3, cc = q & 7;
        const u16* src = wt + ((size_t)(n0 + co) * 9 + t) * CIN + c * 64 + cc * 8;
        u32 dst = smem_addr(stage + ((co >> 3) * 8 + cc) * 128 + (co & 7) * 16);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(src));
    }
}

// part `part` of `parts` of the activated halo of chunk c: (ROWS + 2) x (W + 2) pixels, 64 channels
__device__ __forceinline__ void build_halo(const u16* __restrict__ x, const float* __restrict__ a,
                                           const float* __restrict__ dsh, unsigned char* halo, int b,
                                           int row0, int c, int part, int parts, int tid) {
    const int items = HALO_PX * 8;
    const int per = (items + parts - 1) / parts;
    int lo = part * per, hi = min(items, lo + per);
    for (int q = lo + tid; q < hi; q += 256) {
        int hp = q >> 3, g = q & 7;
        int hr = hp / HALO_W, hc = hp - hr * HALO_W;
        int r = row0 - 1 + hr, col = hc - 1;
        uint4 out = make_uint4(0, 0, 0, 0);
        if (r >= 0 && r < H_ && col >= 0 && col < W_) {
            int ch = c * 64 + g * 8;
            uint4 v = *reinterpret_cast<const uint4*>(x + ((size_t)(b * H_ + r) * W_ + col) * CIN + ch);
            const float4* ap = reinterpret_cast<const float4*>(a + (size_t)b * CIN + ch);
            const float4* dp = reinterpret_cast<const float4*>(dsh + (size_t)b * CIN + ch);
            float4 a0 = ap[0], a1 = ap[1], d0 = dp[0], d1 = dp[1];
            out.x = pack_bf16(silu(bf16_lo(v.x) * a0.x + d0.x), silu(bf16_hi(v.x) * a0.y + d0.y));
            out.y = pack_bf16(silu(bf16_lo(v.y) * a0.z + d0.z), silu(bf16_hi(v.y) * a0.w + d0.w));
            out.z = pack_bf16(silu(bf16_lo(v.z) * a1.x + d1.x), silu(bf16_hi(v.z) * a1.y + d1.y));
            out.w = pack_bf16(silu(bf16_lo(v.w) * a1.z + d1.z), silu(bf16_hi(v.w) * a1.w + d1.w));
        }
        *reinterpret_cast<uint4*>(halo + hp * HALO_STRIDE + g * 16) = out;
    }
}

extern "C" __global__ void __launch_bounds__(256, 1)
norm_silu_conv3x3(const u16* __restrict__ x, const float* __restrict__ a, const float* __restrict__ dsh,
                  const u16* __restrict__ wt, const float* __restrict__ bias, u16* __restrict__ y) {
    extern __shared__ __align__(1024) unsigned char smem[];
    unsigned char* wbuf = smem;                          // STAGES x W_STAGE
    unsigned char* halo = smem + STAGES * W_STAGE;       // 2 x HALO_PX x HALO_STRIDE

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, wq = warp & 3;
    const int tiles_per_img = H_ / ROWS;
    const int b = blockIdx.x / tiles_per_img, row0 = (blockIdx.x % tiles_per_img) * ROWS;
    const int n0 = blockIdx.y * 128;

    float acc[2][64];
    #pragma unroll
    for (int m = 0; m < 2; ++m)
        #pragma unroll
        for (int i = 0; i < 64; ++i) acc[m][i] = 0.f;

    // pixel of this lane's ldmatrix row in each of the warp's two 64-pixel tiles
    int lr[2], lc[2];
    #pragma unroll
    for (int m = 0; m < 2; ++m) {
        int p = wg * 128 + m * 64 + wq * 16 + (lane & 15);
        lr[m] = p / W_; lc[m] = p - lr[m] * W_;
    }
    const int koff = (lane >> 4) * 16;

    #pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        load_w(wt, wbuf + s * W_STAGE, s, n0, tid);
        asm volatile("cp.async.commit_group;");
    }
    build_halo(x, a, dsh, halo, b, row0, 0, 0, 1, tid);

    for (int it = 0; it < N_IT; ++it) {
        const int c = it / 9, t = it - c * 9, dy = t / 3, dx = t - dy * 3;
        asm volatile("cp.async.wait_group %0;" :: "n"(STAGES - 2));
        asm volatile("fence.proxy.async.shared::cta;");
        __syncthreads();
        load_w(wt, wbuf + ((it + STAGES - 1) % STAGES) * W_STAGE, it + STAGES - 1, n0, tid);
        asm volatile("cp.async.commit_group;");

        const unsigned char* hb = halo + (c & 1) * (HALO_PX * HALO_STRIDE);
        u32 frag[2][4][4];
        #pragma unroll
        for (int m = 0; m < 2; ++m) {
            u32 base = smem_addr(hb + ((lr[m] + dy) * HALO_W + lc[m] + dx) * HALO_STRIDE + koff);
            #pragma unroll
            for (int kk = 0; kk < 4; ++kk)
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                             : "=r"(frag[m][kk][0]), "=r"(frag[m][kk][1]), "=r"(frag[m][kk][2]), "=r"(frag[m][kk][3])
                             : "r"(base + kk * 32));
        }
        const u32 wst = smem_addr(wbuf + (it % STAGES) * W_STAGE);
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
        #pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            #pragma unroll
            for (int m = 0; m < 2; ++m)
                wgmma_128(acc[m], frag[m][kk], b_desc(wst + kk * 256), 1);
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        // the next chunk's halo, a ninth per tap, while the tensor cores work
        if (c + 1 < N_CHUNK)
            build_halo(x, a, dsh, halo + ((c + 1) & 1) * (HALO_PX * HALO_STRIDE), b, row0, c + 1, t, 9, tid);
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    }
    asm volatile("cp.async.wait_group 0;");

    // epilogue: bias, bf16, straight to global (each quad writes 16 contiguous bytes of a pixel)
    #pragma unroll
    for (int m = 0; m < 2; ++m) {
        int p0 = blockIdx.x * 256 + wg * 128 + m * 64 + wq * 16 + (lane >> 2);
        #pragma unroll
        for (int j = 0; j < 16; ++j) {
            int col = n0 + j * 8 + (lane & 3) * 2;
            float b0 = bias[col], b1 = bias[col + 1];
            *reinterpret_cast<u32*>(y + (size_t)p0 * COUT + col) = pack_bf16(acc[m][4 * j] + b0, acc[m][4 * j + 1] + b1);
            *reinterpret_cast<u32*>(y + (size_t)(p0 + 8) * COUT + col) = pack_bf16(acc[m][4 * j + 2] + b0, acc[m][4 * j + 3] + b1);
        }
    }
}
"""


def source(cin: int, cout: int, h: int, w: int, stages: int = 4, lbo: int = 128, sbo: int = 1024) -> str:
    rows = TILE_M // w
    assert TILE_M % w == 0 and h % rows == 0 and cin % CK == 0 and cout % TILE_N == 0, (cin, cout, h, w)
    defs = (f"#define CIN {cin}\n#define COUT {cout}\n#define H_ {h}\n#define W_ {w}\n#define ROWS {rows}\n"
            f"#define STAGES {stages}\n#define W_STAGE {W_STAGE}\n#define HALO_STRIDE {HALO_STRIDE}\n"
            f"#define LBO {lbo}\n#define SBO {sbo}\n")
    return defs + SOURCE.replace("WGMMA_ASM", _wgmma_asm())


def smem_bytes(h: int, w: int, stages: int = 4) -> int:
    rows = TILE_M // w
    return stages * W_STAGE + 2 * (rows + 2) * (w + 2) * HALO_STRIDE


class FusedConv:
    """``conv3x3(silu(x * a + d), weight) + bias`` for channels_last bf16 ``x`` of one shape."""

    def __init__(self, cin: int, cout: int, h: int, w: int, stages: int = 4, lbo: int = 128, sbo: int = 1024):
        from torch.cuda import _compile_kernel
        self.shape = (cin, cout, h, w)
        self.smem = smem_bytes(h, w, stages)
        self.kernel = _compile_kernel(source(cin, cout, h, w, stages, lbo, sbo), "norm_silu_conv3x3",
                                      compute_capability="90a", nvcc_options=["-std=c++17"])
        if hasattr(self.kernel, "set_shared_memory_config"):
            self.kernel.set_shared_memory_config(self.smem)
        else:  # older torch: the driver call set_shared_memory_config makes
            from torch.cuda._utils import _get_gpu_runtime_library
            max_dynamic_smem = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            assert _get_gpu_runtime_library().cuFuncSetAttribute(self.kernel.func, max_dynamic_smem, self.smem) == 0

    def __call__(self, x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, weight_nhwc: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
        cin, cout, h, w = self.shape
        B = x.shape[0]
        assert x.shape == (B, cin, h, w) and x.is_contiguous(memory_format=torch.channels_last)
        y = torch.empty((B, cout, h, w), device=x.device, dtype=torch.bfloat16, memory_format=torch.channels_last)
        self.kernel(grid=(B * h * w // TILE_M, cout // TILE_N, 1), block=(256, 1, 1),
                    args=[x, a, d, weight_nhwc, bias, y], shared_mem=self.smem)
        return y


def nhwc_weight(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) -> contiguous (Cout, 3, 3, Cin) bf16, the kernel's weight order."""
    return weight.permute(0, 2, 3, 1).contiguous().to(torch.bfloat16)


def _time(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record(); fn(); stop.record(); torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--shape", action="append", default=None, help="CIN,COUT,H,W (repeatable)")
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--desc", action="append", default=None, help="LBO,SBO to try (repeatable)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "bench"))
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from jdcl_bench.bench import device_info
    from jdcl_bench.jdcl import triton_norm

    shapes = [tuple(int(v) for v in s.split(",")) for s in (args.shape or ["128,128,32,32", "256,256,16,16", "384,128,32,32"])]
    descs = [tuple(int(v) for v in s.split(",")) for s in (args.desc or ["128,1024"])]
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for cin, cout, h, w in shapes:
        B = args.batch
        x = torch.randn(B, cin, h, w, device=dev, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        norm = torch.nn.GroupNorm(32, cin).to(dev)
        with torch.no_grad():
            norm.weight.copy_(1 + 0.1 * torch.randn(cin, device=dev, generator=g))
            norm.bias.copy_(0.1 * torch.randn(cin, device=dev, generator=g))
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(dev)
        scale = 0.1 * torch.randn(B, cin, device=dev, generator=g)
        shift = 0.1 * torch.randn(B, cin, device=dev, generator=g)
        wb = conv.weight.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        bb = conv.bias.detach().to(torch.bfloat16)
        wk, bk = nhwc_weight(conv.weight.detach()), conv.bias.detach().float().contiguous()

        def fold(x):
            # per-(sample, channel) a, d of silu(x * a + d): group statistics of x, affine, FiLM
            xf = x.float().reshape(B, 32, cin // 32, h * w)
            var, mean = torch.var_mean(xf, dim=(2, 3), correction=0)
            rstd = torch.rsqrt(var + norm.eps)
            rstd = rstd.repeat_interleave(cin // 32, dim=1)
            mean = mean.repeat_interleave(cin // 32, dim=1)
            a = norm.weight * rstd * (1 + scale)
            d = (norm.bias - mean * a / (1 + scale)) * (1 + scale) + shift
            return a.contiguous(), d.contiguous()

        fold_c = torch.compile(fold)

        @torch.no_grad()
        def separate():
            act = triton_norm.norm_act(norm, x, scale, shift)
            return torch.nn.functional.conv2d(act, wb, bb, padding=1)

        with torch.no_grad():
            ref = separate().float()
            a, d = fold(x)
        row = {"shape": [B, cin, cout, h, w], "separate_ms": _time(separate)}
        row["cudnn_conv_only_ms"] = _time(lambda: torch.nn.functional.conv2d(x, wb, bb, padding=1))
        row["stats_fold_ms"] = _time(lambda: fold_c(x))
        for lbo, sbo in descs:
            t0 = time.perf_counter()
            try:
                fc = FusedConv(cin, cout, h, w, args.stages, lbo, sbo)
            except Exception as e:  # noqa: BLE001 - report and go on to the next variant
                row[f"fused_{lbo}_{sbo}"] = f"compile failed: {str(e)[:2000]}"
                print(row[f"fused_{lbo}_{sbo}"], flush=True)
                continue
            out = fc(x, a, d, wk, bk).float()
            torch.cuda.synchronize()
            err = ((out - ref).norm() / ref.norm()).item()
            ms = _time(lambda: fc(x, a, d, wk, bk))
            flops = 2 * B * h * w * cout * cin * 9
            row[f"fused_{lbo}_{sbo}"] = {"compile_s": time.perf_counter() - t0, "rel_err_vs_separate": err,
                                         "ms": ms, "tflops": flops / ms / 1e9,
                                         "with_stats_ms": ms + row["stats_fold_ms"]}
        row["conv_tflops_cudnn"] = 2 * B * h * w * cout * cin * 9 / row["cudnn_conv_only_ms"] / 1e9
        print(json.dumps(row), flush=True)
        rows.append(row)
    os.makedirs(args.out, exist_ok=True)
    info = device_info(dev)
    path = os.path.join(args.out, f"wgmma-conv-{info['gpu_name'].replace(' ', '_')}-{time.strftime('%Y%m%dT%H%M%S')}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({**info, "settings": vars(args), "rows": rows}, f, indent=1)
    os.replace(path + ".tmp", path)
    print("wrote", path)


if __name__ == "__main__":
    main()
