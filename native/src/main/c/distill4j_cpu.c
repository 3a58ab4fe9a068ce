/* Distill4J's CPU kernels (distill4j_cpu.h): the entry points. d4j_cpu_kd_rows runs the copy of
 * the kernel (distill4j_cpu_kernel.c, compiled once per instruction set) that this CPU supports
 * best, chosen at the first call (or the one d4j_cpu_use_isa asked for); d4j_cpu_isa names it.
 * One library runs on any x86-64. */
#include "distill4j_cpu.h"

#include <string.h>

/* The kernel's signature (d4j_cpu_kd_rows'), and its three copies (distill4j_cpu_kernel.c). */
typedef int KdRowsFn(const void *, const void *, int, const int64_t *, int64_t, int64_t, int64_t, int, float, float, float, int64_t, float,
                     void *, int8_t *, double *);
typedef KdRowsFn *KdRows;
KdRowsFn d4j_cpu_kd_rows_avx512, d4j_cpu_kd_rows_avx2, d4j_cpu_kd_rows_sse2;

/* The copy in use (NULL until the first call or d4j_cpu_use_isa), and its name. Threads may race
 * to set them at the first call; they store the same values. */
static KdRows kd;
static const char *kd_isa;

const char *d4j_cpu_best_isa(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "avx512";
    if (__builtin_cpu_supports("x86-64-v3")) return "avx2";
    return "sse2";
}

int d4j_cpu_use_isa(const char *isa) {
    const char *best = d4j_cpu_best_isa();
    const char *order[] = {"sse2", "avx2", "avx512"};
    int want = -1, have = -1;
    if (isa == NULL || isa[0] == 0) isa = best;
    for (int i = 0; i < 3; i++) {
        if (strcmp(isa, order[i]) == 0) want = i;
        if (strcmp(best, order[i]) == 0) have = i;
    }
    if (want < 0 || want > have) return D4J_CPU_BAD_ARGUMENT;
    KdRows f = want == 2 ? d4j_cpu_kd_rows_avx512 : want == 1 ? d4j_cpu_kd_rows_avx2 : d4j_cpu_kd_rows_sse2;
    __atomic_store_n(&kd_isa, order[want], __ATOMIC_RELAXED);
    __atomic_store_n(&kd, f, __ATOMIC_RELEASE);
    return D4J_CPU_OK;
}

const char *d4j_cpu_isa(void) {
    if (!__atomic_load_n(&kd, __ATOMIC_ACQUIRE)) d4j_cpu_use_isa(NULL);
    return __atomic_load_n(&kd_isa, __ATOMIC_RELAXED);
}

int d4j_cpu_kd_rows(const void *s, const void *t, int dtype, const int64_t *labels, int64_t row0, int64_t row1, int64_t cols,
                    int divergence, float temperature, float alpha, float beta, int64_t ignore_index, float scale, void *grad,
                    int8_t *flags, double *out) {
    KdRows f = __atomic_load_n(&kd, __ATOMIC_ACQUIRE);
    if (!f) {
        d4j_cpu_use_isa(NULL);
        f = __atomic_load_n(&kd, __ATOMIC_ACQUIRE);
    }
    return f(s, t, dtype, labels, row0, row1, cols, divergence, temperature, alpha, beta, ignore_index, scale, grad, flags, out);
}

int64_t d4j_cpu_find_neg_inf(const void *x, int dtype, int64_t n) {
    /* -inf is 0xff800000 (fp32) or 0xff80 (bf16): compared as bits, a block at a time without an
     * early exit (so the compiler vectorises it), then the block that has one is searched */
    const int64_t block = 4096;
    for (int64_t b = 0; b < n; b += block) {
        const int64_t e = b + block < n ? b + block : n;
        int hit = 0;
        if (dtype == D4J_CPU_BF16) {
            const uint16_t *h = (const uint16_t *)x;
            for (int64_t i = b; i < e; i++) hit |= h[i] == 0xff80u;
            if (hit) for (int64_t i = b; i < e; i++) if (h[i] == 0xff80u) return i;
        } else {
            const uint32_t *w = (const uint32_t *)x;
            for (int64_t i = b; i < e; i++) hit |= w[i] == 0xff800000u;
            if (hit) for (int64_t i = b; i < e; i++) if (w[i] == 0xff800000u) return i;
        }
    }
    return -1;
}

void d4j_cpu_relu_forward(const float *x, float *y, int64_t from, int64_t to) {
    for (int64_t i = from; i < to; i++) {
        const float v = x[i];
        y[i] = v > 0.0f ? v : 0.0f; /* a compare and an and: vectorised at -O3 (no trapping math) */
    }
}

void d4j_cpu_relu_backward(const float *x, const float *dy, float *dx, int64_t from, int64_t to) {
    for (int64_t i = from; i < to; i++) {
        const float g = dy[i]; /* loaded unconditionally, so the select vectorises (a conditional load would branch) */
        dx[i] = x[i] > 0.0f ? g : 0.0f;
    }
}
