/* Distill4J's CPU kernels: the fused distillation loss's float fast path, one instruction set's
 * copy. native/build-cpu-kernels.sh compiles this file three times, each with its vector width and
 * -march: D4J_W = 16 lanes for x86-64-v4 (AVX-512), 8 for x86-64-v3 (AVX2 + FMA), 4 for the SSE2
 * baseline, as d4j_cpu_kd_rows_avx512 / _avx2 / _sse2; distill4j_cpu.c picks one for the CPU at
 * the first call. (One 16-lane source compiled for every target, GCC's target_clones, ran 7x
 * slower as AVX2 and 2.5x as SSE2 than these per-width copies: GCC splits a 64-byte vector's
 * compares and selects through the stack there.)
 *
 * Per row, three passes over the row (four for reverse KL and JSD; it is in L1/L2 after the first):
 *   1. maxima ms, mt of the raw logits, and the check that the row is one this path takes;
 *   2. ea = exp((s - ms) / T), eb = exp((t - mt) / T) (KL) and e1 = exp(s - ms) (cross-entropy),
 *      kept in scratch, and their sums sa, sb, s1;
 *   3. the divergence and the gradient, each exponential reused from scratch:
 *      KL:  D = sum q ((t - mt) - (s - ms)) / T + log sa - log sb,   q = eb / sb, p = ea / sa,
 *           dL/ds = [alpha T (p - q) + (1 - alpha)(e1 / s1 - [j == y])] * scale
 *      MSE: D = sum ((s - t) / T)^2 / C,  dL/ds = [alpha T 2 (s - t) / T / C + (1 - alpha)(...)] * scale
 *      reverse KL and JSD (two passes 3): r = log p - log q in double, the log-term g (reverse
 *           KL: r; JSD: -(1 - beta)(log M - log p)) and D, then
 *           dL/ds = [alpha T p (g - sum p g / sum p) + (1 - alpha)(...)] * scale
 * The same shifted log-space arithmetic as the CUDA kernel (native/src/main/cuda/distill_loss.cu),
 * exact for logits of +-1e4 at T = 0.1: every exp argument is <= 0.
 *
 * Vectors: GCC's vector extensions, W float lanes (one register of the target).
 * Sums: float lanes over blocks of BLOCK vectors, then double, so a 256k-column row loses no more
 * than a 1k one. No -ffast-math: the order of every sum is fixed by this code, and -inf, NaN and
 * signed zeros keep their IEEE meaning.
 */
#include "distill4j_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef D4J_W
#error "compile with -DD4J_W=lanes and -DD4J_KERNEL=name (native/build-cpu-kernels.sh)"
#endif
#define W D4J_W    /* lanes a vector: 16 (AVX-512), 8 (AVX2), 4 (SSE2) */
#define BLOCK (1024 / W) /* vectors (1,024 columns) summed in float before the block's sum goes to double */
typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));
typedef uint32_t vu __attribute__((vector_size(4 * W)));
typedef uint16_t vh __attribute__((vector_size(2 * W)));
/* Doubles a register at a time. A W-lane double vector is two registers wide, and GCC keeps a
 * vector wider than the target's registers in memory and lowers its compares lane by lane through
 * scalar compares and cmovs: the reverse KL and JSD passes, written on such vectors, ran at 1.6 and
 * 6.1 ns an element (AVX-512, 4096 x 1000; AVX2 3.1 and 10.0). They now compute on pairs of
 * register-wide halves, vd2 (lanes 0..W/2-1 in lo, the rest in hi), with every mask from a float
 * compare: 1.3 and 3.1 ns (AVX2 1.8 and 5.1). The W-lane double types vdw, vlw are only converted
 * into and split (a conversion of the whole vector, then shuffles: the fewest instructions, and no
 * store-to-load forwarding stall, which memcpy'd halves caused). */
#define H (W / 2)
typedef double vd __attribute__((vector_size(8 * H)));
typedef int64_t vl __attribute__((vector_size(8 * H)));
typedef struct { vd lo, hi; } vd2;
typedef struct { vl lo, hi; } vl2;
typedef double vdw __attribute__((vector_size(8 * W)));
typedef int64_t vlw __attribute__((vector_size(8 * W)));

/* always_inline: every helper is part of the one loop nest it serves (vectors in registers). */
#define INLINE static inline __attribute__((always_inline))

INLINE vf splat(float x) { return (vf){} + x; }
INLINE vf sel(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
INLINE vf vmax(vf a, vf b) { return sel(a > b, a, b); }
INLINE vd seld(vl mask, vd a, vd b) { return (vd)(((vl)a & mask) | ((vl)b & ~mask)); }
/* A float vector's lanes as doubles (exact), and back (rounded); a float mask as double masks. */
#if W == 16
#define D4J_LO 0, 1, 2, 3, 4, 5, 6, 7
#define D4J_HI 8, 9, 10, 11, 12, 13, 14, 15
#define D4J_ALL 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
#elif W == 8
#define D4J_LO 0, 1, 2, 3
#define D4J_HI 4, 5, 6, 7
#define D4J_ALL 0, 1, 2, 3, 4, 5, 6, 7
#elif W == 4
#define D4J_LO 0, 1
#define D4J_HI 2, 3
#define D4J_ALL 0, 1, 2, 3
#else
#error "D4J_W is 16, 8 or 4"
#endif
INLINE vd2 widen(vf v) {
    const vdw d = __builtin_convertvector(v, vdw);
    return (vd2){__builtin_shufflevector(d, d, D4J_LO), __builtin_shufflevector(d, d, D4J_HI)};
}
INLINE vf narrow(vd2 d) {
    return __builtin_convertvector(__builtin_shufflevector(d.lo, d.hi, D4J_ALL), vf);
}
INLINE vl2 widen_mask(vi m) {
    const vlw l = __builtin_convertvector(m, vlw);
    return (vl2){__builtin_shufflevector(l, l, D4J_LO), __builtin_shufflevector(l, l, D4J_HI)};
}
INLINE vi lanes_below(int64_t n) {
    vi idx;
    for (int j = 0; j < W; j++) idx[j] = j;
    return idx < (vi){} + (int32_t)n;
}

/* exp(x) for x <= 0, within about 1 ulp (Cephes' expf polynomial after a two-constant reduction by
 * ln 2); x < -87 (where exp(x) < FLT_MIN) and x = -inf give 0. Callers pass shifted logits only. */
INLINE vf vexp(vf x) {
    const vi tiny = x < splat(-87.0f);
    const vf xc = sel(tiny, splat(-87.0f), x);
    const vf kk = xc * 1.44269504088896341f + 12582912.0f; /* x / ln 2 rounded to an integer: + 1.5 * 2^23 */
    const vi ki = (vi)kk - 0x4B400000;                     /* that integer, from the float's low bits */
    const vf k = kk - 12582912.0f;
    vf r = xc - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + (r + 1.0f);
    const vf e = p * (vf)((ki + 127) << 23); /* 2^k: k >= -126 after the clamp */
    return (vf)((vi)e & ~tiny);
}

/* log(u) for normal u > 0, within about 1 ulp (Cephes' logf: u = 2^e m, m in [sqrt(1/2), sqrt(2)),
 * a polynomial in m - 1, e ln 2 added in two parts). */
INLINE vf vlog(vf u) {
    const vi bits = (vi)u;
    vf m = (vf)((bits & 0x7fffff) | 0x3f000000);                 /* [0.5, 1) */
    vf e = __builtin_convertvector((bits >> 23) - 126, vf);
    const vi low = m < splat(0.707106781186547524f);
    e = e - sel(low, splat(1.f), splat(0.f));
    const vf x = sel(low, m + m, m) - 1.f;
    const vf z = x * x;
    vf p = splat(7.0376836292e-2f);
    p = p * x - 1.1514610310e-1f;
    p = p * x + 1.1676998740e-1f;
    p = p * x - 1.2420140846e-1f;
    p = p * x + 1.4249322787e-1f;
    p = p * x - 1.6668057665e-1f;
    p = p * x + 2.0000714765e-1f;
    p = p * x - 2.4999993993e-1f;
    p = p * x + 3.3333331174e-1f;
    vf y = x * (z * p);
    y = y - 2.12194440e-4f * e;
    y = y - 0.5f * z;
    return (x + y) + 0.693359375f * e;
}

/* log(1 + z) for z in (-1, 0] to about 2 ulp: u = 1 + z rounded, plus the rounding's first-order
 * correction (z - (u - 1)) / u. */
INLINE vf vlog1p(vf z) {
    const vf u = 1.f + z;
    return vlog(u) + (z - (u - 1.f)) / u;
}

/* exp(x) - 1 for x <= 0 (x = -inf gives -1): a Taylor polynomial where |x| < 0.35 (relative error
 * under 2e-8), exp(x) - 1 beyond (where |result| > 0.29: no cancellation). */
INLINE vf vexpm1(vf x) {
    vf p = splat(1.f / 40320.f);
    p = p * x + 1.f / 5040.f;
    p = p * x + 1.f / 720.f;
    p = p * x + 1.f / 120.f;
    p = p * x + 1.f / 24.f;
    p = p * x + 1.f / 6.f;
    p = p * x + 0.5f;
    p = (p * x) * x + x;
    return sel(x > splat(-0.35f), p, vexp(x) - 1.f);
}

/* Horizontal reductions, as trees (halves combined, log2 W steps, a fixed order: deterministic).
 * In sequence they were 16 dependent double adds a sum on AVX-512, which with a row's other fixed
 * costs made a 10-class row take 23 ns an element (AVX2: 11). */
INLINE double hsum(vf v) {
    const vd2 d = widen(v);
    const vd x = d.lo + d.hi;
    double a[H];
    memcpy(a, &x, sizeof a);
    for (int h = H / 2; h > 0; h /= 2) for (int j = 0; j < h; j++) a[j] += a[j + h];
    return a[0];
}
/* The largest lane (the same value in any order: the rows that reach it have no NaN; of -0 and
 * +0, either, which no later step tells apart). */
INLINE float hmax(vf v) {
    float a[W];
    memcpy(a, &v, sizeof a);
    for (int h = W / 2; h > 0; h /= 2) for (int j = 0; j < h; j++) a[j] = a[j + h] > a[j] ? a[j + h] : a[j];
    return a[0];
}
/* Whether any lane is nonzero or NaN (the finiteness check's accumulator). */
INLINE int any_nonzero(vf v) {
    const vi m = v != splat(0.f);
    int any = 0;
    for (int j = 0; j < W; j++) any |= m[j];
    return any != 0;
}

/* W logits from p + i (fp32 or bf16, widened exactly). */
INLINE vf load_whole(const void *p, int64_t i, int bf16) {
    if (bf16) {
        vh h;
        memcpy(&h, (const uint16_t *)p + i, sizeof h);
        return (vf)(__builtin_convertvector(h, vi) << 16);
    }
    vf v;
    memcpy(&v, (const float *)p + i, sizeof v);
    return v;
}

/* n (<= W) logits from p + i as a vector; lanes from n on are pad. A row's tail (n < W) is one
 * whole load when the W logits from i - shift are in this call's rows (tail_shift): rotated down by
 * shift lanes when they end with the row (one vpermps on AVX2 and AVX-512), as they are when they
 * run on into the next rows (shift 0, any width; a row narrower than a vector). Filling the lanes one
 * by one through memory cost a store-forwarding stall in every pass: perf ~10% of KL at C = 1000,
 * and most of a 10-class row on AVX-512. shift < 0: no such window (lane by lane). */
INLINE vf load(const void *p, int64_t i, int64_t shift, int bf16, int64_t n, float pad) {
    if (n == W) return load_whole(p, i, bf16);
    if (shift >= 0) {
        vf v = load_whole(p, i - shift, bf16);
#if W >= 8
        if (shift) {
            vi idx;
            for (int j = 0; j < W; j++) idx[j] = (j + (int32_t)shift) & (W - 1);  /* lane j <- element i + j */
            v = __builtin_shuffle(v, idx);
        }
#endif
        return sel(lanes_below(n), v, splat(pad));
    }
    vf v = splat(pad);
    for (int64_t j = 0; j < n; j++) {
        if (bf16) {
            const uint32_t b = (uint32_t)((const uint16_t *)p)[i + j] << 16;
            memcpy(&v[j], &b, 4);
        } else {
            v[j] = ((const float *)p)[i + j];
        }
    }
    return v;
}

/* float -> bfloat16 bits, round to nearest even, NaN -> 0x7fc0 (Java's Bf16.fromFloat, CUDA's __float2bfloat16_rn). */
INLINE vi to_bf16(vf v) {
    const vi b = (vi)v;
    const vi rounded = (vi)((vu)(b + 0x7fff + ((b >> 16) & 1)) >> 16);
    const vi nan = v != v;
    return (nan & 0x7fc0) | (~nan & rounded);
}

/* Stores the first n (<= W) lanes of v at p + i. */
INLINE void store(void *p, int64_t i, vf v, int bf16, int64_t n) {
    if (bf16) {
        const vh h = __builtin_convertvector(to_bf16(v), vh);
        if (n == W) memcpy((uint16_t *)p + i, &h, sizeof h);
        else for (int64_t j = 0; j < n; j++) ((uint16_t *)p)[i + j] = h[j];
    } else {
        if (n == W) memcpy((float *)p + i, &v, sizeof v);
        else for (int64_t j = 0; j < n; j++) ((float *)p)[i + j] = v[j];
    }
}

INLINE float element(const void *p, int64_t i, int bf16) {
    if (!bf16) return ((const float *)p)[i];
    const uint32_t b = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* A row's constants for passes 2 and 3. */
typedef struct {
    float ms, mt, invT, ia, ib, i1, kSoft, hw, twoKSoftInvTCols;
    int mse, jsd, hard;
    float beta;    /* JSD */
    int power;     /* integer T in 1..8 (not MSE): exp(s - ms) = exp((s - ms) / T)^T, multiplications instead of an exp */
    double invTd;  /* reverse KL: 1 / T, and lse(b) - lse(a), for log p - log q in double */
    double lseBA;
    int64_t shift; /* how the row's tail is loaded (tail_shift) */
} RowConsts;

/* For load: the shift of a whole-vector load of a row's n-logit tail (n = cols - whole > 0, at
 * column whole), or -1. after: the logits after the row's end that belong to this call's rows
 * (only those: a later row of another block may be a gradient another thread is writing). */
INLINE int64_t tail_shift(int64_t whole, int64_t n, int64_t after) {
#if W >= 8
    if (whole >= W - n) return W - n;  /* the W logits that end the row */
#else
    (void)whole;                       /* no variable permute on SSE2 */
#endif
    if (after >= W - n) return 0;      /* the row's tail and the start of the next rows */
    return -1;
}

/* Pass 1 on n (<= W) elements from i (a tail loaded as shift says: load): maxima, and the check. The check is arithmetic, not a
 * mask: x * 0 is 0 for finite x and NaN for +-inf and NaN, so *bad stays 0 exactly when every
 * student logit is finite and every teacher logit finite or -inf (a top-k teacher's rest, tested by
 * an ordered ==). GCC scalarised the integer-mask form of this test in context (2.5x slower). */
INLINE void pass1(const void *s, const void *t, int bf16, int64_t i, int64_t shift, int64_t n, vf *ms, vf *mt, vf *bad) {
    const vf sv = load(s, i, shift, bf16, n, -INFINITY), tv = load(t, i, shift, bf16, n, -INFINITY);
    const vf check = sv * 0.f + sel(tv == splat(-INFINITY), splat(0.f), tv * 0.f);
    *bad += n == W ? check : sel(lanes_below(n), check, splat(0.f));
    *ms = vmax(sv, *ms);
    *mt = vmax(tv, *mt);
}

/* Pass 2 on n elements: exponentials to scratch (column c of ea, eb, e1), added to the lane sums.
 * Lanes past n are -inf and give 0. */
INLINE void pass2(const void *s, const void *t, int bf16, int64_t i, int64_t c, int64_t n, const RowConsts *k,
                  float *ea, float *eb, float *e1, vf *va, vf *vb, vf *v1) {
    const vf zs = load(s, i, k->shift, bf16, n, -INFINITY) - k->ms;
    vf a = {};
    if (!k->mse) {
        a = vexp(zs * k->invT);
        const vf b = vexp((load(t, i, k->shift, bf16, n, -INFINITY) - k->mt) * k->invT);
        memcpy(ea + c, &a, sizeof a);
        memcpy(eb + c, &b, sizeof b);
        *va += a;
        *vb += b;
    }
    if (k->hard) {
        vf e;
        if (k->power) {
            /* the cross-entropy's exp(s - ms) from a = exp((s - ms) / T) for an integer T <= 8: a^T
             * by binary powering (squarings up to T's lowest set bit, then a product for each
             * higher one: at most 3 squarings and 2 products), instead of a third exponential.
             * a's rounding is raised to the power T (at most 8 ulp of relative error in each term,
             * the row's largest exactly 1); at T = 1, 2, 4, 8 it is the squarings alone, as before
             * the other integers took this path (a product with 1 first cost AVX-512 ~8% at T = 4).
             * Where exp(s - ms) < FLT_MIN both forms give 0 or a negligible subnormal. */
            int p = k->power;
            vf base = a;
            for (; !(p & 1); p >>= 1) base = base * base;
            e = base;
            for (p >>= 1; p; p >>= 1) {
                base = base * base;
                if (p & 1) e = e * base;
            }
        } else {
            e = vexp(zs);
        }
        memcpy(e1 + c, &e, sizeof e);
        *v1 += e;
    }
}

/* Pass 3 on n elements: the divergence's terms into vd, the gradient (times scale) to grad. */
INLINE void pass3(const void *s, const void *t, int bf16, int64_t i, int64_t c, int64_t n, const RowConsts *k,
                  const float *ea, const float *eb, const float *e1, float scale, void *grad, vf *vd) {
    const vf sv = load(s, i, k->shift, bf16, n, 0.f), tv = load(t, i, k->shift, bf16, n, 0.f);
    vf g;
    if (k->mse) {
        const vf diff = (sv - tv) * k->invT;
        *vd += n == W ? diff * diff : sel(lanes_below(n), diff * diff, splat(0.f));
        g = (sv - tv) * k->twoKSoftInvTCols;
    } else {
        vf a, b;
        memcpy(&a, ea + c, sizeof a);
        memcpy(&b, eb + c, sizeof b);
        const vf q = b * k->ib;
        /* q = 0 where the teacher logit is -inf (and past n): its term is 0, not 0 * -inf */
        *vd += sel(q > splat(0.f), q * (((tv - k->mt) - (sv - k->ms)) * k->invT), splat(0.f));
        g = k->kSoft * (a * k->ia - q);
    }
    if (grad) {
        if (k->hard) {
            vf e;
            memcpy(&e, e1 + c, sizeof e);
            g += k->hw * (e * k->i1);
        }
        store(grad, i, g * scale, bf16, n);
    }
}

/* Reverse KL: r = log p - log q = ((s - ms) - (t - mt)) / T + lseB - lseA in double, where each
 * logit difference is exact (the CUDA kernel's d4j_log_ratio_d): the gradient p (r - sum p r)
 * subtracts numbers of up to 1e5 (T = 0.1, logits of +-1e4) whose difference may be 1e-3 of them.
 * One register-wide half of the lanes. */
INLINE vd log_ratio(vd sd, vd td, const RowConsts *k) {
    return ((sd - (double)k->ms) - (td - (double)k->mt)) * k->invTd + k->lseBA;
}

/* Reverse KL and JSD: the elements' gradient log-terms g and their shares of D, in double, from
 * p (= ea / sa) and q (= eb / sb).
 *   reverse KL: g = r, D += p r.
 *   JSD_beta (the CUDA kernel's d4j_jsd_logs_d): with M = beta q + (1 - beta) p, wq = log M - log q
 *     and wp = log M - log p come from r: where r <= 0, wq = log1p((1 - beta) expm1(r)) and
 *     wp = wq - r; else wp = log1p(beta expm1(-r)) and wq = wp + r: the log1p is formed in fp32
 *     over all W lanes (a bounded, well-conditioned function of r), the +- r in double (r reaches
 *     1e5, the gradient keeps differences of 1e-3 of it). g = -(1 - beta) wp,
 *     D -= beta q wq (q > 0) + (1 - beta) p wp (p > 0).
 * Every mask comes from a float compare, widened. The float sign of r differs from the double's
 * only for 0 < r < 2^-150, where both branches agree to that r. p is pf widened (the caller's). */
INLINE void jsd_half(vl neg, vd w, vd r, vd p, vd q, vl ppos, vl qpos, const RowConsts *k, vd *g, vd *dterm) {
    const double kq = -(double)k->beta, kp = -(1.0 - (double)k->beta);
    const vd zero = {};
    const vd wq = seld(neg, w, w + r), wp = seld(neg, w - r, w);
    *g = kp * wp;
    *dterm = seld(qpos, kq * q * wq, zero) + seld(ppos, kp * p * wp, zero);
}
INLINE void pg_terms(vf sv, vf tv, vf pf, vd2 p, vf qf, const RowConsts *k, vd2 *g, vd2 *dterm) {
    const vd2 sd = widen(sv), td = widen(tv);
    const vd2 r = {log_ratio(sd.lo, td.lo, k), log_ratio(sd.hi, td.hi, k)};
    if (!k->jsd) {
        *g = r;
        *dterm = (vd2){p.lo * r.lo, p.hi * r.hi};
        return;
    }
    const vd2 q = widen(qf);
    const vf rf = narrow(r);
    const vi neg = rf <= splat(0.f);
    const vf c = sel(neg, splat(1.f - k->beta), splat(k->beta));
    const vf mag = sel(neg, rf, -rf);  /* -|r| */
    const vd2 w = widen(vlog1p(c * vexpm1(mag)));
    const vl2 negd = widen_mask(neg), ppos = widen_mask(pf > splat(0.f)), qpos = widen_mask(qf > splat(0.f));
    jsd_half(negd.lo, w.lo, r.lo, p.lo, q.lo, ppos.lo, qpos.lo, k, &g->lo, &dterm->lo);
    jsd_half(negd.hi, w.hi, r.hi, p.hi, q.hi, ppos.hi, qpos.hi, k, &g->hi, &dterm->hi);
}

/* Reverse KL and JSD, pass 3a on n elements: D, sum p g and sum p, in double (lanes past n have
 * p = q = 0). */
INLINE void pass3p_sums(const void *s, const void *t, int bf16, int64_t i, int64_t c, int64_t n, const RowConsts *k, const float *ea,
                        const float *eb, double *gs, vd2 *vD, vd2 *vPG, vd2 *vP) {
    const vf sv = load(s, i, k->shift, bf16, n, 0.f), tv = load(t, i, k->shift, bf16, n, 0.f);
    vf a, b;
    memcpy(&a, ea + c, sizeof a);
    memcpy(&b, eb + c, sizeof b);
    const vf pf = a * k->ia;
    const vd2 p = widen(pf);
    vd2 g, dterm;
    pg_terms(sv, tv, pf, p, b * k->ib, k, &g, &dterm);
    memcpy(gs + c, &g.lo, sizeof g.lo);  /* for pass 3b: JSD's log1p and expm1 once an element */
    memcpy(gs + c + H, &g.hi, sizeof g.hi);
    vD->lo += dterm.lo;
    vD->hi += dterm.hi;
    vPG->lo += p.lo * g.lo;
    vPG->hi += p.hi * g.hi;
    vP->lo += p.lo;
    vP->hi += p.hi;
}

/* Reverse KL and JSD, pass 3b on n elements: dL/ds = [alpha T p (g - pg) + (1 - alpha) e1 / s1] *
 * scale, pg = sum p g / sum p (the division by sum p, 1 up to rounding, as in the CUDA kernel). */
INLINE void pass3p_grad(int64_t i, int64_t c, int64_t n, const RowConsts *k, const float *ea, const double *gs, const float *e1, double pg,
                        float scale, void *grad, int bf16) {
    vf a;
    memcpy(&a, ea + c, sizeof a);
    const vf p = a * k->ia;
    vd2 g;
    memcpy(&g.lo, gs + c, sizeof g.lo);
    memcpy(&g.hi, gs + c + H, sizeof g.hi);
    vf grad_ = k->kSoft * (p * narrow((vd2){g.lo - pg, g.hi - pg}));
    if (k->hard) {
        vf e;
        memcpy(&e, e1 + c, sizeof e);
        grad_ += k->hw * (e * k->i1);
    }
    store(grad, i, grad_ * scale, bf16, n);
}

/* One row: 1 when it is not computed (non-finite input, see the header), else 0 with *soft, *hard
 * added to. after: the logits of this call's rows after this one (tail_shift). scratch: 6 * round_up(cols, W) floats
 * (ea, eb, e1, then g as doubles). Each pass runs its whole vectors with n = W (a
 * constant once inlined: no per-element branches) and the row's tail once with n < W; sums go to
 * double every BLOCK vectors. */
INLINE int kd_row(const void *s, const void *t, int bf16, int64_t base, int64_t cols, int64_t after, int64_t y, int mse, int rkl, int jsd, int hard, float invT,
                  float alpha, float beta, float temperature, float scale, void *grad, float *scratch, double *soft, double *hardSum) {
    const int64_t padded = (cols + W - 1) / W * W, whole = cols / W * W;
    float *ea = scratch, *eb = scratch + padded, *e1 = scratch + 2 * padded;
    double *gs = (double *)(scratch + 4 * padded);  /* reverse KL, JSD: g; 16-byte aligned (padded is a multiple of 4) */
    vf vms = splat(-INFINITY), vmt = splat(-INFINITY);
    vf bad = {};
    const int64_t shift = whole < cols ? tail_shift(whole, cols - whole, after) : -1;
    for (int64_t c = 0; c < whole; c += W) pass1(s, t, bf16, base + c, -1, W, &vms, &vmt, &bad);
    if (whole < cols) pass1(s, t, bf16, base + whole, shift, cols - whole, &vms, &vmt, &bad);
    RowConsts k = {.ms = hmax(vms), .mt = hmax(vmt), .invT = invT, .mse = mse, .jsd = jsd, .hard = hard, .beta = beta,
                   .invTd = 1.0 / (double)temperature, .shift = shift};
    if (!mse && temperature >= 1.f && temperature <= 8.f && temperature == (float)(int)temperature) k.power = (int)temperature;
    if (any_nonzero(bad) || k.mt == -INFINITY) return 1; /* a lane NaN */
    double sa = 0, sb = 0, s1 = 0;
    for (int64_t c0 = 0; c0 < cols; c0 += BLOCK * W) {
        vf va = {}, vb = {}, v1 = {};
        const int64_t end = c0 + BLOCK * W < whole ? c0 + BLOCK * W : whole;
        for (int64_t c = c0; c < end; c += W) pass2(s, t, bf16, base + c, c, W, &k, ea, eb, e1, &va, &vb, &v1);
        if (c0 + BLOCK * W >= cols && whole < cols) pass2(s, t, bf16, base + whole, whole, cols - whole, &k, ea, eb, e1, &va, &vb, &v1);
        sa += hsum(va);
        sb += hsum(vb);
        s1 += hsum(v1);
    }
    const double lseA = mse ? 0 : log(sa), lseB = mse ? 0 : log(sb), lse1 = hard ? log(s1) : 0;
    k.ia = mse ? 0.f : (float)(1 / sa);
    k.ib = mse ? 0.f : (float)(1 / sb);
    k.i1 = hard ? (float)(1 / s1) : 0.f;
    k.kSoft = alpha * temperature;
    k.hw = 1.f - alpha;
    const float invCols = 1.f / (float)cols;
    k.twoKSoftInvTCols = 2.f * k.kSoft * invT * invCols;
    /* s[y] before the gradient may overwrite it (in place) */
    const float sy = hard ? element(s, base + y, bf16) : 0.f;
    double d = 0;
    if (rkl || jsd) {
        /* reverse KL, JSD: D and sum p g, then the gradient, which needs them (two passes) */
        k.lseBA = lseB - lseA;
        vd2 vD = {}, vPG = {}, vP = {};
        for (int64_t c = 0; c < whole; c += W) pass3p_sums(s, t, bf16, base + c, c, W, &k, ea, eb, gs, &vD, &vPG, &vP);
        if (whole < cols) pass3p_sums(s, t, bf16, base + whole, whole, cols - whole, &k, ea, eb, gs, &vD, &vPG, &vP);
        double D = 0, PG = 0, P = 0;
        for (int j = 0; j < H; j++) {  /* lane order 0..W-1, as one W-lane vector */
            D += vD.lo[j];
            PG += vPG.lo[j];
            P += vP.lo[j];
        }
        for (int j = 0; j < H; j++) {
            D += vD.hi[j];
            PG += vPG.hi[j];
            P += vP.hi[j];
        }
        const double pg = P > 0 ? PG / P : 0;
        if (grad) {
            for (int64_t c = 0; c < whole; c += W) pass3p_grad(base + c, c, W, &k, ea, gs, e1, pg, scale, grad, bf16);
            if (whole < cols) pass3p_grad(base + whole, whole, cols - whole, &k, ea, gs, e1, pg, scale, grad, bf16);
        }
        *soft += D;
        if (hard) {
            *hardSum += -(((double)sy - k.ms) - lse1);
            if (grad) {
                /* the label's element again, with its - 1 (its student logit read before the passes) */
                const float gy = k.kSoft * ((ea[y] * k.ia) * (float)(gs[y] - pg)) + k.hw * (e1[y] * k.i1 - 1.f);
                store(grad, base + y, splat(gy * scale), bf16, 1);
            }
        }
        return 0;
    }
    for (int64_t c0 = 0; c0 < cols; c0 += BLOCK * W) {
        vf vd = {};
        const int64_t end = c0 + BLOCK * W < whole ? c0 + BLOCK * W : whole;
        for (int64_t c = c0; c < end; c += W) pass3(s, t, bf16, base + c, c, W, &k, ea, eb, e1, scale, grad, &vd);
        if (c0 + BLOCK * W >= cols && whole < cols) pass3(s, t, bf16, base + whole, whole, cols - whole, &k, ea, eb, e1, scale, grad, &vd);
        d += hsum(vd);
    }
    if (mse) d *= invCols;
    else d += lseA - lseB;
    *soft += d;
    if (hard) {
        *hardSum += -(((double)sy - k.ms) - lse1);
        if (grad) {
            /* the label's element again, with its - 1: the same operations as the vector pass */
            float g = mse ? (sy - element(t, base + y, bf16)) * k.twoKSoftInvTCols : k.kSoft * (ea[y] * k.ia - eb[y] * k.ib);
            g += k.hw * (e1[y] * k.i1 - 1.f);
            store(grad, base + y, splat(g * scale), bf16, 1);
        }
    }
    return 0;
}

int D4J_KERNEL(const void *s, const void *t, int dtype, const int64_t *labels, int64_t row0, int64_t row1, int64_t cols,
                    int divergence, float temperature, float alpha, float beta, int64_t ignore_index, float scale, void *grad,
                    int8_t *flags, double *out) {
    if (!s || !t || !flags || !out || cols <= 0 || row0 < 0 || row1 < row0 || (dtype != D4J_CPU_F32 && dtype != D4J_CPU_BF16)
        || (divergence != D4J_CPU_KL && divergence != D4J_CPU_REVERSE_KL && divergence != D4J_CPU_JSD && divergence != D4J_CPU_MSE)
        || !(temperature > 0.f) || (divergence == D4J_CPU_JSD && !(beta > 0.f && beta < 1.f))) {
        return D4J_CPU_BAD_ARGUMENT;
    }
    const int64_t padded = (cols + W - 1) / W * W;
    /* ea, eb, e1 (floats), then g (doubles: the room of 2 floats each) */
    float *scratch = aligned_alloc(64, (size_t)(6 * padded) * sizeof(float));
    if (!scratch) return D4J_CPU_OUT_OF_MEMORY;
    const int bf16 = dtype == D4J_CPU_BF16, mse = divergence == D4J_CPU_MSE, rkl = divergence == D4J_CPU_REVERSE_KL,
              jsd = divergence == D4J_CPU_JSD;
    const int hard = labels != NULL && alpha < 1.f;
    const size_t size = bf16 ? 2 : 4;
    const float invT = 1.f / temperature;
    double soft = 0, hardSum = 0;
    for (int64_t r = row0; r < row1; r++) {
        const int64_t y = labels ? labels[r] : -1;
        flags[r - row0] = 0;
        if (labels && y == ignore_index) {
            if (grad) memset((char *)grad + (size_t)(r * cols) * size, 0, (size_t)cols * size);
            continue;
        }
        const int64_t after = (row1 - r - 1) * cols;  /* logits of this call's later rows */
        /* the two element types as separate inlined copies: the branch is per row, not per element */
        flags[r - row0] = (int8_t)(bf16 ? kd_row(s, t, 1, r * cols, cols, after, y, mse, rkl, jsd, hard, invT, alpha, beta, temperature, scale, grad, scratch, &soft, &hardSum)
                                        : kd_row(s, t, 0, r * cols, cols, after, y, mse, rkl, jsd, hard, invT, alpha, beta, temperature, scale, grad, scratch, &soft, &hardSum));
    }
    free(scratch);
    out[0] = soft;
    out[1] = hardSum;
    return D4J_CPU_OK;
}

