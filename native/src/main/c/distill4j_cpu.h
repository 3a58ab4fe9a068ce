/* Distill4J's CPU kernels (libdistill4j_cpu.so), called from Java through the FFM API
 * (org.distill4j.bindings.cpu.distill4j_cpu_h, generated from bindings/gen/distill4j_cpu_h.spec).
 *
 * The fused distillation loss's float fast path (docs/distillation-loss.md, "CPU"):
 * the same shifted log-space math as the CUDA kernel, fp32 arithmetic with a polynomial exp of about
 * 1 ulp, vectors of one register (AVX-512, AVX2 or SSE2: one copy each, the best the CPU supports
 * picked at the first call), row sums in float lanes then double. The double-precision Java oracle (CpuDistillationLoss) checks it.
 */
#ifndef DISTILL4J_CPU_H
#define DISTILL4J_CPU_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Logit element types (the Java DType order is not assumed). */
#define D4J_CPU_F32 0
#define D4J_CPU_BF16 1

/* Divergences (the Divergence enum's ordinals). Reverse KL and JSD form log p - log q, the
 * gradient's log-term and its row sum in double, as the CUDA kernel does. JSD needs 0 < beta < 1
 * (at 0 and 1 it is KL and reverse KL: the caller maps them). */
#define D4J_CPU_KL 0
#define D4J_CPU_REVERSE_KL 1
#define D4J_CPU_JSD 2
#define D4J_CPU_MSE 3

/* Return codes. */
#define D4J_CPU_OK 0
#define D4J_CPU_BAD_ARGUMENT 1
#define D4J_CPU_OUT_OF_MEMORY 2

/* Rows [row0, row1) of student logits s and teacher logits t, both [rows, cols] of one element type
 * (dtype), row-major and contiguous. labels: int64 [rows] or NULL. For every row that counts:
 *   soft += D(q || p) (unweighted: the caller multiplies by alpha T^2), hard += -log softmax(s)[y]
 *   (only when labels != NULL and alpha < 1), and if grad != NULL, grad[r, :] = dL/ds[r, :] * scale
 *   (grad has the logits' element type and may be s itself: each element is read before it is written).
 * Rows whose label is ignore_index get a zero gradient and add nothing. Labels are not range-checked
 * here (the caller has). A row with a NaN or +inf logit, a -inf student logit, or no finite teacher
 * logit is not computed: flags[r - row0] = 1 and its gradient is left untouched, for the caller to
 * compute (the oracle propagates such values as PyTorch does); other rows get flags 0.
 * out[0] = the sum of soft, out[1] = the sum of hard over the rows computed, each summed in row order.
 * Deterministic: the same inputs give the same bits on the same CPU (features pick the vector width). */
int d4j_cpu_kd_rows(const void *s, const void *t, int dtype, const int64_t *labels, int64_t row0, int64_t row1, int64_t cols,
                    int divergence, float temperature, float alpha, float beta, int64_t ignore_index, float scale, void *grad,
                    int8_t *flags, double *out);

/* The copy of d4j_cpu_kd_rows in use: "avx512" (16-lane vectors), "avx2" (8) or "sse2" (4), a
 * static string; the best this CPU supports unless d4j_cpu_use_isa chose another. */
const char *d4j_cpu_isa(void);

/* The best copy this CPU runs: "avx512", "avx2" or "sse2" (a static string). */
const char *d4j_cpu_best_isa(void);

/* Makes d4j_cpu_kd_rows use the named copy ("avx512", "avx2", "sse2"; NULL or "": the best this CPU
 * supports), for the whole process (tests of each copy, benchmarks). D4J_CPU_BAD_ARGUMENT for an
 * unknown name or one this CPU cannot run. */
int d4j_cpu_use_isa(const char *isa);

/* The index of the first -inf among n logits of the element type dtype, or -1 (reverse KL and MSE
 * refuse a top-k teacher's -inf: the caller checks before any gradient is written). Vectorised,
 * one pass over memory. */
int64_t d4j_cpu_find_neg_inf(const void *x, int dtype, int64_t n);

/* ReLU over float32 elements [from, to): y[i] = x[i] > 0 ? x[i] : +0 (NaN and -0 give +0: the
 * CPU backend's Java loop, bit for bit). y may be x. Vectorised (a compare and a mask, no branch). */
void d4j_cpu_relu_forward(const float *x, float *y, int64_t from, int64_t to);

/* ReLU's backward over float32 elements [from, to): dx[i] = x[i] > 0 ? dy[i] : +0, bit for bit
 * the CPU backend's Java loop. dx may be dy. Vectorised (a compare and a mask, no branch). */
void d4j_cpu_relu_backward(const float *x, const float *dy, float *dx, int64_t from, int64_t to);

#ifdef __cplusplus
}
#endif
#endif
