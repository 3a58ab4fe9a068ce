/*
 * The CPU loss kernel's copies against an earlier revision's, bit for bit (bench/run-cpu-kernel.sh --bits REV): the
 * loss sums, the row flags and every gradient bit, for each copy (AVX-512, AVX2, SSE2), divergence (KL, reverse KL,
 * JSD beta 0.3, MSE), T in {0.1 (logits of +-1e4), 1, 4, 3}, fp32 and bf16, the gradient apart and in place, with
 * labels (one row ignored) and without, over row widths from 1 to 4097 (every tail length of every copy); KL and JSD
 * teachers have -inf in every third logit (top-k). For a change meant to keep the numbers (a faster load, a
 * reordered loop): exits 1 and names the first cases that differ.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu_kernel_copies.h"
int main(void) {
  kd_fn nw[3] = {kd_new_avx512, kd_new_avx2, kd_new_sse2}, od[3] = {kd_old_avx512, kd_old_avx2, kd_old_sse2};
  int colsList[] = {1,2,3,4,5,7,8,9,15,16,17,23,31,32,33,47,63,64,65,100,1000,1001,1023,4097};
  float Ts[] = {0.1f, 1.f, 4.f, 3.f};
  long cases = 0, bad = 0; srand(7);
  for (int ci = 0; ci < (int)(sizeof colsList / sizeof *colsList); ci++) for (int dtype = 0; dtype < 2; dtype++)
  for (int div = 0; div < 4; div++) for (int ti = 0; ti < 4; ti++) for (int inplace = 0; inplace < 2; inplace++) for (int labels = 0; labels < 2; labels++) {
    int64_t rows = 5, cols = colsList[ci]; size_t n = rows * cols, es = dtype ? 2 : 4;
    float *sf = malloc(n * 4), *tf = malloc(n * 4);
    for (size_t i = 0; i < n; i++) { sf[i] = (rand() / (float)RAND_MAX - 0.5f) * (ti == 0 ? 2e4f : 10.f); tf[i] = (rand() / (float)RAND_MAX - 0.5f) * (ti == 0 ? 2e4f : 10.f); }
    if (div == 0 || div == 2) for (size_t i = 0; i < n; i += 3) tf[i] = -1.0f/0.0f;  /* top-k-like -inf (kl, jsd) */
    void *s = malloc(n * es), *t = malloc(n * es);
    for (size_t i = 0; i < n; i++) {
      if (dtype) { uint32_t b; memcpy(&b, &sf[i], 4); ((uint16_t *)s)[i] = b >> 16; memcpy(&b, &tf[i], 4); ((uint16_t *)t)[i] = b >> 16; }
      else { ((float *)s)[i] = sf[i]; ((float *)t)[i] = tf[i]; }
    }
    int64_t y[5]; for (int r = 0; r < 5; r++) y[r] = r == 1 ? -100 : rand() % cols;
    for (int c = 0; c < 3; c++) {
      void *s1 = malloc(n * es), *s2 = malloc(n * es), *g1 = malloc(n * es), *g2 = malloc(n * es);
      memcpy(s1, s, n * es); memcpy(s2, s, n * es); memset(g1, 0x55, n * es); memset(g2, 0x55, n * es);
      int8_t f1[5], f2[5]; double o1[2], o2[2];
      int r1 = nw[c](s1, t, dtype, labels ? y : NULL, 0, rows, cols, div, Ts[ti], labels ? 0.7f : 1.f, 0.3f, -100, 0.2f, inplace ? s1 : g1, f1, o1);
      int r2 = od[c](s2, t, dtype, labels ? y : NULL, 0, rows, cols, div, Ts[ti], labels ? 0.7f : 1.f, 0.3f, -100, 0.2f, inplace ? s2 : g2, f2, o2);
      cases++;
      int differ = r1 != r2 || memcmp(f1, f2, 5) || memcmp(o1, o2, 16) || (inplace ? memcmp(s1, s2, n * es) : memcmp(g1, g2, n * es));
      if (differ) { bad++; if (bad < 10) printf("DIFFER copy %d cols %ld dtype %d div %d T %g inplace %d labels %d: %g vs %g\n", c, (long)cols, dtype, div, Ts[ti], inplace, labels, o1[0], o2[0]); }
      free(s1); free(s2); free(g1); free(g2);
    }
    free(sf); free(tf); free(s); free(t);
  }
  printf("%ld of %ld cases equal bit for bit\n", cases - bad, cases);
  return bad != 0;
}
