/* The kernels of fused_cpu.c, written once against its storage type T (bf16 as uint16_t, or float), LOAD (T to
 * float), STORE (float to T) and NAME (the kernel's exported name): included once per storage type. Arithmetic is
 * fp32 whatever T is. */
/* y = x * rsqrt(mean(x^2) + eps) * gain per row of d; scale[row] keeps the rsqrt for backward. */
void NAME(rms_norm_forward)(const T *x, const float *gain, T *y, float *scale, int64_t rows, int64_t d, float eps) {
    #pragma omp parallel for schedule(static) if (rows * d >= PARALLEL_FROM)
    for (int64_t r = 0; r < rows; r++) {
        const T *xr = x + r * d;
        T *yr = y + r * d;
        float squares = 0.0f;
        #pragma omp simd reduction(+ : squares)
        for (int64_t i = 0; i < d; i++) {
            float v = LOAD(xr[i]);
            squares += v * v;
        }
        float s = 1.0f / __builtin_sqrtf(squares / (float)d + eps);
        scale[r] = s;
        #pragma omp simd
        for (int64_t i = 0; i < d; i++) yr[i] = STORE(LOAD(xr[i]) * s * gain[i]);
    }
}

/* grad_x = scale * (g - normed * mean(g * normed)), g = grad_y * gain, normed = x * scale. */
void NAME(rms_norm_backward)(const T *x, const float *scale, const float *gain, const T *grad_y, T *grad_x,
                             int64_t rows, int64_t d) {
    #pragma omp parallel for schedule(static) if (rows * d >= PARALLEL_FROM)
    for (int64_t r = 0; r < rows; r++) {
        const T *xr = x + r * d, *gr = grad_y + r * d;
        T *out = grad_x + r * d;
        float s = scale[r], dot = 0.0f;
        #pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < d; i++) dot += LOAD(gr[i]) * gain[i] * LOAD(xr[i]) * s;
        dot /= (float)d;
        #pragma omp simd
        for (int64_t i = 0; i < d; i++) {
            float normed = LOAD(xr[i]) * s;
            out[i] = STORE((LOAD(gr[i]) * gain[i] - normed * dot) * s);
        }
    }
}

/* out = gelu_tanh(gate) * up */
void NAME(gelu_mul_forward)(const T *gate, const T *up, T *out, int64_t n) {
    #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        float x = LOAD(gate[i]);
        float s = half_one_plus_tanh(GELU_K0 * (x + GELU_K1 * x * x * x));
        out[i] = STORE(x * s * LOAD(up[i]));
    }
}

/* grad_gate = grad * up * gelu_tanh'(gate), grad_up = grad * gelu_tanh(gate) */
void NAME(gelu_mul_backward)(const T *grad, const T *gate, const T *up, T *grad_gate,
                       T *grad_up, int64_t n) {
    #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_FROM)
    for (int64_t i = 0; i < n; i++) {
        float x = LOAD(gate[i]), g = LOAD(grad[i]);
        float s = half_one_plus_tanh(GELU_K0 * (x + GELU_K1 * x * x * x));
        float act = x * s; /* gelu_tanh(x) = x (1 + tanh(u)) / 2, and 1 - tanh(u)^2 = 4 s (1 - s) */
        float slope = s + 2.0f * x * s * (1.0f - s) * GELU_K0 * (1.0f + 3.0f * GELU_K1 * x * x);
        grad_up[i] = STORE(g * act);
        grad_gate[i] = STORE(g * LOAD(up[i]) * slope);
    }
}

/* One vocabulary chunk of the output head's online softmax (ecombot/speedups/head.py head_cross_entropy_rows).
 * logits: rows x cols T, row stride ld. Per row: the new running maximum m = max(top, max(logits)); probs =
 * exp(logits - m) in T, 0 below exp(-64) (for probs @ weight); total = total * exp(top - m) + sum(exp(logits - m)) in fp32 from the
 * unrounded values; rescale = exp(top - m) (for the running probs @ weight); top = m. */
void NAME(softmax_chunk)(const T *logits, int64_t ld, T *probs, float *top, float *total, float *rescale,
                   int64_t rows, int64_t cols) {
    #pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_FROM)
    for (int64_t r = 0; r < rows; r++) {
        const T *lr = logits + r * ld;
        T *pr = probs + r * cols;
        float m = top[r];
        #pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < cols; j++) {
            float v = LOAD(lr[j]);
            m = v > m ? v : m;
        }
        float sum = 0.0f;
        #pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < cols; j++) {
            float d = LOAD(lr[j]) - m;
            /* below exp(-64) nothing adds to total (>= 1 in fp32), and such probs would make probs @ weight's products
             * denormal (slow; see half_one_plus_tanh) */
            float e = d < -64.0f ? 0.0f : exp_small(d);
            pr[j] = STORE(e);
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
