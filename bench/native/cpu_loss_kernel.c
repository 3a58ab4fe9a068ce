/*
 * The CPU loss kernel's copies timed directly, one thread, no JVM: for each divergence (KL, reverse
 * KL, JSD beta 0.5, MSE) at T = 4 (or the third argument), alpha = 0.9, labels, gradient apart, rows x C of fp32 logits,
 * each copy compiled into this program (bench/run-cpu-kernel.sh links them: "new" from the working
 * tree, "old" from a git revision when one is given) is run 15 times a round over 5 rounds that
 * alternate the copies; prints the median of the rounds' best times in ns an element, and whether
 * the copies' losses agree (to 1e-6 relative: FMA contraction may move last bits).
 *   bench/run-cpu-kernel.sh [REV] [ROWS COLS [T]]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu_kernel_copies.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const int64_t rows = argc > 2 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 1000;
    const float T = argc > 3 ? (float)atof(argv[3]) : 4.f;
    const size_t n = (size_t)(rows * cols);
    float *s = malloc(n * 4), *t = malloc(n * 4), *g = malloc(n * 4);
    int64_t *y = malloc(rows * 8);
    int8_t *flags = malloc(rows);
    srand(1);
    for (size_t i = 0; i < n; i++) {
        s[i] = (rand() / (float)RAND_MAX - 0.5f) * 10;
        t[i] = (rand() / (float)RAND_MAX - 0.5f) * 10;
    }
    for (int64_t r = 0; r < rows; r++) y[r] = rand() % cols;
    struct { const char *name; kd_fn f; } copies[] = {
        {"new avx512", kd_new_avx512}, {"new avx2", kd_new_avx2}, {"new sse2", kd_new_sse2},
#ifdef WITH_OLD
        {"old avx512", kd_old_avx512}, {"old avx2", kd_old_avx2}, {"old sse2", kd_old_sse2},
#endif
    };
    const int ncopies = sizeof copies / sizeof copies[0];
    const char *divs[] = {"kl", "reverse-kl", "jsd", "mse"};
    printf("%lld x %lld fp32, T = %g, alpha = 0.9, beta = 0.5, labels, gradient apart; one thread; ns an element (median of 5 rounds' best of 15)\n",
           (long long)rows, (long long)cols, T);
    for (int d = 0; d < 4; d++) {
        double best[8][5], loss[8];
        for (int round = 0; round < 5; round++) {
            for (int c = 0; c < ncopies; c++) {
                double b = 1e30, out[2];
                for (int rep = 0; rep < 15; rep++) {
                    const double t0 = now();
                    copies[c].f(s, t, 0, y, 0, rows, cols, d, T, 0.9f, 0.5f, -100, 1.f / rows, g, flags, out);
                    const double dt = now() - t0;
                    if (dt < b) b = dt;
                }
                best[c][round] = b * 1e9 / n;
                loss[c] = out[0] + out[1];
            }
        }
        printf("%-10s", divs[d]);
        for (int c = 0; c < ncopies; c++) {
            qsort(best[c], 5, sizeof(double), cmp);
            printf("  %s %.2f", copies[c].name, best[c][2]);
        }
        int agree = 1;
        for (int c = 1; c < ncopies; c++) agree &= fabs(loss[c] - loss[0]) <= 1e-6 * fabs(loss[0]);
        printf("  (losses %s)\n", agree ? "agree" : "DIFFER");
    }
    return 0;
}
