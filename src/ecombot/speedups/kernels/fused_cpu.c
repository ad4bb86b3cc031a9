/* Fused CPU kernels for bf16 training steps: Gemma's RMSNorm and the MLP's GELU(gate) * up, forward and backward,
 * and one vocabulary chunk of the output head's online softmax.
 *
 * Eager PyTorch runs each elementwise op of these as its own pass over memory (a norm is ~9 ops forward, ~8
 * backward; the MLP's activation 2 forward, 3 backward; the softmax chunk 6); here each is one or two passes, with
 * fp32 arithmetic on bf16 storage, rounded to nearest even like PyTorch. Compiled on first use by ecombot/speedups/kernels/__init__.py
 * (OpenMP through the runtime PyTorch already loaded, so both share one thread pool).
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

/* (1 + tanh(u)) / 2 = 1 / (1 + exp(-2u)), without tanh's cancellation where GELU is tiny (u << 0). */
static inline float half_one_plus_tanh(float u) {
    float a = -2.0f * u;
    a = a > 87.0f ? 87.0f : (a < -87.0f ? -87.0f : a);
    return 1.0f / (1.0f + exp_small(a));
}

#define GELU_K0 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_K1 0.044715f
#define PARALLEL_FROM 65536 /* elements; smaller tensors stay on one thread */

/* y = x * rsqrt(mean(x^2) + eps) * gain per row of d; scale[row] keeps the rsqrt for backward. */
void rms_norm_forward(const uint16_t *x, const float *gain, uint16_t *y, float *scale, int64_t rows, int64_t d,
                      float eps) {
    #pragma omp parallel for schedule(static) if (rows * d >= PARALLEL_FROM)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * d;
        uint16_t *yr = y + r * d;
        float squares = 0.0f;
        #pragma omp simd reduction(+ : squares)
        for (int64_t i = 0; i < d; i++) {
            float v = bf16_to_float(xr[i]);
            squares += v * v;
        }
        float s = 1.0f / __builtin_sqrtf(squares / (float)d + eps);
        scale[r] = s;
        #pragma omp simd
        for (int64_t i = 0; i < d; i++) yr[i] = float_to_bf16(bf16_to_float(xr[i]) * s * gain[i]);
    }
}

/* grad_x = scale * (g - normed * mean(g * normed)), g = grad_y * gain, normed = x * scale. */
void rms_norm_backward(const uint16_t *x, const float *scale, const float *gain, const uint16_t *grad_y,
                       uint16_t *grad_x, int64_t rows, int64_t d) {
    #pragma omp parallel for schedule(static) if (rows * d >= PARALLEL_FROM)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * d, *gr = grad_y + r * d;
        uint16_t *out = grad_x + r * d;
        float s = scale[r], dot = 0.0f;
        #pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < d; i++) dot += bf16_to_float(gr[i]) * gain[i] * bf16_to_float(xr[i]) * s;
        dot /= (float)d;
        #pragma omp simd
        for (int64_t i = 0; i < d; i++) {
            float normed = bf16_to_float(xr[i]) * s;
            out[i] = float_to_bf16((bf16_to_float(gr[i]) * gain[i] - normed * dot) * s);
        }
    }
}

/* out = gelu_tanh(gate) * up */
void gelu_mul_forward(const uint16_t *gate, const uint16_t *up, uint16_t *out, int64_t n) {
    #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        float x = bf16_to_float(gate[i]);
        float s = half_one_plus_tanh(GELU_K0 * (x + GELU_K1 * x * x * x));
        out[i] = float_to_bf16(x * s * bf16_to_float(up[i]));
    }
}

/* grad_gate = grad * up * gelu_tanh'(gate), grad_up = grad * gelu_tanh(gate) */
void gelu_mul_backward(const uint16_t *grad, const uint16_t *gate, const uint16_t *up, uint16_t *grad_gate,
                       uint16_t *grad_up, int64_t n) {
    #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        float x = bf16_to_float(gate[i]), g = bf16_to_float(grad[i]);
        float s = half_one_plus_tanh(GELU_K0 * (x + GELU_K1 * x * x * x));
        float act = x * s; /* gelu_tanh(x) = x (1 + tanh(u)) / 2, and 1 - tanh(u)^2 = 4 s (1 - s) */
        float slope = s + 2.0f * x * s * (1.0f - s) * GELU_K0 * (1.0f + 3.0f * GELU_K1 * x * x);
        grad_up[i] = float_to_bf16(g * act);
        grad_gate[i] = float_to_bf16(g * bf16_to_float(up[i]) * slope);
    }
}

/* One vocabulary chunk of the output head's online softmax (ecombot/speedups/head.py head_cross_entropy_rows).
 * logits: rows x cols bf16, row stride ld. Per row: the new running maximum m = max(top, max(logits)); probs =
 * exp(logits - m) in bf16 (for probs @ weight); total = total * exp(top - m) + sum(exp(logits - m)) in fp32 from the
 * unrounded values; rescale = exp(top - m) (for the running probs @ weight); top = m. */
void softmax_chunk(const uint16_t *logits, int64_t ld, uint16_t *probs, float *top, float *total, float *rescale,
                   int64_t rows, int64_t cols) {
    #pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_FROM)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *lr = logits + r * ld;
        uint16_t *pr = probs + r * cols;
        float m = top[r];
        #pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < cols; j++) {
            float v = bf16_to_float(lr[j]);
            m = v > m ? v : m;
        }
        float sum = 0.0f;
        #pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < cols; j++) {
            float d = bf16_to_float(lr[j]) - m;
            float e = exp_small(d < -87.0f ? -87.0f : d);
            pr[j] = float_to_bf16(e);
            sum += e;
        }
        float old = top[r] - m;
        float scale = exp_small(old < -87.0f ? -87.0f : old);
        if (old < -87.0f) scale = 0.0f; /* first chunk: top was -inf */
        rescale[r] = scale;
        total[r] = total[r] * scale + sum;
        top[r] = m;
    }
}
