// The decoder's own kernels (org.distill4j.core.lm.CudaDecoderOps), each the GPU twin of a function
// of org.distill4j.core.lm.DecoderOps (the CPU oracle), forward and backward. Conventions as ops.cu:
// extern "C", int64_t counts, float32 activations and gradients; N = B * T token rows.
//
// Launch shapes (bindings/.../kernels/DecoderKernels.java):
//   elementwise kernels: grid-stride over the elements;
//   row kernels (norms, attention softmax): one warp a row, D4J_BLOCK / 32 rows a block, blocks
//     striding over the rows. A warp reduces with shuffles alone (no shared memory, no
//     __syncthreads), and rows as narrow as a 64-wide head do not leave 7/8 of a block idle.
//
// Determinism: no float atomics anywhere. The norm weight/bias gradients are reduced in two passes
// (per-chunk partial sums over a fixed number of rows, then one thread a column summing the
// partials in order); the chunk size depends on nothing but the host's choice, so two runs give the
// same bits on any GPU. The embedding backward gives each table row to one thread block (a bucket
// list of the token rows that use it, built on the host, where the token ids already are).
//
// bf16 weights (a frozen bf16 model) enter in two places: the token table (d4j_embedding_forward_bf16
// widens each value exactly) and the projections (cublasGemmEx on x rounded by d4j_f32_to_bf16);
// norm weights, positions, activations, statistics and every gradient stay float32.
#include "common.cuh"

#define D4J_ROWS_PER_BLOCK (D4J_BLOCK / 32)
#define D4J_GRID_STRIDE(i, n) for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)
// One warp a row: `row` is uniform across the warp, so every lane reaches every shuffle.
#define D4J_WARP_ROWS(row, n)                                                                                  \
    for (int64_t row = (int64_t)blockIdx.x * D4J_ROWS_PER_BLOCK + (threadIdx.x >> 5); row < (n);            \
         row += (int64_t)gridDim.x * D4J_ROWS_PER_BLOCK)

// (d4j_dec_: distill_loss.cu, in the same translation unit, has its own d4j_warp_sum)
__device__ __forceinline__ float d4j_dec_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float d4j_dec_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ---- embeddings

// A table's element widened to float32: a float as it is, a bfloat16 (its bits the float's upper half)
// exactly, as DecoderOps' Bf16.toFloat.
__device__ __forceinline__ float d4j_dec_widen(const float* t, int64_t i) { return t[i]; }
__device__ __forceinline__ float d4j_dec_widen(const uint16_t* t, int64_t i) { return __uint_as_float((uint32_t)t[i] << 16); }

// out [N, D] = wte [V, D] row ids[r] (+ wpe [P, D] row positions[r] when wpe != NULL), the table's
// value widened to float first, then one float add (as DecoderOps.embeddingForward). An id outside
// [0, V) or a position outside [0, P) writes a row of NaN: a bad token cannot pass silently, and
// nothing is read back to check it (the host checks ids before upload; this is the second line).
template <typename Table>
__device__ __forceinline__ void d4j_embedding_gather(float* __restrict__ out, const int64_t* __restrict__ ids, const int64_t* __restrict__ positions,
                                                     const Table* __restrict__ wte, const float* __restrict__ wpe, int64_t rows, int64_t d,
                                                     int64_t vocab, int64_t maxPositions) {
    D4J_GRID_STRIDE(i, rows * d) {
        int64_t r = i / d, c = i - r * d, id = ids[r];
        bool bad = id < 0 || id >= vocab;
        float v = bad ? 0.f : d4j_dec_widen(wte, id * d + c);
        if (wpe != nullptr) {
            int64_t p = positions[r];
            if (p < 0 || p >= maxPositions) bad = true;
            else v += wpe[p * d + c];
        }
        out[i] = bad ? __int_as_float(0x7fc00000) : v;
    }
}

// The gather over a float32 token table.
extern "C" __global__ void d4j_embedding_forward(float* __restrict__ out, const int64_t* __restrict__ ids, const int64_t* __restrict__ positions,
                                                 const float* __restrict__ wte, const float* __restrict__ wpe, int64_t rows, int64_t d,
                                                 int64_t vocab, int64_t maxPositions) {
    d4j_embedding_gather(out, ids, positions, wte, wpe, rows, d, vocab, maxPositions);
}

// The gather over a bfloat16 token table (a frozen bf16 model's wte, [V, D] packed bf16); learned
// positions stay float32 and the output is float32, as the CPU's bf16 decoder.
extern "C" __global__ void d4j_embedding_forward_bf16(float* __restrict__ out, const int64_t* __restrict__ ids, const int64_t* __restrict__ positions,
                                                      const uint16_t* __restrict__ wte, const float* __restrict__ wpe, int64_t rows, int64_t d,
                                                      int64_t vocab, int64_t maxPositions) {
    d4j_embedding_gather(out, ids, positions, wte, wpe, rows, d, vocab, maxPositions);
}

// dtable [rows of the table, D] += the rows of dout [N, D] that gathered each table row.
// Deterministic scatter-add without atomics and without a device sort: the host (which holds the ids)
// groups the token rows by table row, stable, into a bucket list:
//   owners [U]: the distinct table rows used, starts [U + 1]: bucket u is order[starts[u], starts[u+1]),
//   order [N]: token rows, ascending within a bucket.
// One block owns one table row (blocks stride over the buckets), a thread a column; it adds the bucket's
// rows in ascending order onto the table's value, the same float additions in the same order as
// DecoderOps.embeddingBackward, so the result is bit-identical to the CPU's. Used for wte (by ids) and
// for wpe (by positions). Rows of the table no token uses are not touched.
extern "C" __global__ void d4j_embedding_backward(float* __restrict__ dtable, const float* __restrict__ dout, const int64_t* __restrict__ order,
                                                  const int64_t* __restrict__ starts, const int64_t* __restrict__ owners, int64_t buckets,
                                                  int64_t d) {
    for (int64_t u = blockIdx.x; u < buckets; u += gridDim.x) {
        int64_t begin = starts[u], end = starts[u + 1];
        float* dst = dtable + owners[u] * d;
        for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
            float s = dst[c];
            for (int64_t k = begin; k < end; k++) s += dout[order[k] * d + c];
            dst[c] = s;
        }
    }
}

// ---- LayerNorm over rows of x [N, D]: out = (x - mean) rstd w + b, rstd = 1 / sqrt(var + eps), biased
// var by two passes (mean first, then sum (x - mean)^2: no cancellation). mean, rstd [N] saved when
// not NULL; b may be NULL.
extern "C" __global__ void d4j_layernorm_forward(float* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                                                 const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                                                 int64_t n, int64_t d, float eps) {
    int lane = threadIdx.x & 31;
    D4J_WARP_ROWS(row, n) {
        const float* xr = x + row * d;
        float s = 0.f;
        for (int64_t j = lane; j < d; j += 32) s += xr[j];
        float m = d4j_dec_warp_sum(s) / (float)d;
        float v = 0.f;
        for (int64_t j = lane; j < d; j += 32) {
            float c = xr[j] - m;
            v += c * c;
        }
        float r = rsqrtf(d4j_dec_warp_sum(v) / (float)d + eps);
        float* o = out + row * d;
        for (int64_t j = lane; j < d; j += 32) o[j] = (xr[j] - m) * r * w[j] + (b != nullptr ? b[j] : 0.f);
        if (lane == 0) {
            if (mean != nullptr) mean[row] = m;
            if (rstd != nullptr) rstd[row] = r;
        }
    }
}

// dx [N, D] (accumulate: +=) = rstd (g - mean(g) - xhat mean(g xhat)), g = w dout, xhat = (x - mean) rstd.
// dx may be dout itself (each lane reads its elements before it writes them).
extern "C" __global__ void d4j_layernorm_backward_dx(float* dx, const float* dout, const float* __restrict__ x,
                                                     const float* __restrict__ w, const float* __restrict__ mean,
                                                     const float* __restrict__ rstd, int64_t n, int64_t d, int accumulate) {
    int lane = threadIdx.x & 31;
    D4J_WARP_ROWS(row, n) {
        const float* xr = x + row * d;
        const float* dr = dout + row * d;
        float m = mean[row], r = rstd[row], gs = 0.f, gxs = 0.f;
        for (int64_t j = lane; j < d; j += 32) {
            float g = w[j] * dr[j];
            gs += g;
            gxs += g * (xr[j] - m) * r;
        }
        float gMean = d4j_dec_warp_sum(gs) / (float)d, gxMean = d4j_dec_warp_sum(gxs) / (float)d;
        float* o = dx + row * d;
        for (int64_t j = lane; j < d; j += 32) {
            float xhat = (xr[j] - m) * r;
            float v = r * (w[j] * dr[j] - gMean - xhat * gxMean);
            o[j] = accumulate ? o[j] + v : v;
        }
    }
}

// ---- RMSNorm over rows of width D: row (r, h) starts at x[r * stride + h * D] for r < N, h < heads
// (heads = 1, stride = D: the hidden norm; heads > 1: Qwen3's per-head q/k norm over the q | k | v
// buffer, one row a token and head). out = w * (x rstd), the product x rstd rounded to float before w
// multiplies (as transformers); rstd [heads, N] = 1 / sqrt(mean(x^2) + eps), index h * N + r.
extern "C" __global__ void d4j_rmsnorm_forward(float* __restrict__ out, float* __restrict__ rstd, const float* __restrict__ x,
                                               const float* __restrict__ w, int64_t n, int64_t heads, int64_t d, int64_t stride, float eps) {
    int lane = threadIdx.x & 31;
    D4J_WARP_ROWS(row, n * heads) {
        int64_t h = row / n, r = row - h * n, o = r * stride + h * d;
        float ss = 0.f;
        for (int64_t j = lane; j < d; j += 32) ss += x[o + j] * x[o + j];
        float s = rsqrtf(d4j_dec_warp_sum(ss) / (float)d + eps);
        for (int64_t j = lane; j < d; j += 32) out[o + j] = w[j] * (x[o + j] * s);
        if (lane == 0 && rstd != nullptr) rstd[row] = s;
    }
}

// dx = rstd g - x rstd^3 mean(g x), g = w dout (accumulate: +=); rows as the forward. dx may be dout.
extern "C" __global__ void d4j_rmsnorm_backward_dx(float* dx, const float* dout, const float* __restrict__ x, const float* __restrict__ w,
                                                   const float* __restrict__ rstd, int64_t n, int64_t heads, int64_t d, int64_t stride,
                                                   int accumulate) {
    int lane = threadIdx.x & 31;
    D4J_WARP_ROWS(row, n * heads) {
        int64_t h = row / n, r = row - h * n, o = r * stride + h * d;
        float s = rstd[row], gx = 0.f;
        for (int64_t j = lane; j < d; j += 32) gx += w[j] * dout[o + j] * x[o + j];
        gx = d4j_dec_warp_sum(gx) / (float)d;
        for (int64_t j = lane; j < d; j += 32) {
            float v = s * w[j] * dout[o + j] - x[o + j] * s * s * s * gx;
            dx[o + j] = accumulate ? dx[o + j] + v : v;
        }
    }
}

// ---- the norms' weight (and bias) gradients, deterministic in two passes.
// Pass 1: block p sums rows [p * chunk, min((p + 1) * chunk, rows)) of its columns, one thread a column,
// rows in ascending order, into partial [P, D] (and partial [P, D] + P * D for LayerNorm's bias):
//   kind 0 LayerNorm: dw += dout xhat, db += dout (rows of x [N, D], mean/rstd [N]);
//   kind 1 RMSNorm:   dw += dout x rstd          (rows (r, h) as d4j_rmsnorm_forward, rows = N * heads).
// Must run before a dx kernel that overwrites dout in place.
extern "C" __global__ void d4j_norm_param_grad_partial(int kind, float* __restrict__ partial, const float* __restrict__ dout,
                                                       const float* __restrict__ x, const float* __restrict__ mean,
                                                       const float* __restrict__ rstd, int64_t n, int64_t heads, int64_t d, int64_t stride,
                                                       int64_t chunk) {
    int64_t rows = n * heads, chunks = (rows + chunk - 1) / chunk;
    for (int64_t p = blockIdx.x; p < chunks; p += gridDim.x) {
        int64_t first = p * chunk, last = first + chunk < rows ? first + chunk : rows;
        for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
            float sw = 0.f, sb = 0.f;
            for (int64_t row = first; row < last; row++) {
                int64_t h = row / n, r = row - h * n, o = r * stride + h * d + c;
                float dy = dout[o];
                if (kind == 0) {
                    sw += dy * (x[o] - mean[row]) * rstd[row];
                    sb += dy;
                } else {
                    sw += dy * x[o] * rstd[row];
                }
            }
            partial[p * d + c] = sw;
            if (kind == 0) partial[chunks * d + p * d + c] = sb;
        }
    }
}

// Pass 2: dw[c] += sum over p of partial[p, c] (in order of p); db likewise from the second half when
// db != NULL (LayerNorm with a bias).
extern "C" __global__ void d4j_norm_param_grad_finish(const float* __restrict__ partial, int64_t chunks, int64_t d, float* __restrict__ dw,
                                                      float* __restrict__ db) {
    D4J_GRID_STRIDE(c, d) {
        float s = 0.f;
        for (int64_t p = 0; p < chunks; p++) s += partial[p * d + c];
        dw[c] += s;
        if (db != nullptr) {
            float t = 0.f;
            for (int64_t p = 0; p < chunks; p++) t += partial[chunks * d + p * d + c];
            db[c] += t;
        }
    }
}

// ---- rotary embeddings (rotate-half pairing, as transformers and DecoderOps.rope)

// cos, sin [N, half]: angle = (float) positions[r] * invFreq[j] in float32, as transformers computes
// its tables (llama3 / linear scaling is already in invFreq, computed on the host).
extern "C" __global__ void d4j_rope_tables(float* __restrict__ cosT, float* __restrict__ sinT, const int64_t* __restrict__ positions,
                                           const float* __restrict__ invFreq, int64_t n, int64_t half) {
    D4J_GRID_STRIDE(i, n * half) {
        int64_t r = i / half, j = i - r * half;
        float angle = (float)positions[r] * invFreq[j];
        cosT[i] = cosf(angle);
        sinT[i] = sinf(angle);
    }
}

// In place on `heads` heads of width 2 * half from column col of x [N, stride]: (a, b) = (x[j],
// x[j + half]) becomes (a cos - b sin, b cos + a sin); inverse != 0 rotates by -angle (the backward:
// a rotation's transpose is its inverse). One thread a pair.
extern "C" __global__ void d4j_rope(float* __restrict__ x, int64_t col, int64_t stride, int64_t n, int64_t heads,
                                    const float* __restrict__ cosT, const float* __restrict__ sinT, int64_t half, int inverse) {
    float sign = inverse ? -1.f : 1.f;
    D4J_GRID_STRIDE(i, n * heads * half) {
        int64_t j = i % half, rh = i / half, h = rh % heads, r = rh / heads;
        int64_t o = r * stride + col + h * 2 * half + j;
        float c = cosT[r * half + j], s = sign * sinT[r * half + j];
        float a = x[o], b = x[o + half];
        x[o] = a * c - b * s;
        x[o + half] = b * c + a * s;
    }
}

// ---- attention probabilities: rows (b, h, i) of scores / probs [B, H, tq, tk]. Query i sits at
// absolute position past + i and sees key j when j <= past + i and keyMask[b * tk + j] != 0 (keyMask
// int64 [B, tk], NULL: every key real; padding on either side). probs = softmax(scale * scores) over
// the visible keys, 0 elsewhere; a query that sees no key gets a row of zeros. probs may be scores.
extern "C" __global__ void d4j_attention_softmax(float* probs, const float* scores, const int64_t* __restrict__ keyMask, int64_t batch,
                                                 int64_t heads, int64_t tq, int64_t tk, int64_t past, float scale) {
    int lane = threadIdx.x & 31;
    D4J_WARP_ROWS(row, batch * heads * tq) {
        int64_t i = row % tq, b = row / (heads * tq);
        const float* s = scores + row * tk;
        float* p = probs + row * tk;
        const int64_t* mask = keyMask != nullptr ? keyMask + b * tk : nullptr;
        int64_t visibleEnd = past + i + 1 < tk ? past + i + 1 : tk;  // keys past the causal limit are never visible
        float m = -INFINITY;
        for (int64_t j = lane; j < visibleEnd; j += 32) {
            if (mask == nullptr || mask[j] != 0) m = fmaxf(m, scale * s[j]);
        }
        m = d4j_dec_warp_max(m);
        float sum = 0.f;
        for (int64_t j = lane; j < visibleEnd; j += 32) {
            if (mask == nullptr || mask[j] != 0) sum += expf(scale * s[j] - m);
        }
        sum = d4j_dec_warp_sum(sum);
        float inv = sum > 0.f ? 1.f / sum : 0.f;  // m = -inf (nothing visible): sum = 0, a row of zeros
        for (int64_t j = lane; j < tk; j += 32) {
            bool visible = j < visibleEnd && (mask == nullptr || mask[j] != 0);
            p[j] = visible ? expf(scale * s[j] - m) * inv : 0.f;
        }
    }
}

// dscores = scale * probs (dprobs - sum_j dprobs probs), rows as the forward (masked entries have
// probs 0, so their gradient is 0). dscores may be dprobs.
extern "C" __global__ void d4j_attention_softmax_backward(float* dscores, const float* dprobs, const float* __restrict__ probs, int64_t rows,
                                                          int64_t tk, float scale) {
    int lane = threadIdx.x & 31;
    D4J_WARP_ROWS(row, rows) {
        const float* p = probs + row * tk;
        const float* dp = dprobs + row * tk;
        float dot = 0.f;
        for (int64_t j = lane; j < tk; j += 32) dot += dp[j] * p[j];
        dot = d4j_dec_warp_sum(dot);
        float* o = dscores + row * tk;
        for (int64_t j = lane; j < tk; j += 32) o[j] = scale * p[j] * (dp[j] - dot);
    }
}

// ---- MLP activations

#define D4J_SQRT_2_OVER_PI 0.79788456080286536f

// out = gelu_tanh(x) (GPT-2's gelu_new), count values.
extern "C" __global__ void d4j_gelu_tanh_forward(float* __restrict__ out, const float* __restrict__ x, int64_t count) {
    D4J_GRID_STRIDE(e, count) {
        float v = x[e];
        out[e] = 0.5f * v * (1.f + tanhf(D4J_SQRT_2_OVER_PI * (v + 0.044715f * v * v * v)));
    }
}

// dx = gelu_tanh'(x) dout. dx may be dout.
extern "C" __global__ void d4j_gelu_tanh_backward(float* dx, const float* dout, const float* __restrict__ x, int64_t count) {
    D4J_GRID_STRIDE(e, count) {
        float v = x[e], t = tanhf(D4J_SQRT_2_OVER_PI * (v + 0.044715f * v * v * v));
        float grad = 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * D4J_SQRT_2_OVER_PI * (1.f + 3.f * 0.044715f * v * v);
        dx[e] = grad * dout[e];
    }
}

// out [N, F] = silu(gate) * up from gateUp [N, 2F] (gate in columns [0, F), up in [F, 2F)).
extern "C" __global__ void d4j_swiglu_forward(float* __restrict__ out, const float* __restrict__ gateUp, int64_t n, int64_t features) {
    D4J_GRID_STRIDE(i, n * features) {
        int64_t r = i / features, j = i - r * features;
        float g = gateUp[r * 2 * features + j], u = gateUp[r * 2 * features + features + j];
        out[i] = g / (1.f + expf(-g)) * u;
    }
}

// dgateUp [N, 2F]: dgate = dout up silu'(gate), dup = dout silu(gate); silu'(g) = s (1 + g (1 - s)), s = sigmoid(g).
extern "C" __global__ void d4j_swiglu_backward(float* __restrict__ dgateUp, const float* __restrict__ dout, const float* __restrict__ gateUp,
                                               int64_t n, int64_t features) {
    D4J_GRID_STRIDE(i, n * features) {
        int64_t r = i / features, j = i - r * features, gi = r * 2 * features + j;
        float g = gateUp[gi], u = gateUp[gi + features], dy = dout[i];
        float s = 1.f / (1.f + expf(-g));
        dgateUp[gi] = dy * u * s * (1.f + g * (1.f - s));
        dgateUp[gi + features] = dy * g * s;
    }
}

// ---- projections (the gemm itself is cuBLAS: CudaDecoderOps.projectionForward/Backward)

// out [rows, cols] bfloat16, packed = x's rows [rows, cols] (row stride ldX) rounded to nearest even;
// NaN stays NaN (quiet). The activations' side of a bf16 cublasGemmEx, whose A and B share one type;
// also a float32 master weight's bf16 copy (ldX = cols).
extern "C" __global__ void d4j_f32_to_bf16(uint16_t* __restrict__ out, const float* __restrict__ x, int64_t rows, int64_t cols, int64_t ldX) {
    D4J_GRID_STRIDE(i, rows * cols) {
        int64_t r = i / cols, c = i - r * cols;
        uint32_t u = __float_as_uint(x[r * ldX + c]);
        out[i] = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40u) : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}

// y's rows [rows, cols] (row stride ld) += b [cols]: a projection's bias on its columns of a wider buffer.
extern "C" __global__ void d4j_bias_add_strided(float* __restrict__ y, const float* __restrict__ b, int64_t rows, int64_t cols, int64_t ld) {
    D4J_GRID_STRIDE(i, rows * cols) {
        int64_t r = i / cols, c = i - r * cols;
        y[r * ld + c] += b[c];
    }
}

// db [cols] += column sums of dy's rows [rows, cols] (row stride ld): one thread a column, rows in
// order (deterministic; neighbouring threads read neighbouring columns).
extern "C" __global__ void d4j_bias_grad_strided(float* __restrict__ db, const float* __restrict__ dy, int64_t rows, int64_t cols, int64_t ld) {
    D4J_GRID_STRIDE(c, cols) {
        float s = 0.f;
        for (int64_t r = 0; r < rows; r++) s += dy[r * ld + c];
        db[c] += s;
    }
}
