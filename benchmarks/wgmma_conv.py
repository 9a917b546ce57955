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
#define HALO_BYTES (HALO_PX * HALO_STRIDE)
#define N_CHUNK (CIN / 64)
#define N_IT (N_CHUNK * 9)
#define TILES_PER_IMG (H_ / ROWS)
#define HALO_ITEMS (HALO_PX * 8)                 // 16-byte pieces (8 channels) of one chunk's halo
#define PART ((HALO_ITEMS + 8) / 9)              // a ninth of them, built during each tap
#define PART_SLOTS ((PART + 255) / 256)          // pieces per thread per ninth
// weights are prefetched AHEAD iterations ahead; a stage is rewritten only once the wgmma that
// read it has completed (one wgmma group stays in flight)
#define AHEAD (STAGES - 2)

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r; asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p)); return r;
}
__device__ __forceinline__ float bf16_lo(u32 v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(u32 v) { return __uint_as_float(v & 0xffff0000u); }
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    u32 r; asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r;
}
__device__ __forceinline__ float silu(float v) {
#if TANH_SILU
    // v * sigmoid(v) = 0.5 v (1 + tanh(v / 2)): one MUFU operation instead of two
    float t; asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(0.5f * v));
    return 0.5f * v * (1.0f + t);
#else
    return __fdividef(v, 1.0f + __expf(-v));
#endif
}

__device__ __forceinline__ void wgmma_128(float* d, const u32* a, u64 desc, int scale_d) {
    WGMMA_ASM
}

// B descriptor of a (128 output channels) x (64 channels) K-major weight tile. SWIZZLE: rows of
// 128 bytes, 16-byte pieces XOR-swizzled by row (the 128-byte mode), 8-row groups 1024 bytes
// apart; else no swizzle: core matrices (8 rows x 16 bytes) contiguous, LBO apart along K, SBO
// apart along N
__device__ __forceinline__ u64 b_desc(u32 addr) {
#if SWIZZLE
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
#else
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)(LBO >> 4) << 16) | ((u64)(SBO >> 4) << 32);
#endif
}
__device__ __forceinline__ u32 w_offset(int co, int cc) {
#if SWIZZLE
    return co * 128 + ((cc ^ (co & 7)) << 4);
#else
    return ((co >> 3) * 8 + cc) * 128 + (co & 7) * 16;
#endif
}
// the k-th 16-channel step inside a stage
#define K_STEP_BYTES (SWIZZLE ? 32 : 256)

struct Item { int b, row0, n0; bool ok; };
__device__ __forceinline__ Item item_at(int k) {
    int idx = blockIdx.x + k * gridDim.x;                 // work item: (m tile, n tile), n fastest
    Item I; I.ok = idx < N_ITEMS;
    int m = idx / (COUT / 128), n = idx - m * (COUT / 128);
    I.b = m / TILES_PER_IMG; I.row0 = (m - I.b * TILES_PER_IMG) * ROWS; I.n0 = n * 128;
    return I;
}

// weights of global iteration g (item g / N_IT, chunk, tap) -> stage
__device__ __forceinline__ void load_w(const u16* __restrict__ wt, unsigned char* stage, int g, int tid) {
    Item I = item_at(g / N_IT);
    if (!I.ok) return;
    int it = g % N_IT, c = it / 9, t = it - c * 9;
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        int q = tid + 256 * i, co = q >> 3, cc = q & 7;
        const u16* src = wt + ((size_t)(I.n0 + co) * 9 + t) * CIN + c * 64 + cc * 8;
        u32 dst = smem_addr(stage + w_offset(co, cc));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(src));
    }
}

// halo piece q: image pixel (row0 - 1 + hr, hc - 1), 8 channels; zero outside the image
__device__ __forceinline__ bool piece_pos(int q, int row0, int& hp, int& g, int& pix) {
    hp = q >> 3; g = q & 7;
    int hr = hp / HALO_W, hc = hp - hr * HALO_W;
    int r = row0 - 1 + hr, col = hc - 1;
    pix = r * W_ + col;
    return q < HALO_ITEMS && r >= 0 && r < H_ && col >= 0 && col < W_;
}
__device__ __forceinline__ uint4 activate(uint4 v, const float* as, const float* ds) {
    uint4 o;
    o.x = pack_bf16(silu(bf16_lo(v.x) * as[0] + ds[0]), silu(bf16_hi(v.x) * as[1] + ds[1]));
    o.y = pack_bf16(silu(bf16_lo(v.y) * as[2] + ds[2]), silu(bf16_hi(v.y) * as[3] + ds[3]));
    o.z = pack_bf16(silu(bf16_lo(v.z) * as[4] + ds[4]), silu(bf16_hi(v.z) * as[5] + ds[5]));
    o.w = pack_bf16(silu(bf16_lo(v.w) * as[6] + ds[6]), silu(bf16_hi(v.w) * as[7] + ds[7]));
    return o;
}

struct Pieces { uint4 v[PART_SLOTS]; };
// which chunk a halo holds: item k's sample and rows, channel chunk c, scale/shift in shared memory
struct HaloSrc { const u16* xb; int row0, c; const float* as; const float* ds; bool ok; };

__device__ __forceinline__ void halo_load(Pieces& P, const HaloSrc& S, int part, int tid) {
    #pragma unroll
    for (int s = 0; s < PART_SLOTS; ++s) {
        int q = part * PART + s * 256 + tid, hp, g, pix;
        P.v[s] = make_uint4(0, 0, 0, 0);
        if (S.ok && s * 256 + tid < PART && piece_pos(q, S.row0, hp, g, pix))
            P.v[s] = *reinterpret_cast<const uint4*>(S.xb + (size_t)pix * CIN + S.c * 64 + g * 8);
    }
}
__device__ __forceinline__ void halo_store(const Pieces& P, unsigned char* halo, const HaloSrc& S, int part, int tid) {
    if (!S.ok) return;
    #pragma unroll
    for (int s = 0; s < PART_SLOTS; ++s) {
        int q = part * PART + s * 256 + tid, hp, g, pix;
        if (s * 256 + tid >= PART || q >= HALO_ITEMS) continue;
        uint4 o = make_uint4(0, 0, 0, 0);
        if (piece_pos(q, S.row0, hp, g, pix)) o = activate(P.v[s], S.as + S.c * 64 + g * 8, S.ds + S.c * 64 + g * 8);
        *reinterpret_cast<uint4*>(halo + hp * HALO_STRIDE + g * 16) = o;
    }
}

struct Ctx {
    const u16* x; const u16* wt; const float* a; const float* d; const float* bias; u16* y;
    unsigned char* wbuf; unsigned char* halo; float* asd;   // asd: 2 x (scale, shift) x CIN, by item parity
    int tid, lane, wg, wq, lr[2], lc[2];
};

__device__ __forceinline__ HaloSrc halo_src(const Ctx& C, int k, int c) {
    Item I = item_at(k);
    HaloSrc S; S.ok = I.ok; S.xb = C.x + (size_t)I.b * H_ * W_ * CIN; S.row0 = I.row0; S.c = c;
    S.as = C.asd + (k & 1) * 2 * CIN; S.ds = S.as + CIN;
    return S;
}

// one (item k, chunk, tap) iteration g; PAR picks the fragment register set so that the previous
// iteration's wgmma can still read its own while this one loads
template <int PAR>
__device__ __forceinline__ void step(const Ctx& C, int g, float (&acc)[2][64], u32 (&frag)[2][2][4][4], Pieces& P) {
    const int k = g / N_IT, it = g - k * N_IT;
    const int c = it / 9, t = it - c * 9, dy = t / 3, dx = t - dy * 3;
    asm volatile("cp.async.wait_group %0;" :: "n"(AHEAD - 1));
    asm volatile("fence.proxy.async.shared::cta;");
    __syncthreads();
    load_w(C.wt, C.wbuf + ((g + AHEAD) % STAGES) * W_STAGE, g + AHEAD, C.tid);
    asm volatile("cp.async.commit_group;");
    if (it == 0) {   // the next item's scale and shift, read when its first halo is built (last chunk of this one)
        Item N = item_at(k + 1);
        float* dst = C.asd + ((k + 1) & 1) * 2 * CIN;
        if (N.ok)
            for (int i = C.tid; i < CIN; i += 256) { dst[i] = C.a[(size_t)N.b * CIN + i]; dst[CIN + i] = C.d[(size_t)N.b * CIN + i]; }
    }

    const int gc = k * N_CHUNK + c;   // global chunk index: its halo buffer is gc & 1
    const unsigned char* hb = C.halo + (gc & 1) * HALO_BYTES;
    #pragma unroll
    for (int m = 0; m < 2; ++m) {
        u32 base = smem_addr(hb + ((C.lr[m] + dy) * HALO_W + C.lc[m] + dx) * HALO_STRIDE + (C.lane >> 4) * 16);
        #pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                         : "=r"(frag[PAR][m][kk][0]), "=r"(frag[PAR][m][kk][1]), "=r"(frag[PAR][m][kk][2]), "=r"(frag[PAR][m][kk][3])
                         : "r"(base + kk * 32));
    }
    const u32 wst = smem_addr(C.wbuf + (g % STAGES) * W_STAGE);
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
    if (!SKIP_MMA) {
        #pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            #pragma unroll
            for (int m = 0; m < 2; ++m)
                wgmma_128(acc[m], frag[PAR][m][kk], b_desc(wst + kk * K_STEP_BYTES), 1);
    } else {
        #pragma unroll
        for (int m = 0; m < 2; ++m)
            #pragma unroll
            for (int kk = 0; kk < 4; ++kk) acc[m][kk] += __uint_as_float(frag[PAR][m][kk][0] ^ frag[PAR][m][kk][3]);
    }
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");

    // the next chunk's halo (this item's next chunk, or the next item's first), a ninth per tap,
    // while the tensor cores work: store the ninth loaded during the previous tap, load this one's
    HaloSrc S = c + 1 < N_CHUNK ? halo_src(C, k, c + 1) : halo_src(C, k + 1, 0);
    unsigned char* hn = C.halo + ((gc + 1) & 1) * HALO_BYTES;
    if (!SKIP_BUILD) {
        if (t > 0) halo_store(P, hn, S, t - 1, C.tid);
        halo_load(P, S, t, C.tid);
    }
    if (it == N_IT - 1) {   // the item's last tap: drain, write its tile, start the next from zero
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        if (!SKIP_BUILD) halo_store(P, hn, S, 8, C.tid);
        Item I = item_at(k);
        #pragma unroll
        for (int m = 0; m < 2; ++m) {
            int p0 = (I.b * TILES_PER_IMG + I.row0 / ROWS) * 256 + C.wg * 128 + m * 64 + C.wq * 16 + (C.lane >> 2);
            #pragma unroll
            for (int j = 0; j < 16; ++j) {
                int col = I.n0 + j * 8 + (C.lane & 3) * 2;
                float b0 = C.bias[col], b1 = C.bias[col + 1];
                *reinterpret_cast<u32*>(C.y + (size_t)p0 * COUT + col) = pack_bf16(acc[m][4 * j] + b0, acc[m][4 * j + 1] + b1);
                *reinterpret_cast<u32*>(C.y + (size_t)(p0 + 8) * COUT + col) = pack_bf16(acc[m][4 * j + 2] + b0, acc[m][4 * j + 3] + b1);
                acc[m][4 * j] = acc[m][4 * j + 1] = acc[m][4 * j + 2] = acc[m][4 * j + 3] = 0.f;
            }
        }
    } else {
        asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
        if (!SKIP_BUILD && t == 8) halo_store(P, hn, S, 8, C.tid);
    }
}

// persistent: gridDim.x CTAs walk the (m tile, n tile) items; weights, halos and scale/shift of
// the next item are fetched while this one's last taps run
extern "C" __global__ void __launch_bounds__(256, 1)
norm_silu_conv3x3(const u16* __restrict__ x, const float* __restrict__ a, const float* __restrict__ dsh,
                  const u16* __restrict__ wt, const float* __restrict__ bias, u16* __restrict__ y) {
    extern __shared__ __align__(1024) unsigned char smem[];
    Ctx C;
    C.x = x; C.wt = wt; C.a = a; C.d = dsh; C.bias = bias; C.y = y;
    C.tid = threadIdx.x; C.lane = C.tid & 31; C.wg = C.tid >> 7; C.wq = (C.tid >> 5) & 3;
    C.wbuf = smem;                                        // STAGES x W_STAGE
    C.halo = smem + STAGES * W_STAGE;                     // 2 x HALO_BYTES
    C.asd = reinterpret_cast<float*>(C.halo + 2 * HALO_BYTES);
    #pragma unroll
    for (int m = 0; m < 2; ++m) {   // pixel of this lane's ldmatrix row in each of the warp's 64-pixel tiles
        int p = C.wg * 128 + m * 64 + C.wq * 16 + (C.lane & 15);
        C.lr[m] = p / W_; C.lc[m] = p - C.lr[m] * W_;
    }
    Item I0 = item_at(0);
    if (!I0.ok) return;

    #pragma unroll
    for (int s = 0; s < AHEAD; ++s) {
        load_w(wt, C.wbuf + s * W_STAGE, s, C.tid);
        asm volatile("cp.async.commit_group;");
    }
    for (int i = C.tid; i < CIN; i += 256) { C.asd[i] = a[(size_t)I0.b * CIN + i]; C.asd[CIN + i] = dsh[(size_t)I0.b * CIN + i]; }
    __syncthreads();
    {   // the first item's first halo, three ninths in flight at a time
        HaloSrc S = halo_src(C, 0, 0);
        Pieces P0, P1, P2;
        for (int part = 0; part < 9; part += 3) {
            halo_load(P0, S, part, C.tid); halo_load(P1, S, part + 1, C.tid); halo_load(P2, S, part + 2, C.tid);
            halo_store(P0, C.halo, S, part, C.tid); halo_store(P1, C.halo, S, part + 1, C.tid);
            halo_store(P2, C.halo, S, part + 2, C.tid);
        }
    }

    float acc[2][64];
    #pragma unroll
    for (int m = 0; m < 2; ++m)
        #pragma unroll
        for (int i = 0; i < 64; ++i) acc[m][i] = 0.f;
    u32 frag[2][2][4][4];
    Pieces P;
    const int n_items = (N_ITEMS - blockIdx.x + gridDim.x - 1) / gridDim.x;
    for (int g = 0; g < n_items * N_IT; g += 2) {   // N_IT is even: 9 taps x an even number of chunks
        step<0>(C, g, acc, frag, P);
        step<1>(C, g + 1, acc, frag, P);
    }
    asm volatile("cp.async.wait_group 0;");
}
"""


# compile-time switches; "no-build" and "no-mma" compute wrong maps: they time what is left
VARIANTS = {"plain": {}, "swizzle": {"SWIZZLE": 1}, "tanh": {"TANH_SILU": 1},
            "swizzle-tanh": {"SWIZZLE": 1, "TANH_SILU": 1},
            "no-build": {"SKIP_BUILD": 1, "SWIZZLE": 1}, "no-mma": {"SKIP_MMA": 1, "SWIZZLE": 1},
            "ws": {}, "ws-rotate": {"WS_ROTATE": 1}, "ws-rotate-no-build": {"WS_ROTATE": 1, "WS_NO_BUILD": 1},
            "ws-no-build": {"WS_NO_BUILD": 1}, "ws-raw": {"WS_RAW": 1},
            "ws-raw-late": {"WS_RAW": 1, "WS_LATE": 1}}  # warp-specialised: WS_SOURCE


# Warp-specialised form: one producer warpgroup streams the weights (one bulk copy per (chunk,
# tap) tile, pre-swizzled in global memory, completing on an mbarrier) and builds the halos; two
# consumer warpgroups only load fragments and multiply. No CTA-wide barrier in the main loop.
WS_SOURCE = r"""
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned short u16;

#define HALO_W (W_ + 2)
#define HALO_PX ((ROWS + 2) * HALO_W)
#define HALO_BYTES (HALO_PX * HALO_STRIDE)
#define N_CHUNK (CIN / 64)
#define N_IT (N_CHUNK * 9)
#define TILES_PER_IMG (H_ / ROWS)
#define HALO_ITEMS (HALO_PX * 8)
#define PART ((HALO_ITEMS + 8) / 9)
#define PSLOTS ((PART + 127) / 128)              // pieces per producer thread per ninth

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r; asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p)); return r;
}
__device__ __forceinline__ float bf16_lo(u32 v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(u32 v) { return __uint_as_float(v & 0xffff0000u); }
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    u32 r; asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r;
}
__device__ __forceinline__ float silu(float v) {
    float t; asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(0.5f * v));
    return 0.5f * v * (1.0f + t);
}
__device__ __forceinline__ void wgmma_128(float* d, const u32* a, u64 desc, int scale_d) {
    WGMMA_ASM
}
__device__ __forceinline__ u64 b_desc(u32 addr) {   // 128-byte swizzled K-major tile
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}

// mbarriers
__device__ __forceinline__ void mb_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count));
}
__device__ __forceinline__ void mb_arrive(u32 bar) {
    asm volatile("{ .reg .b64 st; mbarrier.arrive.shared::cta.b64 st, [%0]; }" :: "r"(bar) : "memory");
}
__device__ __forceinline__ void mb_expect_tx(u32 bar, u32 bytes) {
    asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1; }" :: "r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mb_wait(u32 bar, u32 parity) {
    u32 ok;
    do {
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(ok) : "r"(bar), "r"(parity) : "memory");
    } while (!ok);
}

struct Item { int b, row0, n; bool ok; };
__device__ __forceinline__ Item item_at(int k) {
    int idx = blockIdx.x + k * gridDim.x;
    Item I; I.ok = idx < N_ITEMS;
    int m = idx / (COUT / 128), n = idx - m * (COUT / 128);
    I.b = m / TILES_PER_IMG; I.row0 = (m - I.b * TILES_PER_IMG) * ROWS; I.n = n;
    return I;
}

__device__ __forceinline__ bool piece_pos(int q, int row0, int& hp, int& g, int& pix) {
    hp = q >> 3; g = q & 7;
    int hr = hp / HALO_W, hc = hp - hr * HALO_W;
    int r = row0 - 1 + hr, col = hc - 1;
    pix = r * W_ + col;
    return q < HALO_ITEMS && r >= 0 && r < H_ && col >= 0 && col < W_;
}
struct Pieces { uint4 v[PSLOTS]; };
struct HaloSrc { const u16* xb; int row0, c; const float* as; bool ok; };

__device__ __forceinline__ void halo_load(Pieces& P, const HaloSrc& S, int part, int pt) {
    #pragma unroll
    for (int s = 0; s < PSLOTS; ++s) {
        int q = part * PART + s * 128 + pt, hp, g, pix;
        P.v[s] = make_uint4(0, 0, 0, 0);
        if (S.ok && s * 128 + pt < PART && piece_pos(q, S.row0, hp, g, pix))
            P.v[s] = *reinterpret_cast<const uint4*>(S.xb + (size_t)pix * CIN + S.c * 64 + g * 8);
    }
}
__device__ __forceinline__ void halo_store(const Pieces& P, unsigned char* halo, const HaloSrc& S, int part, int pt) {
    if (!S.ok) return;
    #pragma unroll
    for (int s = 0; s < PSLOTS; ++s) {
        int q = part * PART + s * 128 + pt, hp, g, pix;
        if (s * 128 + pt >= PART || q >= HALO_ITEMS) continue;
        uint4 o = make_uint4(0, 0, 0, 0);
        if (piece_pos(q, S.row0, hp, g, pix)) {
            const float* as = S.as + S.c * 64 + g * 8;       // scale, then shift CIN floats later
            const float* ds = as + CIN;
            uint4 v = P.v[s];
            o.x = pack_bf16(silu(bf16_lo(v.x) * as[0] + ds[0]), silu(bf16_hi(v.x) * as[1] + ds[1]));
            o.y = pack_bf16(silu(bf16_lo(v.y) * as[2] + ds[2]), silu(bf16_hi(v.y) * as[3] + ds[3]));
            o.z = pack_bf16(silu(bf16_lo(v.z) * as[4] + ds[4]), silu(bf16_hi(v.z) * as[5] + ds[5]));
            o.w = pack_bf16(silu(bf16_lo(v.w) * as[6] + ds[6]), silu(bf16_hi(v.w) * as[7] + ds[7]));
        }
        *reinterpret_cast<uint4*>(halo + hp * HALO_STRIDE + g * 16) = o;
    }
}

// WS_RAW: the next halo's raw pieces come by cp.async into a staging buffer, all nine ninths
// issued at once (one commit group each), so one memory latency is paid per chunk, not per tap;
// each producer thread converts the pieces it fetched, a ninth per tap
__device__ __forceinline__ void raw_issue(const HaloSrc& S, u32 raw, int pt) {
    #pragma unroll 1
    for (int part = 0; part < 9; ++part) {
        #pragma unroll
        for (int s = 0; s < PSLOTS; ++s) {
            int q = part * PART + s * 128 + pt, hp, g, pix;
            if (s * 128 + pt < PART && piece_pos(q, S.row0, hp, g, pix))
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;"
                             :: "r"(raw + q * 16), "l"(S.xb + (size_t)pix * CIN + S.c * 64 + g * 8));
        }
        asm volatile("cp.async.commit_group;");
    }
}
__device__ __forceinline__ void raw_wait(int part) {   // ninths 0..part of this thread have landed
    switch (part) {
        case 0: asm volatile("cp.async.wait_group 8;" ::: "memory"); break;
        case 1: asm volatile("cp.async.wait_group 7;" ::: "memory"); break;
        case 2: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
        case 3: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
        case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
        case 5: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
        case 6: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
        case 7: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
        default: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    }
}
__device__ __forceinline__ void raw_convert(const HaloSrc& S, const unsigned char* raw, unsigned char* halo, int part, int pt) {
    Pieces P;
    #pragma unroll
    for (int s = 0; s < PSLOTS; ++s) {
        int q = part * PART + s * 128 + pt;
        P.v[s] = (s * 128 + pt < PART && q < HALO_ITEMS) ? *reinterpret_cast<const uint4*>(raw + q * 16) : make_uint4(0, 0, 0, 0);
    }
    halo_store(P, halo, S, part, pt);
}

// shared memory: weight stages | 2 halos | 2 x (scale, shift) | mbarriers | raw staging (WS_RAW)
#define OFF_HALO (STAGES * W_STAGE)
#define OFF_ASD (OFF_HALO + 2 * HALO_BYTES)
#define OFF_BAR (OFF_ASD + 2 * 2 * CIN * 4)
// barriers: full_w[STAGES], empty_w[STAGES], full_h[2], empty_h[2]
#define OFF_RAW (OFF_BAR + 8 * (2 * STAGES + 4))

template <int PAR>
__device__ __forceinline__ void consume(int g, u32 smem0, const unsigned char* halo, u32 bars, int lr[2], int lc[2], int lane,
                                        float (&acc)[2][64], u32 (&frag)[2][2][4][4], const float* bias, u16* y, int wgc, int wq) {
    const int k = g / N_IT, it = g - k * N_IT;
    const int c = it / 9, t = it - c * 9;
    const int tap = WS_ROTATE ? (t + blockIdx.x) % 9 : t, dy = tap / 3, dx = tap - dy * 3;
    const int gc = k * N_CHUNK + c, s = g % STAGES;
    const u32 full_w = bars + s * 8, empty_w0 = bars + STAGES * 8;
    const u32 full_h = bars + 2 * STAGES * 8 + (gc & 1) * 8, empty_h = bars + 2 * STAGES * 8 + 16 + (gc & 1) * 8;
    if (t == 0) mb_wait(full_h, (gc >> 1) & 1);
    const unsigned char* hb = halo + (gc & 1) * HALO_BYTES;
    #pragma unroll
    for (int m = 0; m < 2; ++m) {
        u32 base = smem_addr(hb + ((lr[m] + dy) * HALO_W + lc[m] + dx) * HALO_STRIDE + (lane >> 4) * 16);
        #pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                         : "=r"(frag[PAR][m][kk][0]), "=r"(frag[PAR][m][kk][1]), "=r"(frag[PAR][m][kk][2]), "=r"(frag[PAR][m][kk][3])
                         : "r"(base + kk * 32));
    }
    if (t == 8) mb_arrive(empty_h);   // the fragments are in registers: the halo may be rebuilt
    mb_wait(full_w, (g / STAGES) & 1);
    const u32 wst = smem0 + s * W_STAGE;
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
    #pragma unroll
    for (int kk = 0; kk < 4; ++kk)
        #pragma unroll
        for (int m = 0; m < 2; ++m)
            wgmma_128(acc[m], frag[PAR][m][kk], b_desc(wst + kk * 32), 1);
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
    if (it > 0) mb_arrive(empty_w0 + ((g - 1) % STAGES) * 8);   // the previous tap's weights are read
    if (it == N_IT - 1) {
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        mb_arrive(empty_w0 + s * 8);
        Item I = item_at(k);
        #pragma unroll
        for (int m = 0; m < 2; ++m) {
            int p0 = (I.b * TILES_PER_IMG + I.row0 / ROWS) * 256 + wgc * 128 + m * 64 + wq * 16 + (lane >> 2);
            #pragma unroll
            for (int j = 0; j < 16; ++j) {
                int col = I.n * 128 + j * 8 + (lane & 3) * 2;
                float b0 = bias[col], b1 = bias[col + 1];
                *reinterpret_cast<u32*>(y + (size_t)p0 * COUT + col) = pack_bf16(acc[m][4 * j] + b0, acc[m][4 * j + 1] + b1);
                *reinterpret_cast<u32*>(y + (size_t)(p0 + 8) * COUT + col) = pack_bf16(acc[m][4 * j + 2] + b0, acc[m][4 * j + 3] + b1);
                acc[m][4 * j] = acc[m][4 * j + 1] = acc[m][4 * j + 2] = acc[m][4 * j + 3] = 0.f;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(384, 1)
norm_silu_conv3x3(const u16* __restrict__ x, const float* __restrict__ a, const float* __restrict__ dsh,
                  const u16* __restrict__ wtiles, const float* __restrict__ bias, u16* __restrict__ y) {
    extern __shared__ __align__(1024) unsigned char smem[];
    unsigned char* halo = smem + OFF_HALO;
    float* asd = reinterpret_cast<float*>(smem + OFF_ASD);
    const u32 smem0 = smem_addr(smem), bars = smem0 + OFF_BAR;
    const int tid = threadIdx.x;
    const int n_items = (N_ITEMS - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
    const int G = n_items * N_IT;
    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) { mb_init(bars + s * 8, 1); mb_init(bars + (STAGES + s) * 8, 256); }
        for (int i = 0; i < 2; ++i) { mb_init(bars + 2 * STAGES * 8 + i * 8, 128); mb_init(bars + 2 * STAGES * 8 + 16 + i * 8, 256); }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (G == 0) return;

    if (tid < 128) {   // producer
        asm volatile("setmaxnreg.dec.sync.aligned.u32 PRODUCER_REGS;");
        const int pt = tid;
        Pieces P;
        for (int g = -1; g < G; ++g) {
            // g = -1: the first item's first halo; then per iteration: its weights, a ninth of the next halo
            int k = 0, c = 0, t = 8, gc = -1;
            if (g >= 0) {
                k = g / N_IT; int it = g - k * N_IT; c = it / 9; t = it - c * 9; gc = k * N_CHUNK + c;
                if (pt == 0) {
                    const int s = g % STAGES;
                    mb_wait(bars + (STAGES + s) * 8, ((g / STAGES) & 1) ^ 1);
                    mb_expect_tx(bars + s * 8, W_STAGE);
                    Item I = item_at(k);
                    // with WS_ROTATE each CTA starts its taps at its own offset, so that the 132
                    // CTAs do not all read the same weight tile (the same L2 lines) at once
                    const int tap = WS_ROTATE ? (t + blockIdx.x) % 9 : t;
                    const u16* src = wtiles + ((size_t)(I.n * N_CHUNK + c) * 9 + tap) * (W_STAGE / 2);
                    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                                 :: "r"(smem0 + s * W_STAGE), "l"(src), "r"(W_STAGE), "r"(bars + s * 8) : "memory");
                }
            }
            // next halo: chunk gc + 1 (this item's next chunk or the next item's first)
            const int nk = (g < 0) ? 0 : (c + 1 < N_CHUNK ? k : k + 1), nc = (g < 0) ? 0 : (c + 1 < N_CHUNK ? c + 1 : 0);
            const int ngc = gc + 1;
            Item N = item_at(nk);
            HaloSrc S; S.ok = N.ok; S.xb = x + (size_t)N.b * H_ * W_ * CIN; S.row0 = N.row0; S.c = nc;
            S.as = asd + (nk & 1) * 2 * CIN;
            unsigned char* hn = halo + (ngc & 1) * HALO_BYTES;
            const u32 full_h = bars + 2 * STAGES * 8 + (ngc & 1) * 8, empty_h = bars + 2 * STAGES * 8 + 16 + (ngc & 1) * 8;
#if WS_RAW
            if (!N.ok || (g >= 0 && WS_NO_BUILD)) { if (g >= 0 && t == 8 && N.ok) mb_arrive(full_h); continue; }
            if (g < 0 || t == 0) raw_issue(S, smem0 + OFF_RAW, pt);   // the staging buffer's last ninth was converted at t == 8
            // the halo buffer frees when the consumers finish the chunk before this one; the
            // producer runs up to STAGES - 1 taps ahead, so from tap 4 on that has happened
            // (with WS_LATE): convert then, two ninths a tap, rather than wait at tap 0
            if (g < 0 || t == (WS_LATE ? 4 : 0)) {
                mb_wait(empty_h, ((ngc >> 1) & 1) ^ 1);
                if (nc == 0) {   // a new item: its scale and shift
                    float* dst = asd + (nk & 1) * 2 * CIN;
                    for (int i = pt; i < CIN; i += 128) { dst[i] = a[(size_t)N.b * CIN + i]; dst[CIN + i] = dsh[(size_t)N.b * CIN + i]; }
                    asm volatile("bar.sync 1, 128;" ::: "memory");
                }
            }
            if (g < 0) {
                for (int part = 0; part < 9; ++part) { raw_wait(part); raw_convert(S, smem + OFF_RAW, hn, part, pt); }
                mb_arrive(full_h);
                continue;
            }
            if (WS_LATE) {
                if (t >= 4) {
                    const int p0 = 2 * (t - 4), p1 = t == 8 ? 8 : p0 + 1;
                    raw_wait(p1);
                    raw_convert(S, smem + OFF_RAW, hn, p0, pt);
                    if (p1 != p0) raw_convert(S, smem + OFF_RAW, hn, p1, pt);
                    if (t == 8) mb_arrive(full_h);
                }
            } else if (t < 8) { raw_wait(t); raw_convert(S, smem + OFF_RAW, hn, t, pt); }
            else { raw_wait(8); raw_convert(S, smem + OFF_RAW, hn, 8, pt); mb_arrive(full_h); }
            continue;
#endif
            if (g < 0) {   // all nine ninths now
                mb_wait(empty_h, ((ngc >> 1) & 1) ^ 1);
                for (int i = pt; i < CIN; i += 128) { asd[i] = a[(size_t)N.b * CIN + i]; asd[CIN + i] = dsh[(size_t)N.b * CIN + i]; }
                asm volatile("bar.sync 1, 128;" ::: "memory");
                for (int part = 0; part < 9; ++part) {
                    halo_load(P, S, part, pt);
                    halo_store(P, hn, S, part, pt);
                }
                mb_arrive(full_h);
                continue;
            }
            if (!N.ok) continue;
            if (t == 0) {
                mb_wait(empty_h, ((ngc >> 1) & 1) ^ 1);
                if (nc == 0) {   // a new item: its scale and shift
                    float* dst = asd + (nk & 1) * 2 * CIN;
                    for (int i = pt; i < CIN; i += 128) { dst[i] = a[(size_t)N.b * CIN + i]; dst[CIN + i] = dsh[(size_t)N.b * CIN + i]; }
                    asm volatile("bar.sync 1, 128;" ::: "memory");
                }
            } else if (!WS_NO_BUILD) {
                halo_store(P, hn, S, t - 1, pt);
            }
            if (!WS_NO_BUILD) halo_load(P, S, t, pt);
            if (t == 8) { if (!WS_NO_BUILD) halo_store(P, hn, S, 8, pt); mb_arrive(full_h); }
        }
    } else {           // consumers
        asm volatile("setmaxnreg.inc.sync.aligned.u32 CONSUMER_REGS;");
        const int ctid = tid - 128, lane = ctid & 31, wgc = ctid >> 7, wq = (ctid >> 5) & 3;
        int lr[2], lc[2];
        #pragma unroll
        for (int m = 0; m < 2; ++m) {
            int p = wgc * 128 + m * 64 + wq * 16 + (lane & 15);
            lr[m] = p / W_; lc[m] = p - lr[m] * W_;
        }
        float acc[2][64];
        #pragma unroll
        for (int m = 0; m < 2; ++m)
            #pragma unroll
            for (int i = 0; i < 64; ++i) acc[m][i] = 0.f;
        u32 frag[2][2][4][4];
        for (int g = 0; g < G; g += 2) {
            consume<0>(g, smem0, halo, bars, lr, lc, lane, acc, frag, bias, y, wgc, wq);
            consume<1>(g + 1, smem0, halo, bars, lr, lc, lane, acc, frag, bias, y, wgc, wq);
        }
    }
}
"""


def ws_tiles(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) -> the warp-specialised kernel's weight tiles: for each (128 output
    channels, 64 input channels, tap), 128 rows of 64 bf16 whose 16-byte pieces are XOR-swizzled by
    row (the 128-byte mode the wgmma descriptor reads), contiguous, so one bulk copy moves a tile."""
    cout, cin = weight.shape[:2]
    w = weight.permute(0, 2, 3, 1).reshape(cout // 128, 128, 9, cin // 64, 8, 8)   # n, co, tap, c, piece, 8
    w = w.permute(0, 3, 2, 1, 4, 5)                                                  # n, c, tap, co, piece, 8
    co = torch.arange(128, device=weight.device)[:, None]
    dst = torch.arange(8, device=weight.device)[None, :] ^ (co % 8)                 # piece p goes to p ^ (co % 8)
    out = torch.empty_like(w)
    out[:, :, :, co, dst] = w[:, :, :, co, torch.arange(8, device=weight.device)[None, :]]
    return out.contiguous().to(torch.bfloat16)



def source(cin: int, cout: int, h: int, w: int, batch: int, stages: int = 6, lbo: int = 128, sbo: int = 1024,
           variant: str = "swizzle-tanh") -> str:
    rows = TILE_M // w
    assert TILE_M % w == 0 and h % rows == 0 and cin % CK == 0 and cout % TILE_N == 0, (cin, cout, h, w)
    defs = (f"#define CIN {cin}\n#define COUT {cout}\n#define H_ {h}\n#define W_ {w}\n#define ROWS {rows}\n"
            f"#define N_ITEMS {batch * h * w // TILE_M * (cout // TILE_N)}\n#define STAGES {stages}\n#define W_STAGE {W_STAGE}\n#define HALO_STRIDE {HALO_STRIDE}\n"
            f"#define LBO {lbo}\n#define SBO {sbo}\n")
    if variant.startswith("ws"):
        defs += "".join(f"#define {k} {v}\n" for k, v in {"WS_ROTATE": 0, "WS_NO_BUILD": 0, "WS_RAW": 0, "WS_LATE": 0, **VARIANTS[variant]}.items())
        return defs + WS_SOURCE.replace("WGMMA_ASM", _wgmma_asm()).replace(
            "PRODUCER_REGS", str(WS_REGS[0])).replace("CONSUMER_REGS", str(WS_REGS[1]))
    flags = {"SKIP_BUILD": 0, "SKIP_MMA": 0, "SWIZZLE": 0, "TANH_SILU": 0, **VARIANTS[variant]}
    defs += "".join(f"#define {k} {v}\n" for k, v in flags.items())
    return defs + SOURCE.replace("WGMMA_ASM", _wgmma_asm())


WS_REGS = (72, 216)  # producer, consumer registers per thread: 128 x 72 + 256 x 216 <= 64K (fewer spill)


def smem_bytes(h: int, w: int, stages: int, cin: int, raw: bool = False) -> int:
    rows = TILE_M // w
    halo_px = (rows + 2) * (w + 2)
    return stages * W_STAGE + 2 * halo_px * HALO_STRIDE + 2 * 2 * 4 * cin + 8 * (2 * stages + 4) + raw * halo_px * 128


SMEM_LIMIT = 227 * 1024  # per block, H100


class FusedConv:
    """``conv3x3(silu(x * a + d), weight) + bias`` for channels_last bf16 ``x`` of one shape."""

    def __init__(self, cin: int, cout: int, h: int, w: int, batch: int, stages: int = 6, lbo: int = 128, sbo: int = 1024,
                 variant: str = "swizzle-tanh"):
        from torch.cuda import _compile_kernel
        self.shape, self.batch, self.ws = (cin, cout, h, w), batch, variant.startswith("ws")
        self.items = batch * h * w // TILE_M * (cout // TILE_N)
        raw = bool(VARIANTS[variant].get("WS_RAW"))
        while smem_bytes(h, w, stages, cin, raw) > SMEM_LIMIT:   # fewer weight stages where the raw halo needs room
            stages -= 1
        self.stages, self.smem = stages, smem_bytes(h, w, stages, cin, raw)
        self.kernel = _compile_kernel(source(cin, cout, h, w, batch, stages, lbo, sbo, variant), "norm_silu_conv3x3",
                                      compute_capability="90a", nvcc_options=["-std=c++17"])
        if hasattr(self.kernel, "set_shared_memory_config"):
            self.kernel.set_shared_memory_config(self.smem)
        else:  # older torch: the driver call set_shared_memory_config makes
            from torch.cuda._utils import _get_gpu_runtime_library
            max_dynamic_smem = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            assert _get_gpu_runtime_library().cuFuncSetAttribute(self.kernel.func, max_dynamic_smem, self.smem) == 0

    def prepare(self, weight: torch.Tensor) -> torch.Tensor:
        """The conv weight (Cout, Cin, 3, 3) in the order this kernel reads."""
        return ws_tiles(weight) if self.ws else nhwc_weight(weight)

    def __call__(self, x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, weight_nhwc: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
        cin, cout, h, w = self.shape
        B = x.shape[0]
        assert B == self.batch and x.shape == (B, cin, h, w) and x.is_contiguous(memory_format=torch.channels_last)
        y = torch.empty((B, cout, h, w), device=x.device, dtype=torch.bfloat16, memory_format=torch.channels_last)
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        self.kernel(grid=(min(self.items, sms), 1, 1), block=(384 if self.ws else 256, 1, 1),
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
    ap.add_argument("--stages", type=int, default=6)
    ap.add_argument("--desc", default="128,1024", help="LBO,SBO of the weight descriptors")
    ap.add_argument("--variant", action="append", default=None, choices=sorted(VARIANTS))
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "bench"))
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from jdcl_bench.bench import device_info
    from jdcl_bench.jdcl import triton_norm

    shapes = [tuple(int(v) for v in s.split(",")) for s in (args.shape or ["128,128,32,32", "256,256,16,16", "384,128,32,32"])]
    lbo, sbo = (int(v) for v in args.desc.split(","))
    variants = args.variant or ["swizzle-tanh"]
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    F = torch.nn.functional
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
            # per-(sample, channel) a, d of silu(x * a + d): per-channel sums, then per group
            # (E[x^2] - E[x]^2: a timing stand-in, not the model's two-pass statistics)
            xf = x.float()
            m1 = xf.mean((2, 3)).view(B, 32, -1).mean(-1)
            m2 = (xf * xf).mean((2, 3)).view(B, 32, -1).mean(-1)
            rstd = torch.rsqrt(m2 - m1 * m1 + norm.eps).repeat_interleave(cin // 32, dim=1)
            mean = m1.repeat_interleave(cin // 32, dim=1)
            a = norm.weight * rstd * (1 + scale)
            d = (norm.bias - mean * rstd * norm.weight) * (1 + scale) + shift
            return a.contiguous(), d.contiguous()

        def torch_norm_act(x):
            a, d = fold(x)
            return F.silu(x.float() * a[:, :, None, None] + d[:, :, None, None]).to(x.dtype)

        fold_c, norm_act_c = torch.compile(fold), torch.compile(torch_norm_act)
        triton_ok = triton_norm._slice_channels(cin, 32, h * w) > 0

        @torch.no_grad()
        def separate():
            act = triton_norm.norm_act(norm, x, scale, shift) if triton_ok else norm_act_c(x)
            return F.conv2d(act, wb, bb, padding=1)

        with torch.no_grad():
            a, d = fold(x)
            ref = F.conv2d(F.silu(x.float() * a[:, :, None, None] + d[:, :, None, None]).to(torch.bfloat16),
                           wb, bb, padding=1).float()
            sep_err = ((separate().float() - ref).norm() / ref.norm()).item()
        flops = 2 * B * h * w * cout * cin * 9
        row = {"shape": [B, cin, cout, h, w], "separate": "triton_norm + cuDNN" if triton_ok else "compiled norm + cuDNN",
               "separate_ms": _time(separate), "separate_rel_err": sep_err}
        row["cudnn_conv_only_ms"] = _time(lambda: F.conv2d(x, wb, bb, padding=1))
        row["cudnn_conv_only_tflops"] = flops / row["cudnn_conv_only_ms"] / 1e9
        row["cudnn_conv_nobias_ms"] = _time(lambda: F.conv2d(x, wb, None, padding=1))
        row["stats_fold_ms"] = _time(lambda: fold_c(x))
        for variant in variants:
            t0 = time.perf_counter()
            try:
                fc = FusedConv(cin, cout, h, w, B, args.stages, lbo, sbo, variant)
            except Exception as e:  # noqa: BLE001 - report and go on to the next variant
                row[f"fused_{variant}"] = f"compile failed: {str(e)[:2000]}"
                print(row[f"fused_{variant}"], flush=True)
                continue
            wk = fc.prepare(conv.weight.detach())
            out = fc(x, a, d, wk, bk).float()
            torch.cuda.synchronize()
            ms = _time(lambda: fc(x, a, d, wk, bk))
            row[f"fused_{variant}"] = {"compile_s": time.perf_counter() - t0, "stages": fc.stages,
                                       "rel_err": ((out - ref).norm() / ref.norm()).item(),
                                       "ms": ms, "tflops": flops / ms / 1e9, "with_stats_ms": ms + row["stats_fold_ms"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    os.makedirs(args.out, exist_ok=True)
    info = device_info(dev)
    path = os.path.join(args.out, f"wgmma-conv-{info['gpu_name'].replace(' ', '_')}-{time.strftime('%Y%m%dT%H%M%S')}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({**info, "code_version": os.environ.get("JDCL_BENCH_COMMIT"), "settings": vars(args), "rows": rows}, f, indent=1)
    os.replace(path + ".tmp", path)
    print("wrote", path)


if __name__ == "__main__":
    main()
