// Every decoder kernel of decoder.cu runs on the CPU emulation of CUDA (include/cuda_emu.h) against a
// float64 reference of the same formula as org.distill4j.core.lm.DecoderOps (the CPU oracle):
// embedding gather (+ learned positions, a bad id and a bad position give NaN rows) and its bucketed
// scatter-add (also bit for bit against DecoderOps' float additions), the gather over a bf16 token
// table (each value widened exactly, learned positions float32; bit for bit), LayerNorm and RMSNorm forward
// and backward (hidden rows, and Qwen3's strided per-head rows; dx apart, accumulated and in place;
// the two-pass weight/bias gradients at several chunk sizes), the RoPE tables and rotation forward and
// inverse, the masked causal softmax and its backward (no mask, left and right padding, a KV-cache
// offset, single-token decoding, rows that see no key), GELU-tanh and SwiGLU forward and backward,
// and the projections' helpers (float32 -> bf16 rounding, ties and NaN included; a strided bias and its gradient).
// Random inputs, odd sizes. Each kernel is launched twice with different grids and must give the same
// bits (determinism: no result may depend on the launch geometry). Built and run by run.sh.
// Bounds: max |got - ref| <= tol * max(1, max |ref|), tol 2e-5 unless a check says otherwise (fp32
// arithmetic against float64).
// What it cannot check: speed, and the attention products (cuBLAS, GQA's head mapping), which only
// the GPU tests (tests/.../GpuDecoderOpsTest) reach.
#include <cmath>
#include <cstring>
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }  // CUDA intrinsics; the emulation's stand-ins
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
#include "decoder.cu"
#include "emu_watchdog.h"
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unistd.h>

namespace {
int failures = 0, checks = 0;

// The progress watchdog (include/emu_watchdog.h).
EmuWatchdog watchdog;

std::mt19937_64 rng(20261206);

std::vector<float> randoms(size_t n, float lo = -1.f, float hi = 1.f) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
}

template <typename F> void launch(unsigned grid, F body) { emuLaunch(grid, D4J_BLOCK, 0, body); }

// got against a float64 reference: max |got - ref| <= tol * max(1, max |ref|). NaN in ref means NaN expected.
void close(const std::string& what, const std::vector<float>& got, const std::vector<double>& ref, double tol = 2e-5) {
    checks++;
    double scale = 1, worst = 0;
    size_t at = 0;
    for (double r : ref) if (!std::isnan(r)) scale = std::max(scale, std::fabs(r));
    for (size_t i = 0; i < ref.size(); i++) {
        double e = std::isnan(ref[i]) ? (std::isnan(got[i]) ? 0 : INFINITY) : (std::isnan(got[i]) ? INFINITY : std::fabs(got[i] - ref[i]));
        if (e > worst) { worst = e; at = i; }
    }
    if (worst > tol * scale || got.size() != ref.size()) {
        failures++;
        std::printf("FAIL %s: max error %.3g at %zu (got %.9g, want %.9g; bound %.3g)\n", what.c_str(), worst, at, got[at], ref[at], tol * scale);
    }
}

void same(const std::string& what, const std::vector<float>& a, const std::vector<float>& b) {
    checks++;
    if (a.size() != b.size() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) != 0) {
        failures++;
        std::printf("FAIL %s: not bit-identical\n", what.c_str());
    }
}

void run(const std::string& name, const std::function<void()>& body) {
    watchdog.begin(name);
    int before = failures;
    body();
    watchdog.end();
    std::printf("%s %s\n", failures == before ? "ok  " : "FAIL", name.c_str());
}

// ---- embeddings
void embedding(int64_t n, int64_t d, int64_t vocab, int64_t maxPos, bool learnedPositions, bool badId) {
    char nm[160];
    std::snprintf(nm, sizeof nm, "embedding N=%lld D=%lld V=%lld%s%s", (long long)n, (long long)d, (long long)vocab,
                  learnedPositions ? " + positions" : "", badId ? ", a bad id and position" : "");
    run(nm, [&] {
        std::vector<int64_t> ids(n), pos(n);
        std::uniform_int_distribution<int64_t> uid(0, vocab - 1), upos(0, maxPos - 1);
        for (int64_t r = 0; r < n; r++) { ids[r] = uid(rng) % std::max<int64_t>(1, vocab / 2); pos[r] = upos(rng); }  // repeats
        if (badId) { ids[n / 2] = vocab; pos[n - 1] = -1; }
        auto wte = randoms(vocab * d), wpe = randoms(maxPos * d);
        std::vector<double> ref(n * d);
        for (int64_t r = 0; r < n; r++) {
            bool bad = ids[r] < 0 || ids[r] >= vocab || (learnedPositions && (pos[r] < 0 || pos[r] >= maxPos));
            for (int64_t c = 0; c < d; c++) {
                ref[r * d + c] = bad ? NAN : (double)wte[ids[r] * d + c] + (learnedPositions ? (double)wpe[pos[r] * d + c] : 0.0);
                if (!bad && learnedPositions) ref[r * d + c] = (float)(wte[ids[r] * d + c] + wpe[pos[r] * d + c]);  // one float add, as DecoderOps
            }
        }
        std::vector<float> out(n * d), out2(n * d);
        launch(3, [&] { d4j_embedding_forward(out.data(), ids.data(), pos.data(), wte.data(), learnedPositions ? wpe.data() : nullptr, n, d, vocab, maxPos); });
        launch(1, [&] { d4j_embedding_forward(out2.data(), ids.data(), pos.data(), wte.data(), learnedPositions ? wpe.data() : nullptr, n, d, vocab, maxPos); });
        close("embedding forward", out, ref, 0);
        same("embedding forward, 1 block vs 3", out, out2);
        if (badId) return;
        // backward: the bucket list as CudaDecoderOps builds it (token rows grouped by table row, stable)
        auto dout = randoms(n * d);
        auto buckets = [&](const std::vector<int64_t>& key, std::vector<int64_t>& order, std::vector<int64_t>& starts, std::vector<int64_t>& owners) {
            order.resize(n);
            for (int64_t r = 0; r < n; r++) order[r] = r;
            std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key[a] < key[b]; });
            starts.clear();
            owners.clear();
            for (int64_t k = 0; k < n; k++) {
                if (k == 0 || key[order[k]] != key[order[k - 1]]) { starts.push_back(k); owners.push_back(key[order[k]]); }
            }
            starts.push_back(n);
        };
        for (int which = 0; which < (learnedPositions ? 2 : 1); which++) {
            const auto& key = which == 0 ? ids : pos;
            int64_t rows = which == 0 ? vocab : maxPos;
            auto table0 = randoms(rows * d);  // gradients accumulate onto what is there
            std::vector<int64_t> order, starts, owners;
            buckets(key, order, starts, owners);
            std::vector<float> cpu = table0, got = table0, got2 = table0;
            std::vector<double> ref(table0.begin(), table0.end());
            for (int64_t r = 0; r < n; r++) {
                for (int64_t c = 0; c < d; c++) {
                    cpu[key[r] * d + c] += dout[r * d + c];  // DecoderOps.embeddingBackward's float additions, in its order
                    ref[key[r] * d + c] += dout[r * d + c];
                }
            }
            int64_t u = (int64_t)owners.size();
            launch(2, [&] { d4j_embedding_backward(got.data(), dout.data(), order.data(), starts.data(), owners.data(), u, d); });
            launch(5, [&] { d4j_embedding_backward(got2.data(), dout.data(), order.data(), starts.data(), owners.data(), u, d); });
            std::string t = which == 0 ? "wte" : "wpe";
            close("embedding backward d" + t, got, ref);
            same("embedding backward d" + t + " vs DecoderOps' float additions", got, cpu);
            same("embedding backward d" + t + ", 2 blocks vs 5", got, got2);
        }
    });
}

// ---- the gather over a bfloat16 token table (a frozen bf16 model): wte [V, D] as bf16 bits, wpe
// float32. Reference: each bf16 widened exactly (its bits the float's upper half: DecoderOps' Bf16.toFloat)
// plus one float add of the position's value; exact (tolerance 0), NaN rows for a bad id or position.
// The table holds bf16 values of both signs, zeros, subnormals, the largest finite and infinities.
void embeddingBf16(int64_t n, int64_t d, int64_t vocab, int64_t maxPos, bool learnedPositions, bool badId) {
    char nm[160];
    std::snprintf(nm, sizeof nm, "embedding bf16 table N=%lld D=%lld V=%lld%s%s", (long long)n, (long long)d, (long long)vocab,
                  learnedPositions ? " + positions" : "", badId ? ", a bad id and position" : "");
    run(nm, [&] {
        std::vector<int64_t> ids(n), pos(n);
        std::uniform_int_distribution<int64_t> uid(0, vocab - 1), upos(0, maxPos - 1);
        for (int64_t r = 0; r < n; r++) { ids[r] = uid(rng); pos[r] = upos(rng); }
        if (badId) { ids[n / 2] = -1; pos[n - 1] = maxPos; }
        std::uniform_int_distribution<unsigned> bits(0, 0xffffu);
        std::vector<uint16_t> wte(vocab * d);
        for (auto& v : wte) {
            v = (uint16_t)bits(rng);
            if (((v >> 7) & 0xffu) == 0xffu) v &= 0x7f80u | 0x8000u;  // NaN patterns become infinities: the check compares values
        }
        const uint16_t specials[] = {0x0000, 0x8000, 0x0001, 0x807f, 0x7f7f, 0xff7f, 0x7f80, 0xff80, 0x3f80, 0xbf81};
        for (size_t k = 0; k < sizeof specials / sizeof *specials && k < wte.size(); k++) wte[ids[0] * d + k % d] = specials[k];
        auto wpe = randoms(maxPos * d);
        std::vector<double> ref(n * d);
        for (int64_t r = 0; r < n; r++) {
            bool bad = ids[r] < 0 || ids[r] >= vocab || (learnedPositions && (pos[r] < 0 || pos[r] >= maxPos));
            for (int64_t c = 0; c < d; c++) {
                if (bad) { ref[r * d + c] = NAN; continue; }
                unsigned u = (unsigned)wte[ids[r] * d + c] << 16;
                float w;
                std::memcpy(&w, &u, 4);
                ref[r * d + c] = learnedPositions ? (double)(float)(w + wpe[pos[r] * d + c]) : (double)w;  // one float add, as DecoderOps
            }
        }
        std::vector<float> out(n * d), out2(n * d);
        const float* wp = learnedPositions ? wpe.data() : nullptr;
        launch(3, [&] { d4j_embedding_forward_bf16(out.data(), ids.data(), pos.data(), wte.data(), wp, n, d, vocab, maxPos); });
        launch(1, [&] { d4j_embedding_forward_bf16(out2.data(), ids.data(), pos.data(), wte.data(), wp, n, d, vocab, maxPos); });
        // exact, infinities included (close() takes inf - inf as NaN: compare those by value here)
        checks++;
        int bad = 0;
        for (int64_t i = 0; i < n * d; i++) {
            bool ok = std::isnan(ref[i]) ? std::isnan(out[i]) : (double)out[i] == ref[i];
            if (!ok && bad++ < 3) std::printf("FAIL embedding bf16 at %lld: got %.9g, want %.9g\n", (long long)i, out[i], ref[i]);
        }
        if (bad) failures++;
        same("embedding bf16 forward, 1 block vs 3", out, out2);
        // the float32 kernel on the widened table gives the same bits (one gather, two table types)
        std::vector<float> wide(vocab * d), out3(n * d);
        for (size_t i = 0; i < wte.size(); i++) { unsigned u = (unsigned)wte[i] << 16; std::memcpy(&wide[i], &u, 4); }
        launch(2, [&] { d4j_embedding_forward(out3.data(), ids.data(), pos.data(), wide.data(), wp, n, d, vocab, maxPos); });
        same("embedding bf16 forward vs the float32 gather of the widened table", out, out3);
    });
}

// ---- LayerNorm
void layerNorm(int64_t n, int64_t d, bool bias) {
    char nm[120];
    std::snprintf(nm, sizeof nm, "layernorm N=%lld D=%lld%s", (long long)n, (long long)d, bias ? "" : ", no bias");
    run(nm, [&] {
        const float eps = 1e-5f;
        auto x = randoms(n * d, -2.f, 3.f), w = randoms(d, 0.5f, 1.5f), b = randoms(d), dout = randoms(n * d);
        std::vector<double> refOut(n * d), refMean(n), refRstd(n), refDx(n * d), refDw(d, 0.0), refDb(d, 0.0);
        for (int64_t r = 0; r < n; r++) {
            double s = 0, v = 0;
            for (int64_t j = 0; j < d; j++) s += x[r * d + j];
            double m = s / d;
            for (int64_t j = 0; j < d; j++) v += (x[r * d + j] - m) * (x[r * d + j] - m);
            double rs = 1 / std::sqrt(v / d + eps);
            refMean[r] = m;
            refRstd[r] = rs;
            double gm = 0, gxm = 0;
            for (int64_t j = 0; j < d; j++) {
                double xh = (x[r * d + j] - m) * rs, g = (double)w[j] * dout[r * d + j];
                refOut[r * d + j] = xh * w[j] + (bias ? b[j] : 0);
                gm += g;
                gxm += g * xh;
                refDw[j] += dout[r * d + j] * xh;
                refDb[j] += dout[r * d + j];
            }
            gm /= d;
            gxm /= d;
            for (int64_t j = 0; j < d; j++) {
                double xh = (x[r * d + j] - m) * rs;
                refDx[r * d + j] = rs * ((double)w[j] * dout[r * d + j] - gm - xh * gxm);
            }
        }
        std::vector<float> out(n * d), mean(n), rstd(n), out2(n * d);
        launch(2, [&] { d4j_layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), bias ? b.data() : nullptr, n, d, eps); });
        launch(1, [&] { d4j_layernorm_forward(out2.data(), nullptr, nullptr, x.data(), w.data(), bias ? b.data() : nullptr, n, d, eps); });
        close("layernorm out", out, refOut);
        close("layernorm mean", mean, refMean);
        close("layernorm rstd", rstd, refRstd);
        same("layernorm out, 1 block vs 2", out, out2);
        // dx apart, accumulated onto a buffer, and in place over dout
        std::vector<float> dx(n * d), dx2(n * d), acc = randoms(n * d), inPlace = dout;
        std::vector<double> refAcc(n * d);
        for (int64_t i = 0; i < n * d; i++) refAcc[i] = acc[i] + refDx[i];
        launch(3, [&] { d4j_layernorm_backward_dx(dx.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), n, d, 0); });
        launch(1, [&] { d4j_layernorm_backward_dx(dx2.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), n, d, 0); });
        launch(2, [&] { d4j_layernorm_backward_dx(acc.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), n, d, 1); });
        close("layernorm dx", dx, refDx, 1e-4);
        close("layernorm dx accumulated", acc, refAcc, 1e-4);
        same("layernorm dx, 1 block vs 3", dx, dx2);
        // dw, db: two passes at several chunk sizes, accumulated onto what is there
        for (int64_t chunk : {(int64_t)1, (int64_t)7, (int64_t)64}) {
            int64_t chunks = (n + chunk - 1) / chunk;
            auto dw0 = randoms(d), db0 = randoms(d);
            std::vector<float> partial(2 * chunks * d), dw = dw0, db = db0, dwB = dw0, dbB = db0;
            std::vector<double> rw(d), rb(d);
            for (int64_t j = 0; j < d; j++) { rw[j] = dw0[j] + refDw[j]; rb[j] = db0[j] + refDb[j]; }
            launch(2, [&] { d4j_norm_param_grad_partial(0, partial.data(), dout.data(), x.data(), mean.data(), rstd.data(), n, 1, d, d, chunk); });
            launch(1, [&] { d4j_norm_param_grad_finish(partial.data(), chunks, d, dw.data(), bias ? db.data() : nullptr); });
            launch(4, [&] { d4j_norm_param_grad_partial(0, partial.data(), dout.data(), x.data(), mean.data(), rstd.data(), n, 1, d, d, chunk); });
            launch(3, [&] { d4j_norm_param_grad_finish(partial.data(), chunks, d, dwB.data(), bias ? dbB.data() : nullptr); });
            std::string c = " (chunk " + std::to_string(chunk) + ")";
            close("layernorm dw" + c, dw, rw, 1e-4);
            same("layernorm dw, other grids" + c, dw, dwB);
            if (bias) {
                close("layernorm db" + c, db, rb, 1e-4);
                same("layernorm db, other grids" + c, db, dbB);
            } else {
                same("layernorm db untouched without a bias" + c, db, db0);
            }
        }
        launch(2, [&] { d4j_layernorm_backward_dx(inPlace.data(), inPlace.data(), x.data(), w.data(), mean.data(), rstd.data(), n, d, 0); });
        same("layernorm dx in place over dout", inPlace, dx);
    });
}

// ---- RMSNorm: rows (r, h) at x[r * stride + h * d]; heads = 1, stride = d is the hidden norm
void rmsNorm(int64_t n, int64_t heads, int64_t d, int64_t stride) {
    char nm[140];
    std::snprintf(nm, sizeof nm, "rmsnorm N=%lld heads=%lld D=%lld stride=%lld", (long long)n, (long long)heads, (long long)d, (long long)stride);
    run(nm, [&] {
        const float eps = 1e-6f;
        const int64_t size = (n - 1) * stride + heads * d;
        auto x = randoms(size, -2.f, 2.f), w = randoms(d, 0.5f, 1.5f), dout = randoms(size);
        std::vector<double> refOut(size, 0.0), refRstd(heads * n), refDx(size, 0.0), refDw(d, 0.0);
        std::vector<char> inRow(size, 0);
        for (int64_t h = 0; h < heads; h++) {
            for (int64_t r = 0; r < n; r++) {
                int64_t o = r * stride + h * d;
                double ss = 0, gx = 0;
                for (int64_t j = 0; j < d; j++) ss += (double)x[o + j] * x[o + j];
                double s = 1 / std::sqrt(ss / d + eps);
                refRstd[h * n + r] = s;
                for (int64_t j = 0; j < d; j++) {
                    refOut[o + j] = w[j] * (double)(float)(x[o + j] * s);  // x rstd rounded to float first, as transformers
                    gx += (double)w[j] * dout[o + j] * x[o + j];
                    refDw[j] += (double)dout[o + j] * x[o + j] * s;
                    inRow[o + j] = 1;
                }
                gx /= d;
                for (int64_t j = 0; j < d; j++) refDx[o + j] = s * w[j] * dout[o + j] - x[o + j] * s * s * s * gx;
            }
        }
        auto outside = [&](std::vector<float> v, const std::vector<float>& keep) {  // the columns between rows stay as they were
            for (int64_t i = 0; i < size; i++) if (!inRow[i]) v[i] = keep[i];
            return v;
        };
        std::vector<float> out0 = randoms(size), out = out0, out2 = out0, rstd(heads * n);
        launch(3, [&] { d4j_rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), n, heads, d, stride, eps); });
        launch(1, [&] { d4j_rmsnorm_forward(out2.data(), nullptr, x.data(), w.data(), n, heads, d, stride, eps); });
        std::vector<double> refOutFull(size);
        for (int64_t i = 0; i < size; i++) refOutFull[i] = inRow[i] ? refOut[i] : out0[i];
        close("rmsnorm out", out, refOutFull);
        close("rmsnorm rstd", rstd, refRstd);
        same("rmsnorm out, 1 block vs 3", out, out2);
        std::vector<float> dx0 = randoms(size), dx = dx0, dx2 = dx0, inPlace = dout;
        launch(2, [&] { d4j_rmsnorm_backward_dx(dx.data(), dout.data(), x.data(), w.data(), rstd.data(), n, heads, d, stride, 0); });
        launch(1, [&] { d4j_rmsnorm_backward_dx(dx2.data(), dout.data(), x.data(), w.data(), rstd.data(), n, heads, d, stride, 0); });
        std::vector<double> refDxFull(size), refAcc(size);
        for (int64_t i = 0; i < size; i++) { refDxFull[i] = inRow[i] ? refDx[i] : dx0[i]; refAcc[i] = dx0[i] + (inRow[i] ? refDx[i] : 0); }
        close("rmsnorm dx", dx, refDxFull, 1e-4);
        same("rmsnorm dx, 1 block vs 2", dx, dx2);
        std::vector<float> acc = dx0;
        launch(2, [&] { d4j_rmsnorm_backward_dx(acc.data(), dout.data(), x.data(), w.data(), rstd.data(), n, heads, d, stride, 1); });
        close("rmsnorm dx accumulated", acc, refAcc, 1e-4);
        for (int64_t chunk : {(int64_t)1, (int64_t)5, (int64_t)64}) {
            int64_t rows = n * heads, chunks = (rows + chunk - 1) / chunk;
            auto dw0 = randoms(d);
            std::vector<float> partial(chunks * d), dw = dw0, dwB = dw0;
            std::vector<double> rw(d);
            for (int64_t j = 0; j < d; j++) rw[j] = dw0[j] + refDw[j];
            launch(2, [&] { d4j_norm_param_grad_partial(1, partial.data(), dout.data(), x.data(), nullptr, rstd.data(), n, heads, d, stride, chunk); });
            launch(1, [&] { d4j_norm_param_grad_finish(partial.data(), chunks, d, dw.data(), nullptr); });
            launch(3, [&] { d4j_norm_param_grad_partial(1, partial.data(), dout.data(), x.data(), nullptr, rstd.data(), n, heads, d, stride, chunk); });
            launch(2, [&] { d4j_norm_param_grad_finish(partial.data(), chunks, d, dwB.data(), nullptr); });
            std::string c = " (chunk " + std::to_string(chunk) + ")";
            close("rmsnorm dw" + c, dw, rw, 1e-4);
            same("rmsnorm dw, other grids" + c, dw, dwB);
        }
        // in place (dx = dout), as DecoderModel's per-head norm backward runs it
        launch(2, [&] { d4j_rmsnorm_backward_dx(inPlace.data(), inPlace.data(), x.data(), w.data(), rstd.data(), n, heads, d, stride, 0); });
        same("rmsnorm dx in place over dout", inPlace, outside(dx, dout));
    });
}

// ---- RoPE
void rope(int64_t n, int64_t heads, int64_t half, int64_t col, int64_t stride) {
    char nm[140];
    std::snprintf(nm, sizeof nm, "rope N=%lld heads=%lld head_dim=%lld col=%lld stride=%lld", (long long)n, (long long)heads, (long long)(2 * half),
                  (long long)col, (long long)stride);
    run(nm, [&] {
        std::vector<int64_t> pos(n);
        for (int64_t r = 0; r < n; r++) pos[r] = 3 + (r * 7) % 50;  // positions as after a cache and with padding: not 0..N-1
        std::vector<float> invFreq(half);
        for (int64_t j = 0; j < half; j++) invFreq[j] = (float)std::pow(10000.0, -2.0 * j / (2.0 * half));
        std::vector<float> cosT(n * half), sinT(n * half), cos2(n * half), sin2(n * half);
        launch(2, [&] { d4j_rope_tables(cosT.data(), sinT.data(), pos.data(), invFreq.data(), n, half); });
        launch(1, [&] { d4j_rope_tables(cos2.data(), sin2.data(), pos.data(), invFreq.data(), n, half); });
        std::vector<double> rc(n * half), rs(n * half);
        for (int64_t r = 0; r < n; r++) {
            for (int64_t j = 0; j < half; j++) {
                float angle = (float)pos[r] * invFreq[j];  // float32, as transformers and DecoderOps.ropeTables
                rc[r * half + j] = std::cos((double)angle);
                rs[r * half + j] = std::sin((double)angle);
            }
        }
        close("rope cos table", cosT, rc, 1e-6);
        close("rope sin table", sinT, rs, 1e-6);
        same("rope tables, 1 block vs 2", cosT, cos2);
        auto x = randoms(n * stride);
        std::vector<double> ref(x.begin(), x.end());
        for (int64_t r = 0; r < n; r++) {
            for (int64_t h = 0; h < heads; h++) {
                int64_t o = r * stride + col + h * 2 * half;
                for (int64_t j = 0; j < half; j++) {
                    double c = cosT[r * half + j], s = sinT[r * half + j], a = x[o + j], b = x[o + j + half];
                    ref[o + j] = a * c - b * s;
                    ref[o + j + half] = b * c + a * s;
                }
            }
        }
        std::vector<float> y = x, y2 = x;
        launch(3, [&] { d4j_rope(y.data(), col, stride, n, heads, cosT.data(), sinT.data(), half, 0); });
        launch(1, [&] { d4j_rope(y2.data(), col, stride, n, heads, cosT.data(), sinT.data(), half, 0); });
        close("rope forward", y, ref, 1e-6);
        same("rope forward, 1 block vs 3", y, y2);
        // the inverse is the backward: the transpose of the rotation; applied to the output it gives x back
        launch(2, [&] { d4j_rope(y.data(), col, stride, n, heads, cosT.data(), sinT.data(), half, 1); });
        close("rope inverse of forward", y, std::vector<double>(x.begin(), x.end()), 1e-6);
    });
}

// ---- masked causal softmax over scores [B, H, tq, tk]
void attentionSoftmax(int64_t batch, int64_t heads, int64_t tq, int64_t tk, int64_t past, int padding /* 0 none, 1 left, 2 right */) {
    char nm[160];
    std::snprintf(nm, sizeof nm, "attention softmax B=%lld H=%lld tq=%lld tk=%lld past=%lld%s", (long long)batch, (long long)heads, (long long)tq,
                  (long long)tk, (long long)past, padding == 1 ? ", left padding" : padding == 2 ? ", right padding" : "");
    run(nm, [&] {
        const float scale = 1.f / std::sqrt(64.f);
        std::vector<int64_t> mask(batch * tk, 1);
        for (int64_t b = 0; b < batch; b++) {
            int64_t pads = padding == 0 ? 0 : std::min<int64_t>(tk - 1, b * 3 + 1 + (tk > 8 ? 2 : 0));  // a different pad count per sequence
            if (b == batch - 1 && padding == 1) pads = std::min<int64_t>(tk, past + 2);  // left: the first queries see only padding
            for (int64_t k = 0; k < pads; k++) mask[b * tk + (padding == 1 ? k : tk - 1 - k)] = 0;
        }
        const int64_t* m = padding == 0 ? nullptr : mask.data();
        const int64_t rows = batch * heads * tq;
        auto scores = randoms(rows * tk, -8.f, 8.f), dprobs = randoms(rows * tk);
        std::vector<double> ref(rows * tk, 0.0), refD(rows * tk, 0.0);
        std::vector<float> refProbsF(rows * tk);
        int zeroRows = 0;
        for (int64_t row = 0; row < rows; row++) {
            int64_t i = row % tq, b = row / (heads * tq);
            auto visible = [&](int64_t j) { return j <= past + i && (m == nullptr || m[b * tk + j] != 0); };
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < tk; j++) if (visible(j)) mx = std::max(mx, (double)scale * scores[row * tk + j]);
            for (int64_t j = 0; j < tk; j++) if (visible(j)) sum += std::exp((double)scale * scores[row * tk + j] - mx);
            if (sum == 0) zeroRows++;
            for (int64_t j = 0; j < tk; j++) ref[row * tk + j] = visible(j) ? std::exp((double)scale * scores[row * tk + j] - mx) / sum : 0;
        }
        std::vector<float> probs(rows * tk), probs2(rows * tk), inPlace = scores;
        launch(3, [&] { d4j_attention_softmax(probs.data(), scores.data(), m, batch, heads, tq, tk, past, scale); });
        launch(1, [&] { d4j_attention_softmax(probs2.data(), scores.data(), m, batch, heads, tq, tk, past, scale); });
        launch(2, [&] { d4j_attention_softmax(inPlace.data(), inPlace.data(), m, batch, heads, tq, tk, past, scale); });
        close("softmax probs", probs, ref, 1e-6);
        same("softmax probs, 1 block vs 3", probs, probs2);
        same("softmax probs in place over the scores", inPlace, probs);
        if (padding == 1) {
            checks++;
            if (zeroRows == 0) { failures++; std::printf("FAIL the left-padding case has no query that sees no key\n"); }
        }
        // backward from the kernel's own probabilities (the formula's check, not the forward's again)
        for (int64_t row = 0; row < rows; row++) {
            double dot = 0;
            for (int64_t j = 0; j < tk; j++) dot += (double)dprobs[row * tk + j] * probs[row * tk + j];
            for (int64_t j = 0; j < tk; j++) refD[row * tk + j] = scale * probs[row * tk + j] * (dprobs[row * tk + j] - dot);
        }
        std::vector<float> ds(rows * tk), ds2(rows * tk), dsIn = dprobs;
        launch(2, [&] { d4j_attention_softmax_backward(ds.data(), dprobs.data(), probs.data(), rows, tk, scale); });
        launch(1, [&] { d4j_attention_softmax_backward(ds2.data(), dprobs.data(), probs.data(), rows, tk, scale); });
        launch(3, [&] { d4j_attention_softmax_backward(dsIn.data(), dsIn.data(), probs.data(), rows, tk, scale); });
        close("softmax backward", ds, refD, 1e-5);
        same("softmax backward, 1 block vs 2", ds, ds2);
        same("softmax backward in place over dprobs", dsIn, ds);
    });
}

// ---- GELU-tanh and SwiGLU
void activations(int64_t n, int64_t features) {
    char nm[100];
    std::snprintf(nm, sizeof nm, "gelu-tanh and swiglu N=%lld F=%lld", (long long)n, (long long)features);
    run(nm, [&] {
        const int64_t count = n * features;
        const double k = std::sqrt(2 / M_PI);
        auto x = randoms(count, -6.f, 6.f), dout = randoms(count);
        std::vector<double> refY(count), refDx(count);
        for (int64_t e = 0; e < count; e++) {
            double v = x[e], t = std::tanh(k * (v + 0.044715 * v * v * v));
            refY[e] = 0.5 * v * (1 + t);
            refDx[e] = (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v)) * dout[e];
        }
        std::vector<float> y(count), y2(count), dx(count), dxIn = dout;
        launch(3, [&] { d4j_gelu_tanh_forward(y.data(), x.data(), count); });
        launch(1, [&] { d4j_gelu_tanh_forward(y2.data(), x.data(), count); });
        launch(2, [&] { d4j_gelu_tanh_backward(dx.data(), dout.data(), x.data(), count); });
        launch(1, [&] { d4j_gelu_tanh_backward(dxIn.data(), dxIn.data(), x.data(), count); });
        close("gelu-tanh forward", y, refY, 1e-6);
        same("gelu-tanh forward, 1 block vs 3", y, y2);
        close("gelu-tanh backward", dx, refDx, 1e-5);
        same("gelu-tanh backward in place over dout", dxIn, dx);
        auto gateUp = randoms(2 * count, -6.f, 6.f);
        std::vector<double> refS(count), refDg(2 * count);
        for (int64_t r = 0; r < n; r++) {
            for (int64_t j = 0; j < features; j++) {
                int64_t gi = r * 2 * features + j;
                double g = gateUp[gi], u = gateUp[gi + features], dy = dout[r * features + j], s = 1 / (1 + std::exp(-g));
                refS[r * features + j] = g * s * u;
                refDg[gi] = dy * u * s * (1 + g * (1 - s));
                refDg[gi + features] = dy * g * s;
            }
        }
        std::vector<float> s(count), s2(count), dg(2 * count), dg2(2 * count);
        launch(2, [&] { d4j_swiglu_forward(s.data(), gateUp.data(), n, features); });
        launch(1, [&] { d4j_swiglu_forward(s2.data(), gateUp.data(), n, features); });
        launch(3, [&] { d4j_swiglu_backward(dg.data(), dout.data(), gateUp.data(), n, features); });
        launch(1, [&] { d4j_swiglu_backward(dg2.data(), dout.data(), gateUp.data(), n, features); });
        close("swiglu forward", s, refS, 1e-5);
        same("swiglu forward, 1 block vs 2", s, s2);
        close("swiglu backward", dg, refDg, 1e-5);
        same("swiglu backward, 1 block vs 3", dg, dg2);
    });
}
// ---- projections' helpers: the bf16 rounding of activations, the strided bias and its gradient
void projectionHelpers(int64_t rows, int64_t cols, int64_t ld) {
    char nm[120];
    std::snprintf(nm, sizeof nm, "bf16 rounding and strided bias rows=%lld cols=%lld ld=%lld", (long long)rows, (long long)cols, (long long)ld);
    run(nm, [&] {
        auto x = randoms(rows * ld, -3.f, 3.f);
        x[0] = NAN;
        x[1] = INFINITY;
        x[2] = -0.f;
        x[3] = 1.f + 1.f / 256;        // a tie: rounds to even (1.0)
        x[4] = 1.f + 3.f / 256;        // a tie: rounds up to even (1 + 4/256)
        x[5] = 3.4028235e38f;           // the largest float: rounds to infinity
        std::vector<uint16_t> got(rows * cols), got2(rows * cols);
        launch(3, [&] { d4j_f32_to_bf16(got.data(), x.data(), rows, cols, ld); });
        launch(1, [&] { d4j_f32_to_bf16(got2.data(), x.data(), rows, cols, ld); });
        checks++;
        int bad = 0;
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t c = 0; c < cols; c++) {
                float v = x[r * ld + c];
                // reference: the nearest bfloat16, ties to even, by exact arithmetic on the two neighbours
                unsigned u = __float_as_uint(v), lo = u & 0xffff0000u, hi = lo + 0x10000u;
                uint16_t want;
                if (std::isnan(v)) want = (uint16_t)((u >> 16) | 0x40u);
                else if (std::isinf(v)) want = (uint16_t)(u >> 16);
                else {
                    float fl, fh;
                    std::memcpy(&fl, &lo, 4);
                    std::memcpy(&fh, &hi, 4);
                    double dl = std::fabs((double)v - fl), dh = std::isinf(fh) ? std::fabs((double)v - 3.402823669209385e38) : std::fabs((double)v - fh);
                    want = (uint16_t)((dl < dh || (dl == dh && ((lo >> 16) & 1) == 0)) ? lo >> 16 : hi >> 16);
                }
                if (got[r * cols + c] != want && bad++ < 3) std::printf("FAIL bf16 of %.9g: got %04x, want %04x\n", v, got[r * cols + c], want);
            }
        }
        if (bad) failures++;
        checks++;
        if (got != got2) { failures++; std::printf("FAIL bf16 rounding, 1 block vs 3: not bit-identical\n"); }
        auto b = randoms(cols), y = randoms(rows * ld);
        std::vector<double> ref(y.begin(), y.end());
        for (int64_t r = 0; r < rows; r++) for (int64_t c = 0; c < cols; c++) ref[r * ld + c] = (float)(y[r * ld + c] + b[c]);
        launch(2, [&] { d4j_bias_add_strided(y.data(), b.data(), rows, cols, ld); });
        close("strided bias add", y, ref, 0);
        auto dy = randoms(rows * ld), db0 = randoms(cols);
        std::vector<float> db = db0, db2 = db0;
        std::vector<double> refDb(db0.begin(), db0.end());
        for (int64_t c = 0; c < cols; c++) {
            double s = 0;
            for (int64_t r = 0; r < rows; r++) s += dy[r * ld + c];
            refDb[c] += s;
        }
        launch(2, [&] { d4j_bias_grad_strided(db.data(), dy.data(), rows, cols, ld); });
        launch(1, [&] { d4j_bias_grad_strided(db2.data(), dy.data(), rows, cols, ld); });
        close("strided bias gradient", db, refDb, 1e-5);
        same("strided bias gradient, 1 block vs 2", db, db2);
    });
}
}  // namespace

int main() {
    watchdog.start(&checks);
    //         N    D    V    P   positions bad
    embedding(7, 33, 11, 9, false, false);
    embedding(40, 64, 50, 64, true, false);   // GPT-2: learned positions, ids repeat
    embedding(13, 100, 31, 20, true, true);   // an id past the vocabulary and a negative position: NaN rows
    embeddingBf16(9, 37, 13, 5, false, false);    // a bf16 token table (Llama / Qwen: no learned positions)
    embeddingBf16(40, 64, 50, 64, true, false);   // GPT-2 in bf16: float32 learned positions
    embeddingBf16(11, 100, 23, 12, true, true);   // a negative id and a position past the table: NaN rows
    layerNorm(1, 1, true);                    // one column: var 0, rstd = 1 / sqrt(eps)
    layerNorm(5, 33, true);
    layerNorm(17, 768, true);                 // GPT-2 small's width
    layerNorm(9, 1000, false);
    rmsNorm(6, 1, 37, 37);                    // hidden norm, odd width
    rmsNorm(11, 1, 256, 256);
    rmsNorm(9, 3, 16, 3 * 16 + 2 * 16 + 2 * 16);  // Qwen3's q norm: 3 q heads of the q | k | v rows (GQA: 2 kv heads)
    rmsNorm(7, 2, 64, 4 * 64);                // k heads at a stride
    rope(5, 3, 8, 0, 3 * 16 + 2 * 16 * 2);    // q heads at column 0 of q | k | v
    rope(5, 2, 8, 3 * 16, 3 * 16 + 2 * 16 * 2);  // k heads after them (GQA: fewer)
    rope(9, 4, 33, 0, 4 * 66 + 5);            // odd half, padded rows
    //              B  H  tq  tk past padding
    attentionSoftmax(2, 3, 5, 5, 0, 0);
    attentionSoftmax(3, 2, 7, 7, 0, 1);       // left padding: some queries see no key
    attentionSoftmax(3, 2, 7, 7, 0, 2);       // right padding
    attentionSoftmax(2, 2, 3, 9, 6, 1);       // a KV cache: 6 past tokens, 3 new, left padding
    attentionSoftmax(2, 4, 1, 37, 36, 2);     // one-token decoding, more keys than a warp has lanes
    attentionSoftmax(1, 1, 70, 70, 0, 0);     // rows of 70: lanes loop
    activations(3, 333);
    activations(1, 1);
    projectionHelpers(7, 45, 64);            // columns of a wider buffer (q | k | v)
    projectionHelpers(33, 300, 300);
    watchdog.printSlowest();
    std::printf("%d of %d checks passed\n", checks - failures, checks);
    return failures == 0 ? 0 : 1;
}
