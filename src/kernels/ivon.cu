// The fused IVON step for CUDA: the same floating-point operations, in the same order,
// as the CPU kernel (src/kernels/cpu.rs) and its generator (src/noise/philox.rs).
//
// Compiled at run time by NVRTC with --fmad=false (no fused multiply-adds), IEEE division
// and square root, and no flush to zero: every operation is then correctly rounded as in
// Rust, so the two kernels give the same bits. The element functions are plain C, so
// that tests/cuda_source.rs compiles them on the host and compares them with the CPU
// kernel on machines without a GPU.

#ifdef __CUDACC__
#define VL_FN __device__ __forceinline__
typedef unsigned int vl_u32;
typedef unsigned long long vl_u64;
static VL_FN vl_u32 vl_mulhi(vl_u32 a, vl_u32 b) { return __umulhi(a, b); }
static VL_FN vl_u32 vl_bits(float x) { return __float_as_uint(x); }
static VL_FN float vl_float(vl_u32 b) { return __uint_as_float(b); }
static VL_FN float vl_sqrt(float x) { return __fsqrt_rn(x); }
static VL_FN int vl_isfinite(float x) { return isfinite(x); }
#else
#include <math.h>
#include <stdint.h>
#include <string.h>
#define VL_FN static inline
typedef uint32_t vl_u32;
typedef uint64_t vl_u64;
VL_FN vl_u32 vl_mulhi(vl_u32 a, vl_u32 b) { return (vl_u32)(((vl_u64)a * b) >> 32); }
VL_FN vl_u32 vl_bits(float x) { vl_u32 b; memcpy(&b, &x, 4); return b; }
VL_FN float vl_float(vl_u32 b) { float x; memcpy(&x, &b, 4); return x; }
VL_FN float vl_sqrt(float x) { return sqrtf(x); }
VL_FN int vl_isfinite(float x) { return isfinite(x); }
#endif

// Philox4x32-10: word `lane` (0..4) of counter block `block` under key `seed`.
VL_FN void vl_philox(vl_u64 block, vl_u64 seed, vl_u32 out[4]) {
    vl_u32 c0 = (vl_u32)block, c1 = (vl_u32)(block >> 32), c2 = 0, c3 = 0;
    vl_u32 k0 = (vl_u32)seed, k1 = (vl_u32)(seed >> 32);
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        vl_u32 hi0 = vl_mulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        vl_u32 hi1 = vl_mulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        vl_u32 n0 = hi1 ^ c1 ^ k0;
        vl_u32 n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

// A uniform draw in (0, 1) from the top 23 bits.
VL_FN float vl_uniform(vl_u32 word) {
    return ((float)(word >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// ln x for a positive normal x: 2 atanh((m - 1) / (m + 1)) by its series, plus e ln 2.
VL_FN float vl_ln(float x) {
    vl_u32 bits = vl_bits(x);
    int e = (int)((bits >> 23) & 0xffu) - 127;
    float m = vl_float((bits & 0x007fffffu) | 0x3f800000u);
    int big = m > 1.41421356237309504880f;
    m = big ? m * 0.5f : m;
    float ef = (float)(e + big);
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float series =
        1.0f + s2 * (1.0f / 3.0f + s2 * (0.2f + s2 * (1.0f / 7.0f + s2 * (1.0f / 9.0f))));
    float ln_m = 2.0f * s * series;
    return ef * 0.69314575f + (ef * 1.4286068e-6f + ln_m);
}

// sin (want_sin) or cos of 2 pi u: the quarter turn split off, Taylor polynomials within
// [-pi/4, pi/4].
VL_FN float vl_sincos_turns(float u, int want_sin) {
    float a = 4.0f * u;
    int q = (int)a;
    float f = a - (float)q;
    int up = f >= 0.5f;
    f = up ? f - 1.0f : f;
    q += up;
    float x = f * 1.57079632679489661923f;
    float x2 = x * x;
    float s = x * (1.0f - x2 * (1.0f / 6.0f -
                                x2 * (1.0f / 120.0f -
                                      x2 * (1.0f / 5040.0f - x2 * (1.0f / 362880.0f)))));
    float c = 1.0f - x2 * (0.5f - x2 * (1.0f / 24.0f -
                                        x2 * (1.0f / 720.0f -
                                              x2 * (1.0f / 40320.0f - x2 * (1.0f / 3628800.0f)))));
    float sa = (q & 1) ? c : s;
    float cb = (q & 1) ? s : c;
    float sin_sign = (q & 2) ? -1.0f : 1.0f;
    float cos_sign = ((q + 1) & 2) ? -1.0f : 1.0f;
    return want_sin ? sa * sin_sign : cb * cos_sign;
}

// The four standard-normal draws of one Philox block: lanes 0, 1 are r cos, r sin of
// words 0, 1; lanes 2, 3 of words 2, 3.
VL_FN void vl_normals(const vl_u32 w[4], float z[4]) {
    for (int pair = 0; pair < 2; ++pair) {
        float r = vl_sqrt(-2.0f * vl_ln(vl_uniform(w[2 * pair])));
        float u = vl_uniform(w[2 * pair + 1]);
        z[2 * pair] = r * vl_sincos_turns(u, 0);
        z[2 * pair + 1] = r * vl_sincos_turns(u, 1);
    }
}

// Draw `idx` of the request that starts at counter block `block`: lane idx % 4 of block
// block + idx / 4.
VL_FN float vl_normal(vl_u64 seed, vl_u64 block, vl_u64 idx) {
    vl_u32 w[4];
    float z[4];
    vl_philox(block + idx / 4, seed, w);
    vl_normals(w, z);
    return z[idx % 4];
}

// The step's scalars (VlCoeffs, rounded to f32 on the host as the tensor-op path rounds
// them) and the state's row order (VL_MEAN ... VL_ROWS) come from the header that
// src/kernels/contract.rs generates and puts before this source.

// This rank's Hessian statistic of one sample: noise times gradient (price) or the
// squared gradient (gradsq).
VL_FN float vl_hess_sample(float n, float g, const VlCoeffs* c) {
    return c->price ? n * g : g * g;
}

// One element: `x * k + 0.0f` is candle's scalar multiply (affine(k, 0)), kept so that
// even the sign of a zero agrees.
VL_FN void vl_element(float* theta, float g, float hess_sample, float* m, float* h, float* mom,
                      float* n, float z, const VlCoeffs* c) {
    float new_mom = (*mom * c->beta1 + 0.0f) + (g * c->one_minus_beta1 + 0.0f);
    float h_wd = *h + c->weight_decay;
    float f = c->price ? (hess_sample * h_wd) * c->ess + 0.0f : hess_sample * c->ess + 0.0f;
    float d = *h - f;
    float correction = ((d * d) * c->correction + 0.0f) / h_wd;
    float new_h = ((*h * c->beta2 + 0.0f) + (f * c->one_minus_beta2 + 0.0f)) + correction;
    float g_bc = c->has_debias ? new_mom / c->debias : new_mom;
    float step = (g_bc + (*m * c->weight_decay + 0.0f)) / (new_h + c->weight_decay);
    if (vl_isfinite(c->clip_radius)) {
        step = step < -c->clip_radius ? -c->clip_radius : step;
        step = step > c->clip_radius ? c->clip_radius : step;
    }
    float new_m = *m - (step * c->lr + 0.0f);
    float new_n = z / vl_sqrt((new_h + c->weight_decay) * c->ess + 0.0f);
    *mom = new_mom;
    *h = new_h;
    *m = new_m;
    *n = new_n;
    *theta = new_m + new_n;
}

#ifdef __CUDACC__
// One thread per Philox block, grid-stride: the block's four draws go to the (up to) four
// elements that take them, so one Philox and two logarithms serve four elements. `state`
// holds VL_ROWS rows of `n` elements each (mean, h, momentum, noise, at the VL_ row
// numbers); element i takes draw
// `offset + i` of the request at `block`. `grad` holds n gradients, or with `c.averaged`
// the ranks' n mean gradients followed by their n mean Hessian statistics.
extern "C" __global__ void ivon_step(float* theta, const float* grad, float* state, vl_u64 n,
                                     vl_u64 seed, vl_u64 block, vl_u64 offset, VlCoeffs c) {
    vl_u64 first = offset / 4, last = (offset + n - 1) / 4;
    for (vl_u64 j = first + (vl_u64)blockIdx.x * blockDim.x + threadIdx.x; j <= last;
         j += (vl_u64)blockDim.x * gridDim.x) {
        vl_u32 w[4];
        float z[4];
        vl_philox(block + j, seed, w);
        vl_normals(w, z);
        for (int lane = 0; lane < 4; ++lane) {
            vl_u64 draw = 4 * j + lane;
            if (draw < offset || draw - offset >= n) continue;
            vl_u64 i = draw - offset;
            float g = grad[i];
            float hs = c.averaged ? grad[n + i] : vl_hess_sample(state[VL_NOISE * n + i], g, &c);
            vl_element(&theta[i], g, hs, &state[VL_MEAN * n + i], &state[VL_HESS * n + i],
                       &state[VL_MOMENTUM * n + i], &state[VL_NOISE * n + i], z[lane], &c);
        }
    }
}

// Sets *bad to 1 if any of the n values is NaN or Inf (exponent bits all set).
extern "C" __global__ void ivon_nonfinite(const float* x, vl_u64 n, unsigned int* bad) {
    int any = 0;
    for (vl_u64 i = (vl_u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (vl_u64)blockDim.x * gridDim.x) {
        any |= (__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u;
    }
    if (__syncthreads_or(any) && threadIdx.x == 0) atomicOr(bad, 1u);
}
#endif
