// Kernels behind org.distill4j.core.cuda.CudaBackend's ops. Shapes are in the comments; every
// buffer is float32 unless named otherwise; counts are int64_t; grids are grid-stride or one
// block per row (blockDim.x = D4J_BLOCK). Arithmetic follows CpuBackend, the oracle.
#include "common.cuh"

#define GRID_STRIDE(i, n) for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

// ---- bias: y [outer, features, inner] += bias[features]
extern "C" __global__ void d4j_bias_add(float* __restrict__ y, const float* __restrict__ bias,
                                        int64_t features, int64_t inner, int64_t n) {
    GRID_STRIDE(i, n) { y[i] += bias[(i / inner) % features]; }
}

// dbias[c] (+)= sum over outer and inner of dy [outer, features, inner]; one block per feature.
extern "C" __global__ void d4j_bias_grad(const float* __restrict__ dy, float* __restrict__ dbias, int64_t outer,
                                         int64_t features, int64_t inner, int accumulate) {
    int64_t c = blockIdx.x;
    float s = 0.f;
    for (int64_t k = threadIdx.x; k < outer * inner; k += blockDim.x) {
        int64_t o = k / inner, i = k % inner;
        s += dy[(o * features + c) * inner + i];
    }
    s = d4j_block_sum(s);
    if (threadIdx.x == 0) dbias[c] = accumulate ? dbias[c] + s : s;
}

// ---- activations (kind: 0 relu, 1 leaky relu, 2 gelu, 3 gelu tanh, 4 tanh, 5 sigmoid; the Activation enum order)
__device__ __forceinline__ float d4j_act(int kind, float slope, float x) {
    switch (kind) {
        case 0: return x > 0.f ? x : 0.f;
        case 1: return x > 0.f ? x : slope * x;
        case 2: return 0.5f * x * erfcf(-x * 0.70710678118654752f);
        case 3: return 0.5f * x * (1.f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
        case 4: return tanhf(x);
        default: return 1.f / (1.f + expf(-x));
    }
}

__device__ __forceinline__ float d4j_act_grad(int kind, float slope, float x, float y) {
    switch (kind) {
        case 0: return x > 0.f ? 1.f : 0.f;
        case 1: return x > 0.f ? 1.f : slope;
        case 2: return 0.5f * erfcf(-x * 0.70710678118654752f) + x * 0.39894228040143268f * expf(-0.5f * x * x);
        case 3: {
            float t = tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x));
            return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * 0.79788456080286536f * (1.f + 3.f * 0.044715f * x * x);
        }
        case 4: return 1.f - y * y;
        default: return y * (1.f - y);
    }
}

extern "C" __global__ void d4j_activation(int kind, float slope, const float* __restrict__ x, float* __restrict__ y, int64_t n) {
    GRID_STRIDE(i, n) { y[i] = d4j_act(kind, slope, x[i]); }
}

extern "C" __global__ void d4j_activation_backward(int kind, float slope, const float* __restrict__ x, const float* __restrict__ y,
                                                   const float* __restrict__ dy, float* __restrict__ dx, int64_t n) {
    GRID_STRIDE(i, n) { dx[i] = d4j_act_grad(kind, slope, x[i], y[i]) * dy[i]; }
}

// ---- softmax over rows of x [rows, cols]; one block per row. log != 0: log-softmax.
extern "C" __global__ void d4j_softmax(const float* __restrict__ x, float* __restrict__ y, int64_t cols, int log) {
    const float* xr = x + blockIdx.x * cols;
    float* yr = y + blockIdx.x * cols;
    float m = -FLT_MAX;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, xr[c]);
    m = d4j_block_max(m);
    float s = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += expf(xr[c] - m);
    s = d4j_block_sum(s);
    float logS = logf(s), inv = 1.f / s;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float z = xr[c] - m;
        yr[c] = log ? z - logS : expf(z) * inv;
    }
}

// softmax: dx = y (dy - sum(dy y)); log-softmax: dx = dy - exp(y) sum(dy).
extern "C" __global__ void d4j_softmax_backward(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx,
                                                int64_t cols, int log) {
    int64_t base = blockIdx.x * cols;
    float s = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += log ? dy[base + c] : dy[base + c] * y[base + c];
    s = d4j_block_sum(s);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float yv = y[base + c], g = dy[base + c];
        dx[base + c] = log ? g - expf(yv) * s : yv * (g - s);
    }
}

// ---- cross-entropy. Pass 1: count rows whose label is not ignore_index; flag labels out of range.
// counts[0] (int64) = counted rows, counts[1] (int64) = 1 + first bad row, or 0.
extern "C" __global__ void d4j_ce_count(const int64_t* __restrict__ labels, int64_t rows, int64_t classes, int64_t ignore,
                                        unsigned long long* __restrict__ counts) {
    GRID_STRIDE(r, rows) {
        int64_t y = labels[r];
        if (y == ignore) continue;
        if (y < 0 || y >= classes) atomicCAS(&counts[1], 0ull, (unsigned long long)(r + 1));
        else atomicAdd(&counts[0], 1ull);
    }
}

// Pass 2, one block per row: rowLoss[r] = (1-eps) nll(y) + eps mean_c nll(c); grad (optional) = (p - target) / count.
extern "C" __global__ void d4j_ce_rows(const float* __restrict__ x, const int64_t* __restrict__ labels, int64_t classes,
                                       int64_t ignore, float eps, const unsigned long long* __restrict__ counts,
                                       float* __restrict__ rowLoss, float* __restrict__ grad) {
    int64_t r = blockIdx.x, base = r * classes;
    int64_t y = labels[r];
    bool skip = y == ignore || y < 0 || y >= classes;
    if (skip) {
        if (grad) for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) grad[base + c] = 0.f;
        if (threadIdx.x == 0) rowLoss[r] = (y == ignore) ? 0.f : __int_as_float(0x7fc00000);
        return;
    }
    float m = -FLT_MAX;
    for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) m = fmaxf(m, x[base + c]);
    m = d4j_block_max(m);
    float s = 0.f, sz = 0.f;
    for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) {
        float z = x[base + c] - m;
        s += expf(z);
        sz += z;
    }
    s = d4j_block_sum(s);
    sz = d4j_block_sum(sz);
    float logS = logf(s);
    if (threadIdx.x == 0) {
        float nllTarget = -((x[base + y] - m) - logS);
        float nllMean = -(sz / (float)classes - logS);
        rowLoss[r] = (1.f - eps) * nllTarget + eps * nllMean;
    }
    __syncthreads();  // grad may be x itself (in place): x[base + y] is read above before anyone overwrites it
    if (grad) {
        float scale = 1.f / (float)counts[0];
        for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) {
            float p = expf(x[base + c] - m - logS);
            float target = (c == y ? 1.f - eps : 0.f) + eps / (float)classes;
            grad[base + c] = (p - target) * scale;
        }
    }
}

// Pass 3, one block: loss[0] = sum(rowLoss) / count (NaN when no row counts or a label was out of range).
extern "C" __global__ void d4j_ce_finish(const float* __restrict__ rowLoss, int64_t rows, const unsigned long long* __restrict__ counts,
                                         float* __restrict__ loss) {
    float s = 0.f;
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) s += rowLoss[r];
    s = d4j_block_sum(s);
    if (threadIdx.x == 0) loss[0] = (counts[0] == 0 || counts[1] != 0) ? __int_as_float(0x7fc00000) : s / (float)counts[0];
}

// ---- reductions (kind: 0 sum, 1 mean, 2 max; the Reduction enum order)
extern "C" __global__ void d4j_reduce_rows(int kind, const float* __restrict__ x, float* __restrict__ out, int64_t cols) {
    int64_t base = blockIdx.x * cols;
    float v = kind == 2 ? -FLT_MAX : 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) v = kind == 2 ? fmaxf(v, x[base + c]) : v + x[base + c];
    v = kind == 2 ? d4j_block_max(v) : d4j_block_sum(v);
    if (threadIdx.x == 0) out[blockIdx.x] = kind == 1 ? v / (float)cols : v;
}

extern "C" __global__ void d4j_reduce_cols(int kind, const float* __restrict__ x, float* __restrict__ out, int64_t rows, int64_t cols) {
    GRID_STRIDE(c, cols) {
        float v = kind == 2 ? -FLT_MAX : 0.f;
        for (int64_t r = 0; r < rows; r++) v = kind == 2 ? fmaxf(v, x[r * cols + c]) : v + x[r * cols + c];
        out[c] = kind == 1 ? v / (float)rows : v;
    }
}

// ---- elementwise binary (op: 0 add, 1 mul)
extern "C" __global__ void d4j_binary(int op, const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out, int64_t n) {
    GRID_STRIDE(i, n) { out[i] = op == 0 ? a[i] + b[i] : a[i] * b[i]; }
}

// ---- classification: one block per row; first maximum wins, NaN counts as largest (as the CPU).
__device__ __forceinline__ void d4j_better(float v, int64_t i, float& bv, int64_t& bi) {
    bool vnan = v != v, bnan = bv != bv;
    if ((vnan && !bnan) || (!vnan && !bnan && v > bv) || ((v == bv || (vnan && bnan)) && i < bi)) { bv = v; bi = i; }
}

__device__ int64_t d4j_block_argmax(const float* __restrict__ xr, int64_t cols) {
    __shared__ float sv[D4J_BLOCK];
    __shared__ int64_t si[D4J_BLOCK];
    float bv = -INFINITY;
    int64_t bi = INT64_MAX;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) d4j_better(xr[c], c, bv, bi);
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float v = sv[threadIdx.x];
            int64_t i = si[threadIdx.x];
            d4j_better(sv[threadIdx.x + s], si[threadIdx.x + s], v, i);
            sv[threadIdx.x] = v;
            si[threadIdx.x] = i;
        }
        __syncthreads();
    }
    int64_t r = si[0];
    __syncthreads();
    return r == INT64_MAX ? 0 : r;
}

extern "C" __global__ void d4j_argmax(const float* __restrict__ x, int64_t* __restrict__ out, int64_t cols) {
    int64_t best = d4j_block_argmax(x + blockIdx.x * cols, cols);
    if (threadIdx.x == 0) out[blockIdx.x] = best;
}

extern "C" __global__ void d4j_correct_count(const float* __restrict__ x, const int64_t* __restrict__ labels, int64_t cols,
                                             int64_t ignore, unsigned long long* __restrict__ out) {
    int64_t best = d4j_block_argmax(x + blockIdx.x * cols, cols);
    int64_t y = labels[blockIdx.x];
    if (threadIdx.x == 0 && y != ignore && best == y) atomicAdd(out, 1ull);
}

// ---- random: dropout (y = x * keep / (1 - p)) and uniform fill, Philox-driven
extern "C" __global__ void d4j_dropout(float p, uint64_t seed, uint64_t offset, const float* __restrict__ x, float* __restrict__ y, int64_t n) {
    float scale = 1.f / (1.f - p);
    GRID_STRIDE(i, n) { y[i] = d4j_philox_uniform(seed, offset + (uint64_t)i) >= p ? x[i] * scale : 0.f; }
}

extern "C" __global__ void d4j_uniform(float low, float high, uint64_t seed, uint64_t offset, float* __restrict__ x, int64_t n) {
    // _rn intrinsics: no multiply-add contraction, so the bits match the CPU's low + (high - low) * u.
    GRID_STRIDE(i, n) { x[i] = __fadd_rn(low, __fmul_rn(high - low, d4j_philox_uniform(seed, offset + (uint64_t)i))); }
}

// ---- global average pooling backward: dx [planes, hw] = dy[plane] / hw
extern "C" __global__ void d4j_broadcast_mean_grad(const float* __restrict__ dy, float* __restrict__ dx, int64_t hw, int64_t n) {
    GRID_STRIDE(i, n) { dx[i] = dy[i / hw] / (float)hw; }
}

// ---- optimizers, one launch per parameter tensor
// SGD: d = g + wd p; buf = first ? d : momentum buf + (1 - dampening) d; d = nesterov ? d + momentum buf : buf; p -= lr d.
// With scalars != NULL, lr and first come from device memory (scalars[0] = lr, scalars[1] = first as
// 0/1), so that a captured CUDA graph can be replayed with a new learning rate each step.
extern "C" __global__ void d4j_sgd(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf, float lr,
                                   float momentum, float dampening, int nesterov, float wd, int first, int64_t n,
                                   const float* __restrict__ scalars) {
    if (scalars != nullptr) {
        lr = scalars[0];
        first = scalars[1] != 0.f;
    }
    GRID_STRIDE(i, n) {
        float d = g[i] + wd * p[i];
        if (momentum != 0.f) {
            float b = first ? d : momentum * buf[i] + (1.f - dampening) * d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        p[i] -= lr * d;
    }
}

// AdamW: p *= decay; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr (m / bc1) / (sqrt(v / bc2) + eps).
// With scalars != NULL, [lr, decay, bc1, bc2] come from device memory (see d4j_sgd).
extern "C" __global__ void d4j_adamw(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                                     float lr, float b1, float b2, float eps, float decay, float bc1, float bc2, int64_t n,
                                     const float* __restrict__ scalars) {
    if (scalars != nullptr) {
        lr = scalars[0];
        decay = scalars[1];
        bc1 = scalars[2];
        bc2 = scalars[3];
    }
    GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi = b1 * m[i] + (1.f - b1) * gi;
        float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    }
}

// counter[0] += 1 (int64; batch norm's num_batches_tracked, kept on the device so a graph replay counts).
extern "C" __global__ void d4j_increment_i64(int64_t* counter) {
    if (blockIdx.x == 0 && threadIdx.x == 0) counter[0] += 1;
}

// out[r, :] = table[idx[r], :] as float32, for r < rows; table is float32 (bf16 = 0) or bfloat16 (bf16 = 1).
// A teacher-logit cache lookup; idx[r] outside [0, tableRows) writes a row of NaN, so a bad index cannot
// pass silently and nothing has to be read back.
extern "C" __global__ void d4j_gather_rows(const void* __restrict__ table, int bf16, const int64_t* __restrict__ idx, float* __restrict__ out,
                                           int64_t rows, int64_t cols, int64_t tableRows) {
    GRID_STRIDE(i, rows * cols) {
        int64_t r = i / cols, c = i - r * cols, src = idx[r];
        if (src < 0 || src >= tableRows) {
            out[i] = __int_as_float(0x7fc00000);
            continue;
        }
        if (bf16) {
            uint32_t bits = (uint32_t)((const uint16_t*)table)[src * cols + c] << 16;
            out[i] = __uint_as_float(bits);
        } else {
            out[i] = ((const float*)table)[src * cols + c];
        }
    }
}

// ---- NaN/Inf check: flag[0] = 1 when any element is not finite
extern "C" __global__ void d4j_nonfinite(const float* __restrict__ x, int64_t n, int* __restrict__ flag) {
    GRID_STRIDE(i, n) {
        if (!isfinite(x[i])) flag[0] = 1;
    }
}
