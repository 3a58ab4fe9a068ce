// The fused distillation loss (docs/distillation-loss.md): per row of student logits s and teacher
// logits t [rows, cols], with a = s/T, b = t/T, p = softmax(a), q = softmax(b):
//   terms[r] = { alpha T^2 D(q, p), (1 - alpha) CE(s, y) },   grad[r] = dL/ds / normalizer
// One block per row. When the two rows fit in shared memory (2 * cols * 4 bytes <= 48 KiB) they
// are staged there with 16-byte loads and global memory is read once; larger rows are re-read
// from global memory by each pass. Arithmetic in fp32 in shifted log space:
// log p = (s - max s) / T - log sum exp((s - max s) / T), which stays exact for logits of +-1e4.
#include "common.cuh"

// div: 0 KL(q||p), 1 KL(p||q), 2 JSD_beta, 3 MSE of logits (the Divergence enum order; JSD at
// beta 0 / 1 arrives here already mapped to KL / reverse KL by the host).
extern "C" __global__ void d4j_distill_rows(const float* __restrict__ s, const float* __restrict__ t, const int64_t* __restrict__ labels,
                                            int64_t cols, int div, float temperature, float alpha, float beta, int64_t ignore, int stage,
                                            const unsigned long long* __restrict__ counts, float normalizer,
                                            float* __restrict__ terms, float* grad) {
    extern __shared__ float4 staged4[];
    float* staged = reinterpret_cast<float*>(staged4);
    const int64_t r = blockIdx.x, base = r * cols;
    const int64_t y = labels ? labels[r] : -1;
    const bool ignored = labels && y == ignore;
    const bool bad = labels && !ignored && (y < 0 || y >= cols);
    if (ignored || bad) {
        if (grad) for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) grad[base + c] = 0.f;
        if (threadIdx.x == 0) {
            terms[2 * r] = bad ? __int_as_float(0x7fc00000) : 0.f;
            terms[2 * r + 1] = 0.f;
        }
        return;
    }
    const float* sr = s + base;
    const float* tr = t + base;
    if (stage) {
        // 16-byte loads when the row starts 16-byte aligned and cols is a multiple of 4.
        if ((cols & 3) == 0 && ((reinterpret_cast<uintptr_t>(sr) | reinterpret_cast<uintptr_t>(tr)) & 15) == 0) {
            const float4* s4 = reinterpret_cast<const float4*>(sr);
            const float4* t4 = reinterpret_cast<const float4*>(tr);
            for (int64_t c = threadIdx.x; c < cols / 4; c += blockDim.x) {
                staged4[c] = s4[c];
                staged4[cols / 4 + c] = t4[c];
            }
        } else {
            for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
                staged[c] = sr[c];
                staged[cols + c] = tr[c];
            }
        }
        __syncthreads();
        sr = staged;
        tr = staged + cols;
    }
    const float invT = 1.f / temperature;
    const bool hardTerm = labels && alpha < 1.f;
    // Pass 1: row maxima (of the raw logits: the same argmax as at any T > 0).
    float ms = -INFINITY, mt = -INFINITY;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        ms = fmaxf(ms, sr[c]);
        mt = fmaxf(mt, tr[c]);
    }
    ms = d4j_block_max(ms);
    mt = d4j_block_max(mt);
    // Pass 2: the three sums of exponentials (a, b, and s at T = 1 for cross-entropy).
    float sa = 0.f, sb = 0.f, s1 = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float zs = sr[c] - ms;
        sa += expf(zs * invT);
        sb += expf((tr[c] - mt) * invT);
        if (hardTerm) s1 += expf(zs);
    }
    sa = d4j_block_sum(sa);
    sb = d4j_block_sum(sb);
    s1 = d4j_block_sum(s1);
    const float lseA = logf(sa), lseB = logf(sb), lse1 = logf(s1);
    const float log1mBeta = log1pf(-beta), logBeta = logf(beta);
    // Pass 3: the divergence, and sum_i p_i g_i for reverse KL and JSD's gradients.
    float d = 0.f, pg = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float logP = (sr[c] - ms) * invT - lseA, logQ = (tr[c] - mt) * invT - lseB;
        float p = expf(logP), q = expf(logQ);
        if (div == 0) {
            if (q > 0.f) d += q * (logQ - logP);
        } else if (div == 1) {
            float g = logP - logQ;
            if (p > 0.f) d += p * g;
            pg += p * g;
        } else if (div == 2) {
            float a = log1mBeta + logP, b = logBeta + logQ, m = fmaxf(a, b);
            float logM = m == -INFINITY ? -INFINITY : m + log1pf(expf(-fabsf(a - b)));
            if (q > 0.f) d += beta * q * (logQ - logM);
            if (p > 0.f) d += (1.f - beta) * p * (logP - logM);
            pg += p * (1.f - beta) * (logP - logM);
        } else {
            float diff = (sr[c] - tr[c]) * invT;
            d += diff * diff / (float)cols;
        }
    }
    d = d4j_block_sum(d);
    if (div == 1 || div == 2) pg = d4j_block_sum(pg);
    // The hard term reads s[y]; read it before the gradient pass can overwrite s (in place, unstaged).
    if (threadIdx.x == 0) {
        terms[2 * r] = alpha * temperature * temperature * d;
        terms[2 * r + 1] = hardTerm ? (1.f - alpha) * -((sr[y] - ms) - lse1) : 0.f;
    }
    __syncthreads();
    if (grad) {
        const float norm = normalizer > 0.f ? normalizer : (float)counts[0];
        const float scale = 1.f / norm, kSoft = alpha * temperature;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            float sv = sr[c], tv = tr[c];
            float logP = (sv - ms) * invT - lseA, logQ = (tv - mt) * invT - lseB;
            float p = expf(logP), q = expf(logQ), dd;
            if (div == 0) {
                dd = p - q;
            } else if (div == 1) {
                dd = p * ((logP - logQ) - pg);
            } else if (div == 2) {
                float a = log1mBeta + logP, b = logBeta + logQ, m = fmaxf(a, b);
                float logM = m == -INFINITY ? -INFINITY : m + log1pf(expf(-fabsf(a - b)));
                dd = p * ((1.f - beta) * (logP - logM) - pg);
            } else {
                dd = 2.f * (sv - tv) * invT / (float)cols;
            }
            float g = kSoft * dd;
            if (hardTerm) g += (1.f - alpha) * (expf(sv - ms - lse1) - (c == y ? 1.f : 0.f));
            grad[base + c] = g * scale;  // in place over s is safe: sv was read above (staged or not, same index)
        }
    }
}

// One block: loss[0..nout) = { soft + hard, soft, hard } summed over rows and divided by the
// normalizer (or counts[0]); NaN when a label was out of range or nothing counted.
extern "C" __global__ void d4j_distill_finish(const float* __restrict__ terms, int64_t rows, const unsigned long long* __restrict__ counts,
                                              float normalizer, float* __restrict__ loss, int nout) {
    float soft = 0.f, hard = 0.f;
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
        soft += terms[2 * r];
        hard += terms[2 * r + 1];
    }
    soft = d4j_block_sum(soft);
    hard = d4j_block_sum(hard);
    if (threadIdx.x == 0) {
        float norm = normalizer > 0.f ? normalizer : (float)counts[0];
        bool invalid = counts[1] != 0 || norm == 0.f;
        float nan = __int_as_float(0x7fc00000);
        loss[0] = invalid ? nan : (soft + hard) / norm;
        if (nout == 3) {
            loss[1] = invalid ? nan : soft / norm;
            loss[2] = invalid ? nan : hard / norm;
        }
    }
}

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
