/*
 * C baseline for DowncallBenchmark: the same OpenBLAS functions called from C through a pointer
 * from dlsym (as any C program that loads the library at run time does), timed per call.
 * Prints one line per function: name, then the median of 7 runs of 20M calls, in ns per call.
 *
 *   gcc -O2 -o downcall_baseline downcall_baseline.c -ldl && ./downcall_baseline /path/libopenblas.so.0
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CALLS 20000000L
#define RUNS 7

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef int (*get_threads_fn)(void);
typedef float (*sdot_fn)(int, const float *, int, const float *, int);

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s /path/to/libopenblas.so.0\n", argv[0]); return 2; }
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    get_threads_fn get_threads = (get_threads_fn)dlsym(lib, "openblas_get_num_threads");
    sdot_fn sdot = (sdot_fn)dlsym(lib, "cblas_sdot");
    float x = 1.5f, y = 2.0f;
    volatile double sink = 0;
    double t[RUNS];

    for (int r = 0; r < RUNS; r++) {
        double t0 = now_ns();
        long acc = 0;
        for (long i = 0; i < CALLS; i++) acc += get_threads();
        t[r] = (now_ns() - t0) / CALLS;
        sink += acc;
    }
    qsort(t, RUNS, sizeof t[0], cmp);
    printf("c_trivialCall %.2f ns/call\n", t[RUNS / 2]);

    for (int r = 0; r < RUNS; r++) {
        double t0 = now_ns();
        float acc = 0;
        for (long i = 0; i < CALLS; i++) acc += sdot(1, &x, 1, &y, 1);
        t[r] = (now_ns() - t0) / CALLS;
        sink += acc;
    }
    qsort(t, RUNS, sizeof t[0], cmp);
    printf("c_callWithSegments %.2f ns/call\n", t[RUNS / 2]);
    return sink == 42 ? 1 : 0;
}
