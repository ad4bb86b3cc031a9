/* Fused CPU kernels for training steps: Gemma's RMSNorm and the MLP's GELU(gate) * up, forward and backward, and one
 * vocabulary chunk of the output head's online softmax, on bf16 storage (the names below) and on fp32 storage (the
 * same names with _f32: CPUs without native bf16 train in fp32).
 *
 * Eager PyTorch runs each elementwise op of these as its own pass over memory (a norm is ~9 ops forward, ~8
 * backward; the MLP's activation 2 forward, 3 backward; the softmax chunk 6); here each is one or two passes, with
 * fp32 arithmetic, stored to bf16 rounded to nearest even like PyTorch. Compiled on first use by
 * ecombot/speedups/kernels/__init__.py (OpenMP through the runtime PyTorch already loaded, so both share one thread
 * pool).
 */
#include <stdint.h>
#include <string.h>

static inline float bf16_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* exp(x) for -87 <= x <= 87: 2^n * p(r), a degree-6 Taylor polynomial on |r| <= ln(2)/2 (relative error < 3e-7). */
static inline float exp_small(float x) {
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.008333334f
              + r * 0.0013888889f)))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* (1 + tanh(u)) / 2 = 1 / (1 + exp(-2u)), without tanh's cancellation where GELU is small (u << 0), and 0 where it
 * is below 2^-26, as fp32's 1 + tanh(u) is there (PyTorch's GELU gives exact zeros): the values near 1e-37 that the
 * formula would leave make the next matrix product's products denormal, ~100x slower on x86 (a 2624 x 2048 @ 2048 x
 * 640 fp32 product: 25 ms, 2.5 s with half its inputs 1e-37; a grounded fp32 epoch 145 -> 209 s). */
static inline float half_one_plus_tanh(float u) {
    float a = -2.0f * u;
    a = a > 87.0f ? 87.0f : (a < -87.0f ? -87.0f : a);
    float s = 1.0f / (1.0f + exp_small(a));
    return s < 0x1p-26f ? 0.0f : s;
}

#define GELU_K0 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_K1 0.044715f
#define PARALLEL_FROM 65536 /* elements; smaller tensors stay on one thread */

/* The kernels, once per storage type (fused_cpu_kernels.h). */
#define T uint16_t
#define LOAD(v) bf16_to_float(v)
#define STORE(v) float_to_bf16(v)
#define NAME(kernel) kernel
#include "fused_cpu_kernels.h"
#undef T
#undef LOAD
#undef STORE
#undef NAME

#define T float
#define LOAD(v) (v)
#define STORE(v) (v)
#define NAME(kernel) kernel##_f32
#include "fused_cpu_kernels.h"

/* Int8 input gradients of a frozen weight (ecombot/speedups/int8.py), fp32 storage only: the rows of x (times
 * col_scale per column where given: the weight's per-output-channel scales, folded into the gradient) scaled to
 * integers in [-levels, levels] (levels <= 127), one scale per row, rounded to nearest; row_scale[r] =
 * max |x[r] * col_scale| / levels (0 for a zero row; NaN for a row holding a NaN or an infinity, whose q is then 0:
 * the product's row becomes NaN, as fp32's would, instead of the value vanishing in the cast to int8). */
void quantize_rows_i8(const float *x, const float *col_scale, int8_t *q, float *row_scale, int64_t rows,
                      int64_t cols, float levels) {
    #pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_FROM)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        int8_t *qr = q + r * cols;
        float top = 0.0f;
        int finite = 1;
        #pragma omp simd reduction(max : top) reduction(& : finite)
        for (int64_t j = 0; j < cols; j++) {
            float v = __builtin_fabsf(col_scale ? xr[j] * col_scale[j] : xr[j]);
            finite &= v <= 3.4028234663852886e38f; /* false for NaN and infinity */
            top = v > top ? v : top;
        }
        if (!finite) {
            row_scale[r] = __builtin_nanf("");
            memset(qr, 0, (size_t)cols);
            continue;
        }
        float inverse = top > 0.0f ? levels / top : 0.0f;
        row_scale[r] = top / levels;
        if (col_scale) {
            #pragma omp simd
            for (int64_t j = 0; j < cols; j++) qr[j] = (int8_t)__builtin_rintf(xr[j] * col_scale[j] * inverse);
        } else {
            #pragma omp simd
            for (int64_t j = 0; j < cols; j++) qr[j] = (int8_t)__builtin_rintf(xr[j] * inverse);
        }
    }
}

/* out[r][j] = acc[r][j] * row_scale[r]: an int8 product's int32 sums back to fp32. out may be acc's own memory (each
 * element is read before it is written). */
void dequantize_rows_i32(const int32_t *acc, const float *row_scale, float *out, int64_t rows, int64_t cols) {
    #pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_FROM)
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *ar = acc + r * cols;
        float *outr = out + r * cols, s = row_scale[r];
        #pragma omp simd
        for (int64_t j = 0; j < cols; j++) outr[j] = (float)ar[j] * s;
    }
}
