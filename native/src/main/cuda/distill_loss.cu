// The fused distillation loss (docs/distillation-loss.md): per row of student logits s and teacher
// logits t [rows, cols] (fp32 or bf16; arithmetic in fp32), with a = s/T, b = t/T, p = softmax(a),
// q = softmax(b):
//   loss = sum_r { alpha T^2 D(q, p) + (1 - alpha) CE(s, y) } / N,   grad[r] = dL/ds_r
// in ONE launch. Regimes by the number of classes C (the host picks one, DistillKernels.plan):
//   warp    C <= 512: a warp per row, the row held in registers (ITEMS values per lane, coalesced);
//           explicit plans up to 1,024 (ITEMS = 32, to be measured against the block at 1k).
//   block   a block per row, the row staged in shared memory (16-byte copies), up to 96 KiB a block.
//   cluster sm_90+, C beyond one block: a thread-block cluster of CL blocks per row, each staging
//           its slice or part of it (the rest re-read from L2); the host plans pairs (CL = 2) up to
//           32k fp32 columns, and CL = 4, 8, 16 (16: a non-portable size the kernel opts in to)
//           serve explicit plans. Each block's maxima and sums (relative to its own maxima) are
//           merged through distributed shared memory in a fixed order, so every block sees the
//           same bits: one cluster barrier a row for KL and MSE, two for reverse KL and JSD.
//   reread  longer rows, or no clusters: a block per row that reads the row from global memory in
//           each pass (twice: online max and sums, then divergence and gradient).
//   pipe    (explicit plans, to be measured on a GPU) the block or cluster regime with two buffers:
//           while a block computes on row r in one, cp.async copies its slice of row r + groups
//           into the other, so loading and computing overlap within a block, not only between
//           resident blocks (twice the shared memory; a cluster's block may stage part of its
//           slice and re-read the rest from L2, as in the cluster regime).
//   split   (explicit plans, to be measured on a GPU) a row of any length cut into slices held
//           by a fixed group of blocks that exchange their statistics through L2 a round later:
//           every row read once without clusters, the copy of one row overlapping the gradient
//           pass of the previous one (d4j_kd_split explains it; reverse KL and JSD meet once more
//           a row, for their gradient's row sum).
// Every logit is read from global memory once in the first three regimes (when staged whole), and
// the gradient written once.
// Blocks loop over rows (a grid of about one wave); every thread adds its elements' loss terms over
// all its rows in a fixed order (no reduction per row), the block sums its threads once, writes one
// partial, and the last block to finish (ticket in counters[2]) sums the
// partials in block order and writes the loss: deterministic, no second launch. That block also
// zeroes counters[0..2] for the next evaluation, which keeps the launch replayable in a graph.
// N is the caller's normalizer, or without labels the row count, or with labels and no normalizer
// the rows whose label is in [0, C), counted in the same launch before any gradient is written
// (d4j_count_rows: a grid barrier; the host launches that case so that every block is resident).
// Arithmetic in shifted log space:
// log p = (s - max s) / T - log sum exp((s - max s) / T), exact for logits of +-1e4.
#include "common.cuh"
#include <cuda_bf16.h>
#include <cuda_pipeline.h>
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include <cooperative_groups.h>
#define D4J_HAS_CLUSTERS 1
#define D4J_CLUSTER_DIMS(n) __cluster_dims__(n, 1, 1)
#else
#define D4J_CLUSTER_DIMS(n)
#endif

__device__ __forceinline__ float d4j_f(float v) { return v; }
__device__ __forceinline__ float d4j_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T d4j_to(float v);
template <> __device__ __forceinline__ float d4j_to<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 d4j_to<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// The sums and the KL / MSE term-and-gradient pass use the hardware ex2 (__expf: ex2.approx of
// x log2 e, 2 instructions instead of expf's ~10; measured +25% throughput at 1k-8k classes). Its
// error is 2 + floor(1.16 |x|) ulp; x <= 0 here (shifted logits) and terms with x < -20 are under
// 2e-9 of the row's largest, so the loss and gradient stay within 1e-4 of the CPU's double
// precision. Reverse KL and JSD keep expf: their gradient p (r - sum p r) multiplies p's error by
// log-ratios up to 1e5 at T = 0.1 with logits of +-1e4 (measured: 5e-3 off with __expf).
#define D4J_EXP(x) __expf(x)

__device__ __forceinline__ float d4j_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double d4j_warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float d4j_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// K values reduced over the block at once (one pair of barriers for all K); every thread gets the
// results. Sums are formed in a fixed order (lanes, then warps): deterministic.
template <int K, bool MAX, typename V>
__device__ __forceinline__ void d4j_block_reduce(V (&v)[K]) {
    __shared__ V partial[K][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int j = 0; j < K; j++) v[j] = MAX ? d4j_warp_max(v[j]) : d4j_warp_sum(v[j]);
    __syncthreads();  // partial[] may still be read by the previous call
    if (lane == 0) {
#pragma unroll
        for (int j = 0; j < K; j++) partial[j][warp] = v[j];
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < K; j++) {
        V x = lane < warps ? partial[j][lane] : (MAX ? (V)-INFINITY : (V)0);
        v[j] = MAX ? d4j_warp_max(x) : d4j_warp_sum(x);
    }
}

// div: 0 KL(q||p), 1 KL(p||q), 2 JSD_beta, 3 MSE of logits (the Divergence enum order; JSD at
// beta 0 / 1 arrives here already mapped to KL / reverse KL by the host).
struct D4jKd {
    int div;
    bool hard;  // labels given and alpha < 1: the cross-entropy term is on
    float invT, alpha, beta, softWeight /* alpha T^2 */, kSoft /* alpha T */, invCols;
    double invTd;  // 1 / T for the reverse KL and JSD gradients, which are formed in double
};

__device__ __forceinline__ D4jKd d4j_kd(int div, float temperature, float alpha, float beta, bool labels, int64_t cols) {
    D4jKd k;
    k.div = div;
    k.hard = labels && alpha < 1.f;
    k.invT = 1.f / temperature;
    k.invTd = 1.0 / (double)temperature;
    k.alpha = alpha;
    k.beta = beta;
    k.softWeight = alpha * temperature * temperature;
    k.kSoft = alpha * temperature;
    k.invCols = 1.f / (float)cols;
    return k;
}

// A row's statistics: maxima of the raw logits (same argmax at any T > 0) and log-sum-exps of
// (s - ms)/T, (t - mt)/T and (s - ms) (cross-entropy at T = 1).
struct D4jRow { float ms, mt, lseA, lseB, lse1; };

__device__ __forceinline__ void d4j_kd_sums(const D4jKd& k, float ms, float mt, float sv, float tv, float& sa, float& sb, float& s1) {
    float zs = sv - ms;
    sa += D4J_EXP(zs * k.invT);
    sb += D4J_EXP((tv - mt) * k.invT);
    if (k.hard) s1 += D4J_EXP(zs);
}

// log p - log q, formed from the shifted logits so that two nearly equal log-probabilities (high
// T: both near -log C) are not subtracted: ((s - ms) - (t - mt)) / T + (lseB - lseA).
__device__ __forceinline__ float d4j_log_ratio(const D4jKd& k, const D4jRow& st, float sv, float tv) {
    return ((sv - st.ms) - (tv - st.mt)) * k.invT + (st.lseB - st.lseA);
}

// The same in double, for the reverse KL and JSD gradients: p (g - sum p g) subtracts two numbers
// of up to 1e5 (T = 0.1, logits of +-1e4) whose difference may be 1e-3 of them, and an fp32 g has
// an error of ~1e-2 there (measured: 4e-3 of the largest gradient off). Each logit difference is
// exact in double; lseA and lseB stay float (their error shifts every g alike, and cancels).
__device__ __forceinline__ double d4j_log_ratio_d(const D4jKd& k, const D4jRow& st, float sv, float tv) {
    return (((double)sv - st.ms) - ((double)tv - st.mt)) * k.invTd + ((double)st.lseB - st.lseA);
}

// JSD: log M - log P (wp) and log M - log Q (wq) for M = beta q + (1 - beta) p, from r = log p - log q:
// M / Q = 1 + (1 - beta) expm1(r) and M / P = 1 + beta expm1(-r); each computed where it is the
// accurate one (no cancellation near r = 0, finite wp for a -inf teacher logit). In double: the
// JSD gradient's g = -(1 - beta) wp (see d4j_log_ratio_d).
__device__ __forceinline__ void d4j_jsd_logs_d(const D4jKd& k, double r, double& wp, double& wq) {
    if (r <= 0.0) {
        wq = log1p((1.0 - k.beta) * expm1(r));
        wp = wq - r;
    } else {
        wp = log1p(k.beta * expm1(-r));
        wq = wp + r;
    }
}

// Online max and sums (the load pass): m = max so far, sa = sum exp((x - m) / T), s1 = sum exp(x - m)
// (s1 only with the hard term); rescaled when the max grows. -inf elements add nothing.
struct D4jOnline { float m, sa, s1; };
__device__ __forceinline__ void d4j_online(D4jOnline& o, float x, float invT, bool withS1) {
    if (x == -INFINITY) return;
    if (x > o.m) {
        o.sa = o.sa * D4J_EXP((o.m - x) * invT) + 1.f;
        if (withS1) o.s1 = o.s1 * D4J_EXP(o.m - x) + 1.f;
        o.m = x;
    } else {
        o.sa += D4J_EXP((x - o.m) * invT);
        if (withS1) o.s1 += D4J_EXP(x - o.m);
    }
}
// This thread's sums, rescaled to the row max M (0 when the thread saw nothing finite).
__device__ __forceinline__ float d4j_rescaled(float sum, float m, float M, float invT) {
    return m == -INFINITY ? 0.f : sum * D4J_EXP((m - M) * invT);
}

// One element's share of D, and of sum_i p_i g_i and sum_i p_i (reverse KL and JSD gradients,
// accumulated in double: see d4j_log_ratio_d).
// PG: the kernel is the reverse KL / JSD one (their code is compiled only there: its doubles took
// the KL kernels from 43 to 64 registers on sm_90, and with them resident blocks).
template <bool PG>
__device__ __forceinline__ void d4j_kd_term(const D4jKd& k, const D4jRow& st, float sv, float tv, float& d, double& pg, double& ps) {
    if (!PG && k.div == 0) {
        float q = expf((tv - st.mt) * k.invT - st.lseB);
        if (!(q <= 0.f)) d -= q * d4j_log_ratio(k, st, sv, tv);  // not q > 0: a NaN must reach the loss
    } else if (PG && k.div == 1) {
        float p = expf((sv - st.ms) * k.invT - st.lseA);
        if (!(p <= 0.f)) {
            double g = d4j_log_ratio_d(k, st, sv, tv);
            d += p * (float)g;
            pg += p * g;
            ps += p;
        }
    } else if (PG) {
        float p = expf((sv - st.ms) * k.invT - st.lseA), q = expf((tv - st.mt) * k.invT - st.lseB);
        double wp, wq;
        d4j_jsd_logs_d(k, d4j_log_ratio_d(k, st, sv, tv), wp, wq);
        if (!(q <= 0.f)) d -= k.beta * q * (float)wq;
        if (!(p <= 0.f)) {
            d -= (1.f - k.beta) * p * (float)wp;
            pg -= p * (1.0 - k.beta) * wp;
            ps += p;
        }
    } else {
        float diff = (sv - tv) * k.invT;
        d += diff * diff * k.invCols;
    }
}

// KL and MSE: one element's share of D and its gradient together, each exponential computed once.
__device__ __forceinline__ float d4j_kd_term_grad(const D4jKd& k, const D4jRow& st, float sv, float tv, bool isLabel, float scale, float& d) {
    float dd;
    if (k.div == 0) {
        float p = D4J_EXP((sv - st.ms) * k.invT - st.lseA), q = D4J_EXP((tv - st.mt) * k.invT - st.lseB);
        if (!(q <= 0.f)) d -= q * d4j_log_ratio(k, st, sv, tv);  // not q > 0: a NaN must reach the loss
        dd = p - q;
    } else {
        float diff = (sv - tv) * k.invT;
        d += diff * diff * k.invCols;
        dd = 2.f * diff * k.invCols;
    }
    float g = k.kSoft * dd;
    if (k.hard) g += (1.f - k.alpha) * (D4J_EXP(sv - st.ms - st.lse1) - (isLabel ? 1.f : 0.f));
    return g * scale;
}

// Reverse KL and JSD (KL and MSE take d4j_kd_term_grad): dL/ds for one element, already divided
// by the normalizer (scale = 1 / N); pg = sum_i p_i g_i / sum_i p_i of the row, and g - pg, in
// double (d4j_log_ratio_d). The division by sum p (1 in exact arithmetic) matters: a relative
// error e in p's normalisation would otherwise shift every gradient by e * pg, and pg reaches 1e5.
__device__ __forceinline__ float d4j_kd_grad(const D4jKd& k, const D4jRow& st, float sv, float tv, bool isLabel, double pg, float scale) {
    float p = expf((sv - st.ms) * k.invT - st.lseA), dd;
    if (k.div == 1) {
        dd = !(p <= 0.f) ? p * (float)(d4j_log_ratio_d(k, st, sv, tv) - pg) : 0.f;
    } else {
        double wp, wq;
        d4j_jsd_logs_d(k, d4j_log_ratio_d(k, st, sv, tv), wp, wq);
        dd = !(p <= 0.f) ? p * (float)(-(1.0 - k.beta) * wp - pg) : 0.f;
    }
    float g = k.kSoft * dd;
    if (k.hard) g += (1.f - k.alpha) * (expf(sv - st.ms - st.lse1) - (isLabel ? 1.f : 0.f));
    return g * scale;
}

// 0: the row counts; 1: its label is ignore_index (no loss, zero gradient); 2: its label is out
// of range (NaN loss, zero gradient). y = the label, or -1 without labels.
__device__ __forceinline__ int d4j_row_status(const int64_t* __restrict__ labels, int64_t r, int64_t cols, int64_t ignore, int64_t& y) {
    y = labels ? labels[r] : -1;
    if (!labels) return 0;
    if (y == ignore) return 1;
    return (y < 0 || y >= cols) ? 2 : 0;
}

// The end of every regime: this block's partial (soft, hard: thread 0's values) goes to
// partials[blockIdx.x]; the last block to arrive sums all partials in block order and writes loss.
// zero[0..nzero) (the split regime's row-ready flags) is cleared by that block too, after every block
// has finished with it.
__device__ __forceinline__ void d4j_kd_finish(float soft, float hard, float* __restrict__ partials, unsigned long long* __restrict__ counters,
                                              float norm, float* __restrict__ loss, int nout, unsigned* zero = nullptr, int nzero = 0) {
    __shared__ int last;
    __syncthreads();
    if (threadIdx.x == 0) {
        partials[2 * blockIdx.x] = soft;
        partials[2 * blockIdx.x + 1] = hard;
        __threadfence();  // the partial is visible device-wide before the ticket says so
        last = atomicAdd(&counters[2], 1ull) == (unsigned long long)gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    float ab[2] = {0.f, 0.f};
    for (int i = threadIdx.x; i < (int)gridDim.x; i += blockDim.x) {
        ab[0] += __ldcg(&partials[2 * i]);  // L2, not a possibly stale L1 line
        ab[1] += __ldcg(&partials[2 * i + 1]);
    }
    d4j_block_reduce<2, false>(ab);
    const float a = ab[0], b = ab[1];
    if (threadIdx.x == 0) {
        bool invalid = norm == 0.f;  // no row counts: NaN, as PyTorch's mean over nothing
        float nan = __int_as_float(0x7fc00000);
        loss[0] = invalid ? nan : (a + b) / norm;
        if (nout == 3) {
            loss[1] = invalid ? nan : a / norm;
            loss[2] = invalid ? nan : b / norm;
        }
        counters[0] = 0;  // every block passed d4j_count_rows's barrier before it took its ticket
        counters[1] = 0;
        counters[2] = 0;
    }
    for (int i = threadIdx.x; i < nzero; i += blockDim.x) zero[i] = 0u;
}

// N for labels without a caller's normalizer: the rows whose label is in [0, C), counted here, in
// the launch that uses it (issue: one launch per loss evaluation). Every block counts a stripe of
// the labels, adds its count to counters[0], then arrives at counters[1] and waits until all
// gridDim.x blocks have arrived: a grid barrier, so every block must be resident at once. The host
// guarantees it (DistillKernels.launch: a cooperative launch, which fails rather than hang when the
// grid does not fit, or for cluster kernels a grid cut to cuOccupancyMaxActiveClusters). The waiting
// costs about one block's start-up latency, once per launch; d4j_kd_finish zeroes both counters
// (after every block has passed here), which keeps the launch replayable in a graph. Rows with an
// out-of-range label are not counted; they make the loss NaN through their own row (status 2).
// Returns N (as float: the loss and gradient divide by it in fp32), the same value in every thread.
__device__ __forceinline__ float d4j_count_rows(const int64_t* __restrict__ labels, int64_t rows, int64_t cols, int64_t ignore,
                                                unsigned long long* counters) {
    __shared__ unsigned int blockCount;
    unsigned int c = 0;
#pragma unroll 1
    for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += (int64_t)gridDim.x * blockDim.x) {
        const int64_t y = labels[r];
        c += (y != ignore && y >= 0 && y < cols) ? 1u : 0u;
    }
    c = __reduce_add_sync(0xffffffffu, c);  // sm_80+: one instruction a warp
    if (threadIdx.x == 0) blockCount = 0;
    __syncthreads();
    if ((threadIdx.x & 31) == 0 && c != 0) atomicAdd(&blockCount, c);
    __syncthreads();
    if (threadIdx.x == 0) {
        if (blockCount != 0) atomicAdd(&counters[0], (unsigned long long)blockCount);
        __threadfence();  // the count is visible device-wide before the arrival says so
        atomicAdd(&counters[1], 1ull);
        const volatile unsigned long long* arrived = &counters[1];
        while (*arrived < (unsigned long long)gridDim.x) __nanosleep(64);
        __threadfence();  // every block's count is seen after its arrival
    }
    __syncthreads();
    return (float)__ldcg(&counters[0]);  // L2: the atomics' home, not a stale L1 line
}

// The divisor of the loss and gradient: the caller's, the row count without labels, else counted.
__device__ __forceinline__ float d4j_normalizer(float normalizer, const int64_t* __restrict__ labels, int64_t rows, int64_t cols, int64_t ignore,
                                                unsigned long long* counters) {
    if (normalizer > 0.f) return normalizer;
    return labels ? d4j_count_rows(labels, rows, cols, ignore, counters) : (float)rows;
}

// ---- warp per row: C <= 32 * ITEMS, the row in registers (lane l holds columns l, l + 32, ...).
template <typename T, int ITEMS, bool PG>
__device__ __forceinline__ void d4j_kd_warp(const T* s, const T* __restrict__ t, const int64_t* __restrict__ labels, int64_t rows, int64_t cols,
                                            int div, float temperature, float alpha, float beta, int64_t ignore,
                                            unsigned long long* __restrict__ counters, float normalizer, float* __restrict__ partials,
                                            float* __restrict__ loss, int nout, T* grad) {
    const D4jKd k = d4j_kd(div, temperature, alpha, beta, labels != nullptr, cols);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const float norm = d4j_normalizer(normalizer, labels, rows, cols, ignore, counters), scale = 1.f / norm;
    float dsum = 0.f, hsum = 0.f;  // this lane's share of sum D and of sum -log softmax(s)[y], over its rows in order
    for (int64_t r = (int64_t)blockIdx.x * warps + warp; r < rows; r += (int64_t)gridDim.x * warps) {
        const int64_t base = r * cols;
        int64_t y;
        const int status = d4j_row_status(labels, r, cols, ignore, y);
        if (status != 0) {
            if (grad) for (int64_t c = lane; c < cols; c += 32) grad[base + c] = d4j_to<T>(0.f);
            if (status == 2 && lane == 0) dsum = hsum = __int_as_float(0x7fc00000);
            continue;
        }
        float sv[ITEMS], tv[ITEMS];
        float ms = -INFINITY, mt = -INFINITY;
#pragma unroll
        for (int i = 0; i < ITEMS; i++) {
            const int64_t c = (int64_t)i * 32 + lane;
            sv[i] = c < cols ? d4j_f(s[base + c]) : -INFINITY;
            tv[i] = c < cols ? d4j_f(t[base + c]) : -INFINITY;
            ms = fmaxf(ms, sv[i]);
            mt = fmaxf(mt, tv[i]);
        }
        ms = d4j_warp_max(ms);
        mt = d4j_warp_max(mt);
        float sa = 0.f, sb = 0.f, s1 = 0.f;
#pragma unroll
        for (int i = 0; i < ITEMS; i++) if ((int64_t)i * 32 + lane < cols) d4j_kd_sums(k, ms, mt, sv[i], tv[i], sa, sb, s1);
        const D4jRow st = {ms, mt, logf(d4j_warp_sum(sa)), logf(d4j_warp_sum(sb)), logf(d4j_warp_sum(s1))};
        double pg = 0.0, ps = 0.0;
#pragma unroll
        for (int i = 0; i < ITEMS; i++) {
            const int64_t c = (int64_t)i * 32 + lane;
            if (c < cols) {
                if (!PG && grad) grad[base + c] = d4j_to<T>(d4j_kd_term_grad(k, st, sv[i], tv[i], c == y, scale, dsum));
                else d4j_kd_term<PG>(k, st, sv[i], tv[i], dsum, pg, ps);
                if (k.hard && c == y) hsum -= (sv[i] - ms) - st.lse1;
            }
        }
        if (PG && grad) {
            ps = d4j_warp_sum(ps);
            pg = d4j_warp_sum(pg);
            pg = ps > 0.0 ? pg / ps : 0.0;
#pragma unroll
            for (int i = 0; i < ITEMS; i++) {
                const int64_t c = (int64_t)i * 32 + lane;
                if (c < cols) grad[base + c] = d4j_to<T>(d4j_kd_grad(k, st, sv[i], tv[i], c == y, pg, scale));
            }
        }
    }
    float acc[2] = {dsum, hsum};
    d4j_block_reduce<2, false>(acc);
    d4j_kd_finish(k.softWeight * acc[0], (1.f - alpha) * acc[1], partials, counters, norm, loss, nout);
}

#ifdef D4J_HAS_CLUSTERS
// The cluster's row statistics from each block's maxima (m) and sums relative to them (sa, sb, s1):
// M = max_q m_q, S = sum_q S_q exp((m_q - M) / T). Lane q of warp 0 reads rank q's values and the
// warp reduces them in a fixed shuffle order, so every block of the cluster gets the same bits
// (a one-thread loop over 16 ranks cost 88 registers a thread and with them blocks per SM). One
// cluster barrier: this block's values go to slots[seq & 1], which is rewritten two merges later,
// after a barrier every reader of this one has passed.
template <int CL>
__device__ __forceinline__ void d4j_cluster_merge(float& ms, float& mt, float& sa, float& sb, float& s1, float invT,
                                                  float (*slots)[5], float* merged, int& seq) {
    static_assert(CL <= 32, "one lane per rank");
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    float* slot = slots[seq++ & 1];
    if (threadIdx.x == 0) {
        slot[0] = ms;
        slot[1] = mt;
        slot[2] = sa;
        slot[3] = sb;
        slot[4] = s1;
    }
    cluster.sync();
    if (threadIdx.x < 32) {
        float m0 = -INFINITY, m1 = -INFINITY, a = 0.f, b = 0.f, c = 0.f;
        if (threadIdx.x < CL) {
            const float* o = cluster.map_shared_rank(slot, (int)threadIdx.x);
            m0 = o[0];
            m1 = o[1];
            a = o[2];
            b = o[3];
            c = o[4];
        }
        const float M0 = d4j_warp_max(m0), M1 = d4j_warp_max(m1);
        // a block that saw no finite value has sums of 0 and contributes nothing
        const float A = d4j_warp_sum(m0 == -INFINITY ? 0.f : a * expf((m0 - M0) * invT));
        const float B = d4j_warp_sum(m1 == -INFINITY ? 0.f : b * expf((m1 - M1) * invT));
        const float C = d4j_warp_sum(m0 == -INFINITY ? 0.f : c * expf(m0 - M0));
        if (threadIdx.x == 0) {
            merged[0] = M0;
            merged[1] = M1;
            merged[2] = A;
            merged[3] = B;
            merged[4] = C;
        }
    }
    __syncthreads();
    ms = merged[0];
    mt = merged[1];
    sa = merged[2];
    sb = merged[3];
    s1 = merged[4];
}

// The sums of v[0] and v[1] over the cluster's blocks, in a fixed order (same slots protocol as
// d4j_cluster_merge).
template <int CL>
__device__ __forceinline__ void d4j_cluster_sum2(double (&v)[2], double (*slots)[2], double* merged, int& seq) {
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    double* slot = slots[seq++ & 1];
    if (threadIdx.x == 0) {
        slot[0] = v[0];
        slot[1] = v[1];
    }
    cluster.sync();
    if (threadIdx.x < 32) {
        double a = 0.0, b = 0.0;
        if (threadIdx.x < CL) {
            const double* o = cluster.map_shared_rank(slot, (int)threadIdx.x);
            a = o[0];
            b = o[1];
        }
        a = d4j_warp_sum(a);
        b = d4j_warp_sum(b);
        if (threadIdx.x == 0) {
            merged[0] = a;
            merged[1] = b;
        }
    }
    __syncthreads();
    v[0] = merged[0];
    v[1] = merged[1];
}
#endif

// Four consecutive elements of T as one load or store: 16 bytes of fp32, 8 of bf16 (four at a
// time for bf16 too: eight held twice the registers and spilled on sm_80).
template <typename T> struct D4jQuad;
template <> struct D4jQuad<float> { using raw = float4; };
template <> struct D4jQuad<__nv_bfloat16> { using raw = uint2; };

template <typename T>
__device__ __forceinline__ void d4j_unpack(const typename D4jQuad<T>::raw& raw, float (&out)[4]) {
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < 4; j++) out[j] = d4j_f(e[j]);
}
// W (4 or 1) consecutive gradients to p: one vector store for 4 (p aligned to it), else one element.
template <typename T, int W>
__device__ __forceinline__ void d4j_store(T* p, const float (&g)[W]) {
    if constexpr (W == 4) {
        typename D4jQuad<T>::raw raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int j = 0; j < 4; j++) e[j] = d4j_to<T>(g[j]);
        *reinterpret_cast<typename D4jQuad<T>::raw*>(p) = raw;
    } else {
        p[0] = d4j_to<T>(g[0]);
    }
}

// Copies n elements of a student and a teacher slice (sg, tg) into shared memory (ss, ts): cp.async
// (16 bytes a copy, no registers held, completes in the background: the caller commits and waits)
// when both sources are 16-byte aligned and n a whole number of copies, else plain loads and
// stores, complete on return. ss and ts are 16-byte aligned.
template <typename T>
__device__ __forceinline__ void d4j_stage_async(T* ss, T* ts, const T* sg, const T* tg, int64_t n) {
    constexpr int V = 16 / sizeof(T);
    if (((((uintptr_t)sg | (uintptr_t)tg) & 15) == 0) && n % V == 0) {
        for (int v = threadIdx.x; v < (int)(n / V); v += blockDim.x) {
            __pipeline_memcpy_async(ss + v * V, sg + v * V, 16);
            __pipeline_memcpy_async(ts + v * V, tg + v * V, 16);
        }
    } else {
        for (int i = threadIdx.x; i < (int)n; i += blockDim.x) {
            ss[i] = sg[i];
            ts[i] = tg[i];
        }
    }
}

// f(i, s[W], t[W]) for W consecutive elements from i over the thread's share of [0, n) of the
// staged slices ss and ts: W = 4 (vector reads of 16 bytes of fp32, 8 of bf16) when vec, else 1.
template <typename T, typename F>
__device__ __forceinline__ void d4j_each_staged(const T* ss, const T* ts, int64_t n, bool vec, F&& f) {
    if (vec) {
        using Q = typename D4jQuad<T>::raw;
        const Q* ssq = reinterpret_cast<const Q*>(ss);
        const Q* tsq = reinterpret_cast<const Q*>(ts);
        float a[4], b[4];
        for (int v = threadIdx.x; v < (int)(n / 4); v += blockDim.x) {
            d4j_unpack<T>(ssq[v], a);
            d4j_unpack<T>(tsq[v], b);
            f(v * 4, a, b);
        }
    } else {
        float a[1], b[1];
        for (int i = threadIdx.x; i < (int)n; i += blockDim.x) {
            a[0] = d4j_f(ss[i]);
            b[0] = d4j_f(ts[i]);
            f(i, a, b);
        }
    }
}

// ---- block (CL = 1) or cluster (CL > 1) per row. The block's slice of the row is [lo, lo + chunk).
// STAGED: its first `staged` columns (all of them when they fit) are copied once into shared memory
// (dynamic, 2 * staged elements) and later passes read them there; columns beyond are read from
// global memory in each pass, where they are still in L2 (the 50 MB of an H100 hold the re-read
// tails of every resident block many times over). Not STAGED (CL = 1 only): every pass reads global
// memory, with online max and sums in the first. PARTIAL: a slice may be longer than what is
// staged (clusters); the block kernel stages whole rows and is compiled without the tail loops
// (43 registers instead of 51 on sm_90, which is a third block an SM at 1k columns). Per row: load,
// block max, sums, block sum (+ cluster merge), then the divergence and gradient pass: two block
// reductions a row for KL and MSE.
template <typename T, int CL, bool STAGED, bool PARTIAL, bool PG, bool PIPE = false>
__device__ __forceinline__ void d4j_kd_block(const T* s, const T* __restrict__ t, const int64_t* __restrict__ labels, int64_t rows, int64_t cols,
                                             int div, float temperature, float alpha, float beta, int64_t ignore,
                                             unsigned long long* __restrict__ counters, float normalizer, float* __restrict__ partials,
                                             float* __restrict__ loss, int nout, T* grad, int64_t chunk, int64_t staged) {
#ifndef D4J_HAS_CLUSTERS
    if (CL > 1) __trap();  // the host launches cluster kernels on sm_90+ only
#endif
    extern __shared__ float4 d4j_kd_smem[];
    __shared__ float slots[2][5], merged[5];
    __shared__ double dslots[2][2], dmerged[2];  // reverse KL / JSD: sum p g and sum p
    static_assert(!PIPE || STAGED, "pipelined blocks stage (a cluster's block may stage part of its slice)");
    T* ss = reinterpret_cast<T*>(d4j_kd_smem);
    T* ts = ss + staged;  // staged is a multiple of 8: ts stays 16-byte aligned
    const D4jKd k = d4j_kd(div, temperature, alpha, beta, labels != nullptr, cols);
    int rank = 0, seq = 0;
#ifdef D4J_HAS_CLUSTERS
    if (CL > 1) rank = (int)cooperative_groups::this_cluster().block_rank();
#endif
    const int64_t group = blockIdx.x / CL, groups = gridDim.x / CL;
    const int64_t lo = (int64_t)rank * chunk;  // this block's slice of the row (chunk = cols for CL = 1 unstaged)
    const int64_t hi = min(cols, lo + chunk);
    const int64_t n = hi > lo ? hi - lo : 0;
    const int64_t held = STAGED ? (PARTIAL ? min(n, staged) : n) : 0;  // [0, held) in shared memory, [held, n) re-read
    constexpr bool TAIL = PARTIAL || !STAGED;  // any elements read from global memory after the first pass
    const float norm = d4j_normalizer(normalizer, labels, rows, cols, ignore, counters), scale = 1.f / norm;
    float dsum = 0.f, hsum = 0.f;  // this thread's share of sum D and of sum -log softmax(s)[y], over its rows in order
    constexpr int V = 16 / sizeof(T);  // elements per 16-byte copy
    // PIPE: buffer b holds [student slice | teacher slice] at d4j_kd_smem + 2 * staged * b elements.
    // pipeStage copies the staged part [0, held) of this block's slice of a row into buffer b (the
    // rest of a partly staged slice is read from global memory in each pass, as in the cluster
    // regime). Rows that do not count are skipped.
    auto pipeStage = [&](int64_t row, int b) {
        if (row >= rows) return;
        int64_t yy;
        if (d4j_row_status(labels, row, cols, ignore, yy) != 0) return;
        T* ssn = reinterpret_cast<T*>(d4j_kd_smem) + 2 * staged * b;
        d4j_stage_async<T>(ssn, ssn + staged, s + row * cols + lo, t + row * cols + lo, held);
    };
    int buf = 0;  // PIPE: the buffer of the current row
    if (PIPE) {
        pipeStage(group, 0);
        __pipeline_commit();
    }
    for (int64_t r = group; r < rows; r += groups, buf ^= 1) {
        const int64_t base = r * cols;
        if (PIPE) {
            // The next row into the other buffer (read by nobody since the previous row's closing
            // barrier), then wait for this row's copies (all but the newest group) and make every
            // thread's copies visible to the block.
            pipeStage(r + groups, buf ^ 1);
            __pipeline_commit();
            __pipeline_wait_prior(1);
            __syncthreads();
            ss = reinterpret_cast<T*>(d4j_kd_smem) + 2 * staged * buf;
            ts = ss + staged;
        }
        int64_t y;
        const int status = d4j_row_status(labels, r, cols, ignore, y);  // the same for every block of the cluster
        if (status != 0) {
            if (grad) for (int64_t i = threadIdx.x; i < n; i += blockDim.x) grad[base + lo + i] = d4j_to<T>(0.f);
            if (status == 2 && threadIdx.x == 0) dsum = hsum = __int_as_float(0x7fc00000);
            continue;
        }
        const T* sg = s + base + lo;
        const T* tg = t + base + lo;
        // Vectors throughout (16-byte copies to shared memory, 4-element loads and gradient stores)
        // when the slices and the gradient are 16-byte aligned: a quarter of the load/store
        // instructions and loop overhead of element-wise passes, which at 1k-32k columns limited the
        // issue rate.
        const bool vec = ((((uintptr_t)sg | (uintptr_t)tg | (grad ? (uintptr_t)(grad + base + lo) : 0)) & 15) == 0) && n % V == 0 && held % V == 0;
        // f(i, s[W], t[W]) for W consecutive elements from i, over the slice this thread owns (W = 4
        // when vec, else 1): shared memory first, then the re-read tail.
        auto each = [&](auto&& f) {
            d4j_each_staged<T>(ss, ts, held, vec, f);
            if (!TAIL) return;
            if (vec) {
                using Q = typename D4jQuad<T>::raw;
                const Q* sgq = reinterpret_cast<const Q*>(sg);
                const Q* tgq = reinterpret_cast<const Q*>(tg);
                float a[4], b[4];
                for (int v = (int)(held / 4) + threadIdx.x; v < (int)(n / 4); v += blockDim.x) {
                    d4j_unpack<T>(sgq[v], a);
                    d4j_unpack<T>(__ldg(&tgq[v]), b);
                    f(v * 4, a, b);
                }
            } else {
                float a[1], b[1];
                for (int i = (int)held + threadIdx.x; i < (int)n; i += blockDim.x) {
                    a[0] = d4j_f(sg[i]);
                    b[0] = d4j_f(tg[i]);
                    f(i, a, b);
                }
            }
        };
        // The one pass over HBM. Staged: copy [0, held) to shared memory keeping only the maxima
        // (measured: online sums here delay the next loads, 8k-128k columns ran 15-20% slower);
        // the sums follow from shared memory. Not staged: online max and sums.
        D4jOnline os = {-INFINITY, 0.f, 0.f}, ot = {-INFINITY, 0.f, 0.f};
        if (PIPE) {
            each([&](int, const auto& sv, const auto& tv) {  // the staged part is in shared memory already
                constexpr int W = sizeof(sv) / sizeof(float);
#pragma unroll
                for (int j = 0; j < W; j++) {
                    os.m = fmaxf(os.m, sv[j]);
                    ot.m = fmaxf(ot.m, tv[j]);
                }
            });
        } else if (STAGED) {
            if (vec) {
                const float4* s4 = reinterpret_cast<const float4*>(sg);
                const float4* t4 = reinterpret_cast<const float4*>(tg);
                float4* ss4 = reinterpret_cast<float4*>(ss);
                float4* ts4 = reinterpret_cast<float4*>(ts);
#pragma unroll 4
                for (int v = threadIdx.x; v < (int)(held / V); v += blockDim.x) {
                    float4 a = s4[v], b = __ldg(&t4[v]);
                    ss4[v] = a;
                    ts4[v] = b;
                    const T* ae = reinterpret_cast<const T*>(&a);
                    const T* be = reinterpret_cast<const T*>(&b);
#pragma unroll
                    for (int j = 0; j < V; j++) {
                        os.m = fmaxf(os.m, d4j_f(ae[j]));
                        ot.m = fmaxf(ot.m, d4j_f(be[j]));
                    }
                }
            } else {
                for (int i = threadIdx.x; i < (int)held; i += blockDim.x) {
                    T a = sg[i], b = tg[i];
                    ss[i] = a;
                    ts[i] = b;
                    os.m = fmaxf(os.m, d4j_f(a));
                    ot.m = fmaxf(ot.m, d4j_f(b));
                }
            }
            if (TAIL) for (int i = (int)held + threadIdx.x; i < (int)n; i += blockDim.x) {
                os.m = fmaxf(os.m, d4j_f(sg[i]));
                ot.m = fmaxf(ot.m, d4j_f(tg[i]));
            }
        } else {
            each([&](int, const auto& sv, const auto& tv) {
                constexpr int W = sizeof(sv) / sizeof(float);
#pragma unroll
                for (int j = 0; j < W; j++) {
                    d4j_online(os, sv[j], k.invT, k.hard);
                    d4j_online(ot, tv[j], k.invT, false);
                }
            });
        }
        float mx[2] = {os.m, ot.m};
        d4j_block_reduce<2, true>(mx);  // synchronises: the staged slice is complete
        // This block's sums, relative to its own maxima (0 when the slice holds no finite value:
        // a top-k teacher's slice can be all -inf).
        const float rs = mx[0] == -INFINITY ? 0.f : mx[0], rt = mx[1] == -INFINITY ? 0.f : mx[1];
        float sum[3] = {0.f, 0.f, 0.f};
        if (STAGED) {
            each([&](int, const auto& sv, const auto& tv) {
                constexpr int W = sizeof(sv) / sizeof(float);
#pragma unroll
                for (int j = 0; j < W; j++) d4j_kd_sums(k, rs, rt, sv[j], tv[j], sum[0], sum[1], sum[2]);
            });
        } else {
            sum[0] = d4j_rescaled(os.sa, os.m, rs, k.invT);
            sum[1] = d4j_rescaled(ot.sa, ot.m, rt, k.invT);
            sum[2] = k.hard ? d4j_rescaled(os.s1, os.m, rs, 1.f) : 0.f;
        }
        d4j_block_reduce<3, false>(sum);
        float ms = mx[0], mt = mx[1];
#ifdef D4J_HAS_CLUSTERS
        if constexpr (CL > 1) d4j_cluster_merge<CL>(ms, mt, sum[0], sum[1], sum[2], k.invT, slots, merged, seq);
#endif
        const D4jRow st = {ms, mt, logf(sum[0]), logf(sum[1]), logf(sum[2])};
        double pgs[2] = {0.0, 0.0};  // sum p g and sum p of the row (reverse KL, JSD)
        // KL, MSE: the gradient in this pass (element i is read before it is written, in place too)
        each([&](int i, const auto& sv, const auto& tv) {
            constexpr int W = sizeof(sv) / sizeof(float);
            float g[W];
#pragma unroll
            for (int j = 0; j < W; j++) {
                const int64_t c = lo + i + j;
                if (k.hard && c == y) hsum -= (sv[j] - ms) - st.lse1;
                if (!PG && grad) g[j] = d4j_kd_term_grad(k, st, sv[j], tv[j], c == y, scale, dsum);
                else d4j_kd_term<PG>(k, st, sv[j], tv[j], dsum, pgs[0], pgs[1]);
            }
            if (!PG && grad) d4j_store<T>(grad + base + lo + i, g);
        });
        if (PG && grad) {
            d4j_block_reduce<2, false>(pgs);
#ifdef D4J_HAS_CLUSTERS
            if constexpr (CL > 1) d4j_cluster_sum2<CL>(pgs, dslots, dmerged, seq);
#endif
            const double pg = pgs[1] > 0.0 ? pgs[0] / pgs[1] : 0.0;
            // In place over s is safe: staged elements are read from shared memory; the others are
            // read by the thread that writes them, and s[y] was read in the pass above.
            each([&](int i, const auto& sv, const auto& tv) {
                constexpr int W = sizeof(sv) / sizeof(float);
                float g[W];
#pragma unroll
                for (int j = 0; j < W; j++) g[j] = d4j_kd_grad(k, st, sv[j], tv[j], lo + i + j == y, pg, scale);
                d4j_store<T>(grad + base + lo + i, g);
            });
        }
        if (STAGED) __syncthreads();  // the staged slice is read by everyone before the next row overwrites it
    }
#ifdef D4J_HAS_CLUSTERS
    if (CL > 1) cooperative_groups::this_cluster().sync();  // no block leaves while another may read its slots
#endif
    float acc[2] = {dsum, hsum};
    d4j_block_reduce<2, false>(acc);
    d4j_kd_finish(k.softWeight * acc[0], (1.f - alpha) * acc[1], partials, counters, norm, loss, nout);
}

// ptxas for sm_100 and sm_120 caps these kernels at 64 registers under a bare 512-thread bound and
// spills a few bytes; told one block per SM suffices it uses what it needs (sm_80..sm_90 take ~40
// without it, which keeps several blocks per SM there).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1000
#define D4J_KD_BLOCK_BOUNDS __launch_bounds__(512, 1)
#else
#define D4J_KD_BLOCK_BOUNDS __launch_bounds__(512)
#endif

#define D4J_KD_PARAMS(T) const T* s, const T* __restrict__ t, const int64_t* __restrict__ labels, int64_t rows, int64_t cols, int div, \
    float temperature, float alpha, float beta, int64_t ignore, unsigned long long* __restrict__ counters, float normalizer, \
    float* __restrict__ partials, float* __restrict__ loss, int nout, T* grad, int64_t chunk, int64_t staged
#define D4J_KD_ARGS s, t, labels, rows, cols, div, temperature, alpha, beta, ignore, counters, normalizer, partials, loss, nout, grad

// Every kernel twice: NAME for KL and MSE, NAME_pg for reverse KL and JSD (PG: their gradient
// needs sum p g, in double). The host picks by divergence (DistillKernels.launch).
// Warp kernels: (256, 2) because without the floor of 2 blocks, ptxas for sm_120 held them to 64
// registers and spilled. ITEMS = 32 (rows of 513-1,024 columns, explicit plans: a candidate for 1k,
// to be measured) holds 64 values a lane: (256, 1), 160 registers on sm_90 (230 for _pg on sm_120),
// no spills; 128-thread blocks fit three an SM.
#define D4J_KD_WARP(NAME, T, ITEMS) \
    extern "C" __global__ void __launch_bounds__(256, ITEMS > 16 ? 1 : 2) NAME(D4J_KD_PARAMS(T)) { d4j_kd_warp<T, ITEMS, false>(D4J_KD_ARGS); } \
    extern "C" __global__ void __launch_bounds__(256, ITEMS > 16 ? 1 : 2) NAME##_pg(D4J_KD_PARAMS(T)) { d4j_kd_warp<T, ITEMS, true>(D4J_KD_ARGS); }
#define D4J_KD_BLOCK(NAME, T, CL, STAGED) \
    extern "C" __global__ void D4J_CLUSTER_DIMS(CL) D4J_KD_BLOCK_BOUNDS NAME(D4J_KD_PARAMS(T)) { d4j_kd_block<T, CL, STAGED, true, false>(D4J_KD_ARGS, chunk, staged); } \
    extern "C" __global__ void D4J_CLUSTER_DIMS(CL) D4J_KD_BLOCK_BOUNDS NAME##_pg(D4J_KD_PARAMS(T)) { d4j_kd_block<T, CL, STAGED, true, true>(D4J_KD_ARGS, chunk, staged); }
// Pipelined clusters come whole-slice (PARTIAL false: 39-40 registers on sm_90) and, for 16 blocks
// only (256k fp32 columns, whose slices do not fit twice), partly staged (39-40 since the staged and re-read loops were split apart, 60 before).
#define D4J_KD_PIPE(NAME, T, CL, PARTIAL) \
    extern "C" __global__ void D4J_CLUSTER_DIMS(CL) D4J_KD_BLOCK_BOUNDS NAME(D4J_KD_PARAMS(T)) { d4j_kd_block<T, CL, true, PARTIAL, false, true>(D4J_KD_ARGS, chunk, staged); } \
    extern "C" __global__ void D4J_CLUSTER_DIMS(CL) D4J_KD_BLOCK_BOUNDS NAME##_pg(D4J_KD_PARAMS(T)) { d4j_kd_block<T, CL, true, PARTIAL, true, true>(D4J_KD_ARGS, chunk, staged); }
// The pipelined block (short rows, many blocks an SM): three 512-thread blocks an SM as the bound
// holds ptxas to 40 registers on sm_80..sm_120 without spills (47-72 without it: 10 blocks of 128
// threads an SM at 1k columns instead of 12).
#define D4J_KD_PIPE1(NAME, T) \
    extern "C" __global__ void __launch_bounds__(512, 3) NAME(D4J_KD_PARAMS(T)) { d4j_kd_block<T, 1, true, false, false, true>(D4J_KD_ARGS, chunk, staged); } \
    extern "C" __global__ void D4J_KD_BLOCK_BOUNDS NAME##_pg(D4J_KD_PARAMS(T)) { d4j_kd_block<T, 1, true, false, true, true>(D4J_KD_ARGS, chunk, staged); }
#define D4J_KD_BLOCK1(NAME, T, STAGED) \
    extern "C" __global__ void D4J_KD_BLOCK_BOUNDS NAME(D4J_KD_PARAMS(T)) { d4j_kd_block<T, 1, STAGED, false, false>(D4J_KD_ARGS, chunk, staged); } \
    extern "C" __global__ void D4J_KD_BLOCK_BOUNDS NAME##_pg(D4J_KD_PARAMS(T)) { d4j_kd_block<T, 1, STAGED, false, true>(D4J_KD_ARGS, chunk, staged); }

D4J_KD_WARP(d4j_kd_warp1_f32, float, 1)
D4J_KD_WARP(d4j_kd_warp2_f32, float, 2)
D4J_KD_WARP(d4j_kd_warp4_f32, float, 4)
D4J_KD_WARP(d4j_kd_warp8_f32, float, 8)
D4J_KD_WARP(d4j_kd_warp16_f32, float, 16)
D4J_KD_WARP(d4j_kd_warp32_f32, float, 32)
D4J_KD_WARP(d4j_kd_warp1_bf16, __nv_bfloat16, 1)
D4J_KD_WARP(d4j_kd_warp2_bf16, __nv_bfloat16, 2)
D4J_KD_WARP(d4j_kd_warp4_bf16, __nv_bfloat16, 4)
D4J_KD_WARP(d4j_kd_warp8_bf16, __nv_bfloat16, 8)
D4J_KD_WARP(d4j_kd_warp16_bf16, __nv_bfloat16, 16)
D4J_KD_WARP(d4j_kd_warp32_bf16, __nv_bfloat16, 32)
D4J_KD_BLOCK1(d4j_kd_block_f32, float, true)
D4J_KD_BLOCK1(d4j_kd_block_bf16, __nv_bfloat16, true)
D4J_KD_BLOCK1(d4j_kd_reread_f32, float, false)
D4J_KD_BLOCK1(d4j_kd_reread_bf16, __nv_bfloat16, false)
D4J_KD_BLOCK(d4j_kd_cluster2_f32, float, 2, true)
D4J_KD_BLOCK(d4j_kd_cluster4_f32, float, 4, true)
D4J_KD_BLOCK(d4j_kd_cluster8_f32, float, 8, true)
D4J_KD_BLOCK(d4j_kd_cluster16_f32, float, 16, true)
D4J_KD_BLOCK(d4j_kd_cluster2_bf16, __nv_bfloat16, 2, true)
D4J_KD_BLOCK(d4j_kd_cluster4_bf16, __nv_bfloat16, 4, true)
D4J_KD_BLOCK(d4j_kd_cluster8_bf16, __nv_bfloat16, 8, true)
D4J_KD_BLOCK(d4j_kd_cluster16_bf16, __nv_bfloat16, 16, true)
D4J_KD_PIPE1(d4j_kd_pipe_f32, float)
D4J_KD_PIPE(d4j_kd_pipe2_f32, float, 2, false)
D4J_KD_PIPE(d4j_kd_pipe4_f32, float, 4, false)
D4J_KD_PIPE(d4j_kd_pipe8_f32, float, 8, false)
D4J_KD_PIPE(d4j_kd_pipe16_f32, float, 16, false)
D4J_KD_PIPE(d4j_kd_pipe16p_f32, float, 16, true)
D4J_KD_PIPE1(d4j_kd_pipe_bf16, __nv_bfloat16)
D4J_KD_PIPE(d4j_kd_pipe2_bf16, __nv_bfloat16, 2, false)
D4J_KD_PIPE(d4j_kd_pipe4_bf16, __nv_bfloat16, 4, false)
D4J_KD_PIPE(d4j_kd_pipe8_bf16, __nv_bfloat16, 8, false)
D4J_KD_PIPE(d4j_kd_pipe16_bf16, __nv_bfloat16, 16, false)
D4J_KD_PIPE(d4j_kd_pipe16p_bf16, __nv_bfloat16, 16, true)

// ---- split: rows of any length read once from global memory, without clusters.
// A row is cut into K = ceil(cols / chunk) slices; the grid (G blocks, a multiple of K, all resident
// at once: a cooperative launch) is G / K fixed groups of K blocks, and group g owns the rows g,
// g + G/K, g + 2G/K, ...: block g K + q holds slice q of each of them. A block keeps two slices in
// shared memory (buffers 0 and 1, [student | teacher], 2 * chunk elements each) and runs each row
// in two steps a round apart:
//   round j: cp.async row j's slice into buffer j & 1; finish row j - 1 (its statistics complete:
//            divergence terms and gradient from buffer (j - 1) & 1); wait for the copy; row j's
//            slice statistics (maxima, sums), published for the group.
// So the copy of one row overlaps the gradient pass of the previous one within the block, and the
// group's blocks wait for each other only a round later (their rows' statistics are usually
// complete by then). Publishing: the slice's five values go to a ring slot in global memory (L2),
// the block takes a ticket on the row; the K-th merges the K slots in slice order (same bits
// whatever the arrival order), writes the row's statistics and raises the row's ready flag
// (2 row + 1). K = 1 keeps its statistics in registers and publishes nothing.
// Reverse KL and JSD (PG, the _pg kernels) need one more row-wide sum before their gradient:
// sum_i p_i g_i and sum_i p_i (double). Their finish of row j - 1 is two passes over the staged
// slice: the terms and the slice's two sums, published and merged as above (slots of two doubles;
// the K-th block writes pg = sum p g / sum p and raises the flag to 2 row + 2), then, once the
// group's pg is there, the gradient. That wait is within the round, a group-wide meeting, but the
// copy of row j is in flight meanwhile; the shared memory and the grid are the KL kernel's, so one
// plan serves every divergence. Without a gradient there is no second sum and no meeting.
// Deadlock-free given co-residency: round j's statistics of a block wait only on its own copy;
// finishing row j - 1 waits first on the group's statistics of round j - 1, which come before any
// block's wait in round j, then (PG) on the group's pg sums of row j - 1, which every block
// publishes after that first wait and before any further one. Two rounds of ring suffice: a block
// writes round j + 2's slots after it finished row j + 1, which waited for every group block's
// round j + 1 statistics, which each block computes after it finished row j, the last reader of
// round j's slots (and pg's arrivals reset precedes its flag, which every block waited for).
// Ring, in the partials scratch from float ring0 = 2 M on (M = the host's largest grid: past every
// regime's loss partials, which a launch of another regime overwrites); R = 2 G / K ring rows, row
// r in ring row r % R, R <= 2 M. Flags (u32) at fixed places whatever G and K: arrivals [2 M] from
// ring0, ready [2 M] after them; then slice statistics [R][K][5] floats, row statistics [R][5],
// and (PG) pg slots [R][K][2] doubles and row pg [R] doubles, 8-byte aligned because 5 R (K + 1)
// is even (R is). In all R (9 K + 7) <= 25 G floats past the flags for K >= 2: within
// DistillKernels.SCRATCH_FLOATS_PER_BLOCK. Arrivals are reset by each merging block (a row's
// statistics, then its pg), ready flags by the finishing block, so every flag is zero between
// launches (the statistics need not be: a launch with another G or K lays them out differently,
// which is why the flags have places of their own), and the launch replays in a graph.
template <typename T, bool PG>
__device__ __forceinline__ void d4j_kd_split(const T* s, const T* __restrict__ t, const int64_t* __restrict__ labels, int64_t rows, int64_t cols,
                                             int div, float temperature, float alpha, float beta, int64_t ignore,
                                             unsigned long long* __restrict__ counters, float normalizer, float* __restrict__ partials,
                                             float* __restrict__ loss, int nout, T* grad, int64_t chunk, int64_t ring0) {
    extern __shared__ float4 d4j_kd_smem[];
    __shared__ float row5[5];  // K > 1: the statistics of the row being finished
    __shared__ double rowPg;   // K > 1, PG: the group's pg of the row being finished
    // K = 1: the statistics of the row to finish next, in every thread's registers (the block
    // reductions give every thread the results; shared memory would need one more barrier)
    float held[5];
    const D4jKd k = d4j_kd(div, temperature, alpha, beta, labels != nullptr, cols);
    const int K = (int)((cols + chunk - 1) / chunk);
    const int G = (int)gridDim.x, perRound = G / K, R = 2 * perRound;
    const int group = (int)blockIdx.x / K, slice = (int)blockIdx.x % K;
    const int64_t lo = (int64_t)slice * chunk, n = min(cols, lo + chunk) - lo;  // this block's slice [lo, lo + n); n >= 1
    const int64_t M = ring0 / 2;
    unsigned* arrivals = reinterpret_cast<unsigned*>(partials + ring0);  // [R] of [2 M]
    unsigned* ready = arrivals + 2 * M;                                   // [R] of [2 M]
    float* sliceStats = partials + ring0 + 4 * M;                         // [R][K][5]
    float* rowStats = sliceStats + (int64_t)R * K * 5;                    // [R][5]
    double* pgSlots = reinterpret_cast<double*>(rowStats + (int64_t)R * 5);  // PG: [R][K][2] (5 R (K + 1) floats before: even)
    double* pgRows = pgSlots + (int64_t)R * K * 2;                            // PG: [R]
    const float norm = d4j_normalizer(normalizer, labels, rows, cols, ignore, counters), scale = 1.f / norm;
    float dsum = 0.f, hsum = 0.f;  // this thread's share of sum D and of sum -log softmax(s)[y], over its rows in order
    T* const buffers = reinterpret_cast<T*>(d4j_kd_smem);  // buffer b: [student slice | teacher slice] at 2 * chunk * b
    // Row r's slice into buffer b (cp.async, or complete on return when unaligned); rows that do
    // not count are not copied.
    auto stage = [&](int64_t r, int b) {
        int64_t yy;
        if (d4j_row_status(labels, r, cols, ignore, yy) != 0) return;
        T* ss = buffers + 2 * chunk * b;
        d4j_stage_async<T>(ss, ss + chunk, s + r * cols + lo, t + r * cols + lo, n);
    };
    // f(i, s[W], t[W]) over the thread's elements of buffer b (W = 4 when vec, else 1)
    auto each = [&](int b, bool vec, auto&& f) {
        const T* ss = buffers + 2 * chunk * b;
        d4j_each_staged<T>(ss, ss + chunk, n, vec, f);
    };
    // The ring's protocol, the same for a row's statistics and (PG) its pg sums. Warp 0 takes the
    // block's ticket on the row once thread 0 has written its slot: true in the K-th block, which
    // then reads every slot, merges them and (thread 0) raises the row's flag to a tag (2 r + 1:
    // statistics ready; 2 r + 2: pg ready), resetting the arrivals for the next use. Thread 0 of
    // every block awaits the tag before it reads the merged values.
    auto takeTicket = [&](int ring) -> bool {
        bool last = false;
        if (threadIdx.x == 0) {
            __threadfence();  // the slot is visible device-wide before the ticket says so
            last = atomicAdd(&arrivals[ring], 1u) == (unsigned)(K - 1);
        }
        if (!__shfl_sync(0xffffffffu, last, 0)) return false;
        __threadfence();  // the K-th reads the other slots after their tickets
        return true;
    };
    auto raiseFlag = [&](int ring, unsigned tag) {
        arrivals[ring] = 0u;  // every ticket of this row is taken
        __threadfence();      // the merged values are visible device-wide before the flag says so
        *reinterpret_cast<volatile unsigned*>(&ready[ring]) = tag;
    };
    auto awaitFlag = [&](int ring, unsigned tag) {
        const volatile unsigned* flag = &ready[ring];
        while (*flag != tag) __nanosleep(32);
        __threadfence();  // read the merged values after the flag
    };
    // Row r's slice statistics from buffer b, published (K > 1) or kept in held (K = 1).
    auto statistics = [&](int64_t r, int b) {
        int64_t y;
        if (d4j_row_status(labels, r, cols, ignore, y) != 0) return;  // the same in every thread and every block of the group
        float mx[2] = {-INFINITY, -INFINITY};
        each(b, n % 4 == 0, [&](int, const auto& sv, const auto& tv) {
            constexpr int W = sizeof(sv) / sizeof(float);
#pragma unroll
            for (int j = 0; j < W; j++) {
                mx[0] = fmaxf(mx[0], sv[j]);
                mx[1] = fmaxf(mx[1], tv[j]);
            }
        });
        d4j_block_reduce<2, true>(mx);
        // sums relative to the slice's own maxima (0 for a slice with no finite value: a top-k teacher)
        const float rs = mx[0] == -INFINITY ? 0.f : mx[0], rt = mx[1] == -INFINITY ? 0.f : mx[1];
        float sum[3] = {0.f, 0.f, 0.f};
        each(b, n % 4 == 0, [&](int, const auto& sv, const auto& tv) {
            constexpr int W = sizeof(sv) / sizeof(float);
#pragma unroll
            for (int j = 0; j < W; j++) d4j_kd_sums(k, rs, rt, sv[j], tv[j], sum[0], sum[1], sum[2]);
        });
        d4j_block_reduce<3, false>(sum);
        if (K == 1) {  // the row's statistics, kept for its finish next round
            held[0] = mx[0];
            held[1] = mx[1];
            held[2] = sum[0];
            held[3] = sum[1];
            held[4] = sum[2];
            return;
        }
        if (threadIdx.x >= 32) return;
        const int ring = (int)(r % R);
        if (threadIdx.x == 0) {
            float* slot = sliceStats + ((int64_t)ring * K + slice) * 5;
            slot[0] = mx[0];
            slot[1] = mx[1];
            slot[2] = sum[0];
            slot[3] = sum[1];
            slot[4] = sum[2];
        }
        if (!takeTicket(ring)) return;
        // The K-th block: merge the slices in slice order (each lane its slices q = lane, lane + 32,
        // ... in order, then a fixed shuffle tree), as d4j_cluster_merge does for a cluster.
        const float* slots = sliceStats + (int64_t)ring * K * 5;
        float m0 = -INFINITY, m1 = -INFINITY;
        for (int q = threadIdx.x; q < K; q += 32) {
            m0 = fmaxf(m0, __ldcg(&slots[q * 5]));
            m1 = fmaxf(m1, __ldcg(&slots[q * 5 + 1]));
        }
        const float M0 = d4j_warp_max(m0), M1 = d4j_warp_max(m1);
        float A = 0.f, B = 0.f, C = 0.f;
        for (int q = threadIdx.x; q < K; q += 32) {
            const float qs = __ldcg(&slots[q * 5]), qt = __ldcg(&slots[q * 5 + 1]);
            if (qs != -INFINITY) {
                A += __ldcg(&slots[q * 5 + 2]) * expf((qs - M0) * k.invT);
                C += __ldcg(&slots[q * 5 + 4]) * expf(qs - M0);
            }
            if (qt != -INFINITY) B += __ldcg(&slots[q * 5 + 3]) * expf((qt - M1) * k.invT);
        }
        A = d4j_warp_sum(A);
        B = d4j_warp_sum(B);
        C = d4j_warp_sum(C);
        if (threadIdx.x == 0) {
            float* out = rowStats + ring * 5;
            out[0] = M0;
            out[1] = M1;
            out[2] = A;
            out[3] = B;
            out[4] = C;
            raiseFlag(ring, (unsigned)(2 * r + 1));
        }
    };
    // PG, K > 1: this slice's (sum p g, sum p) published for row r; returns the group's pg, the
    // same in every thread. The K-th block to arrive merges the slots in slice order.
    auto groupPg = [&](int64_t r, const double (&v)[2]) -> double {
        const int ring = (int)(r % R);
        if (threadIdx.x < 32) {
            if (threadIdx.x == 0) {
                double* slot = pgSlots + ((int64_t)ring * K + slice) * 2;
                slot[0] = v[0];
                slot[1] = v[1];
            }
            if (takeTicket(ring)) {
                const double* slots = pgSlots + (int64_t)ring * K * 2;
                double a = 0.0, b = 0.0;
                for (int q = threadIdx.x; q < K; q += 32) {
                    a += __ldcg(&slots[q * 2]);
                    b += __ldcg(&slots[q * 2 + 1]);
                }
                a = d4j_warp_sum(a);
                b = d4j_warp_sum(b);
                if (threadIdx.x == 0) {
                    pgRows[ring] = b > 0.0 ? a / b : 0.0;
                    raiseFlag(ring, (unsigned)(2 * r + 2));
                }
            }
            if (threadIdx.x == 0) {
                awaitFlag(ring, (unsigned)(2 * r + 2));
                rowPg = __ldcg(&pgRows[ring]);
            }
        }
        __syncthreads();
        return rowPg;
    };
    // Row r's divergence terms and gradient from buffer b, once the group's statistics are complete.
    auto finish = [&](int64_t r, int b) {
        const int64_t base = r * cols;
        int64_t y;
        const int status = d4j_row_status(labels, r, cols, ignore, y);
        if (status != 0) {
            if (grad) for (int64_t i = threadIdx.x; i < n; i += blockDim.x) grad[base + lo + i] = d4j_to<T>(0.f);
            if (status == 2 && threadIdx.x == 0 && slice == 0) dsum = hsum = __int_as_float(0x7fc00000);
            return;
        }
        float st5[5];  // unrolled with constant indices: registers, not a stack frame
        if (K > 1) {
            const int ring = (int)(r % R);
            if (threadIdx.x == 0) {
                awaitFlag(ring, (unsigned)(2 * r + 1));
#pragma unroll
                for (int j = 0; j < 5; j++) row5[j] = __ldcg(&rowStats[ring * 5 + j]);
            }
            __syncthreads();
#pragma unroll
            for (int j = 0; j < 5; j++) st5[j] = row5[j];
        } else {
#pragma unroll
            for (int j = 0; j < 5; j++) st5[j] = held[j];
        }
        const float ms = st5[0], mt = st5[1];
        const D4jRow st = {ms, mt, logf(st5[2]), logf(st5[3]), logf(st5[4])};
        if constexpr (PG) {
            // Element by element (W = 1) in both passes: four-wide, ptxas interleaved four
            // elements' double-precision logs and took 105 registers on sm_90 (spilling on sm_120)
            // instead of 64, which halves the resident blocks.
            double pgs[2] = {0.0, 0.0};  // sum p g and sum p of the slice, then of the row
            each(b, false, [&](int i, const auto& sv, const auto& tv) {
                constexpr int W = sizeof(sv) / sizeof(float);
#pragma unroll
                for (int j = 0; j < W; j++) {
                    if (k.hard && lo + i + j == y) hsum -= (sv[j] - ms) - st.lse1;
                    d4j_kd_term<true>(k, st, sv[j], tv[j], dsum, pgs[0], pgs[1]);
                }
            });
            if (!grad) return;
            d4j_block_reduce<2, false>(pgs);
            const double pg = K > 1 ? groupPg(r, pgs) : pgs[1] > 0.0 ? pgs[0] / pgs[1] : 0.0;
            each(b, false, [&](int i, const auto& sv, const auto& tv) {
                constexpr int W = sizeof(sv) / sizeof(float);
                float g[W];
#pragma unroll
                for (int j = 0; j < W; j++) g[j] = d4j_kd_grad(k, st, sv[j], tv[j], lo + i + j == y, pg, scale);
                d4j_store<T>(grad + base + lo + i, g);
            });
            return;
        }
        const bool vec = n % 4 == 0 && (!grad || (((uintptr_t)(grad + base + lo)) & (4 * sizeof(T) - 1)) == 0);
        each(b, vec, [&](int i, const auto& sv, const auto& tv) {
            constexpr int W = sizeof(sv) / sizeof(float);
            float g[W];
#pragma unroll
            for (int j = 0; j < W; j++) {
                const int64_t c = lo + i + j;
                if (k.hard && c == y) hsum -= (sv[j] - ms) - st.lse1;
                if (grad) g[j] = d4j_kd_term_grad(k, st, sv[j], tv[j], c == y, scale, dsum);
                else {
                    double unused0 = 0.0, unused1 = 0.0;
                    d4j_kd_term<false>(k, st, sv[j], tv[j], dsum, unused0, unused1);
                }
            }
            if (grad) d4j_store<T>(grad + base + lo + i, g);
        });
    };
    int b = 0;
    int64_t previous = -1;
    for (int64_t r = group; r < rows; r += perRound, b ^= 1) {
        stage(r, b);
        __pipeline_commit();
        if (previous >= 0) finish(previous, b ^ 1);
        __pipeline_wait_prior(0);
        __syncthreads();  // this row's slice is complete, and every thread is done with the previous row's statistics
        statistics(r, b);
        previous = r;
    }
    if (previous >= 0) finish(previous, b ^ 1);
    float acc[2] = {dsum, hsum};
    d4j_block_reduce<2, false>(acc);
    d4j_kd_finish(k.softWeight * acc[0], (1.f - alpha) * acc[1], partials, counters, norm, loss, nout, ready, K > 1 ? R : 0);
}

// Blocks of at most 256 threads (DistillKernels.SPLIT_THREADS). KL / MSE: 54-57 registers on
// sm_80..sm_90, four 256-thread blocks an SM (the default plan: 2,048 fp32 columns a slice, 32 KiB
// of shared memory a block); sm_100+ as the block kernels (a bound of 2 blocks held sm_120 to 64
// registers and spilled). Reverse KL / JSD (_pg): 64 on sm_80..sm_90; on sm_100+ bounded at 256
// threads, not 512: under 512 ptxas for sm_120 needed ~130 of its 128 and spilled.
// `staged` carries the ring's offset in the partials scratch (the slices are always whole).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1000
#define D4J_KD_SPLIT_PG_BOUNDS __launch_bounds__(256, 1)
#else
#define D4J_KD_SPLIT_PG_BOUNDS __launch_bounds__(256)
#endif
#define D4J_KD_SPLIT(NAME, T) \
    extern "C" __global__ void D4J_KD_BLOCK_BOUNDS NAME(D4J_KD_PARAMS(T)) { d4j_kd_split<T, false>(D4J_KD_ARGS, chunk, staged); } \
    extern "C" __global__ void D4J_KD_SPLIT_PG_BOUNDS NAME##_pg(D4J_KD_PARAMS(T)) { d4j_kd_split<T, true>(D4J_KD_ARGS, chunk, staged); }
D4J_KD_SPLIT(d4j_kd_split_f32, float)
D4J_KD_SPLIT(d4j_kd_split_bf16, __nv_bfloat16)

// dense [rows, cols] = -inf, then dense[r, idx[r, j]] = val[r, j]; out-of-range indices are skipped
// and flagged in flag[0] (checked by the host).
extern "C" __global__ void d4j_fill_neg_inf(float* __restrict__ dense, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) dense[i] = -INFINITY;
}

extern "C" __global__ void d4j_scatter_topk(const int64_t* __restrict__ idx, const float* __restrict__ val, float* __restrict__ dense,
                                            int64_t k, int64_t cols, int64_t n, int* __restrict__ flag) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / k, c = idx[i];
        if (c < 0 || c >= cols) { flag[0] = 1; continue; }
        dense[r * cols + c] = val[i];
    }
}

// Several teachers: acc [rows, cols] accumulates log mean softmax(t_i / T) one teacher at a time in
// log space (acc = logaddexp(acc, log softmax(t_i / T)); the first teacher initialises it). With
// last != 0, the result T (acc - log k) is written to out (which may be acc). One block per row.
extern "C" __global__ void d4j_teacher_accumulate(const float* __restrict__ t, float* acc, float* out, int64_t cols, float temperature,
                                                  int first, int last, int teachers) {
    const int64_t base = blockIdx.x * cols;
    const float invT = 1.f / temperature;
    float m = -INFINITY;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, t[base + c]);
    m = d4j_block_max(m);
    float s = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += expf((t[base + c] - m) * invT);
    s = d4j_block_sum(s);
    const float lse = logf(s), logK = logf((float)teachers);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = (t[base + c] - m) * invT - lse;
        if (!first) {
            float a = acc[base + c], hi = fmaxf(a, v);
            v = hi == -INFINITY ? -INFINITY : hi + log1pf(expf(-fabsf(a - v)));
        }
        if (last) out[base + c] = temperature * (v - logK);
        else acc[base + c] = v;
    }
}
