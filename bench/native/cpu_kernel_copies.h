/* The CPU loss kernel's copies as bench/run-cpu-kernel.sh links them into the C harnesses
 * (cpu_loss_kernel.c, cpu_kernel_bits.c): native/cpu-kernel-copies.sh compiles each copy under the
 * name kd_new_<isa> (the working tree) or kd_old_<isa> (a git revision), all with
 * d4j_cpu_kd_rows's signature (native/src/main/c/distill4j_cpu.h). */
#include <stdint.h>

#define KD_ARGS const void *s, const void *t, int dtype, const int64_t *labels, int64_t row0, int64_t row1, int64_t cols, int divergence, \
    float temperature, float alpha, float beta, int64_t ignore_index, float scale, void *grad, int8_t *flags, double *out
typedef int (*kd_fn)(KD_ARGS);
int kd_new_avx512(KD_ARGS); int kd_new_avx2(KD_ARGS); int kd_new_sse2(KD_ARGS);
int kd_old_avx512(KD_ARGS); int kd_old_avx2(KD_ARGS); int kd_old_sse2(KD_ARGS);  /* linked only with a revision */
