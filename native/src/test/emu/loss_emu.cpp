// Every fused loss kernel of distill_loss.cu (warp, block, clusters of 2-16 blocks fully and partly
// staged, re-reading block, pipelined block and clusters, split) runs on the CPU emulation of CUDA (include/cuda_emu.h) against a float64
// reference: every divergence (the _pg twins for reverse KL and JSD), fp32 and bf16, labels with
// ignored rows, the normaliser given or counted in the launch (the grid barrier), no labels, the
// gradient apart, in place or none, a top-k teacher, an out-of-range label and a NaN logit (NaN
// loss), and the same bits over repeated launches with other kernels' launches between (counters
// and the split ring left as found). Split cases also ring wrap-around (more rows than groups), one
// slice a row (K = 1) and many, and uneven slices. Built and run by run.sh (the native module's
// test phase). Bounds: loss within 1e-5 relative (a floor of alpha T^2 ln C ulps), gradient within
// 1e-5 of its largest element for KL and MSE, 1e-4 for reverse KL and JSD (fp32; bf16 1e-2).
// What it cannot check: speed, and races that only the GPU's weaker memory ordering or real warp
// scheduling would show.
#include "distill_loss_emu.cu"
#include "emu_watchdog.h"
#include <atomic>
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

// One problem and how to launch it. regime: warp, block, reread, pipe, split.
struct Case {
    std::string regime;
    int rows, cols, div;  // div: 0 KL, 1 reverse KL, 2 JSD, 3 MSE
    float T, alpha, beta;
    bool labels;
    long normalizer;      // 0: counted (labels) or rows (no labels)
    int grad;             // 0 none, 1 apart, 2 in place over s
    int chunk = 0, groups = 0, threads = 64, blocks = 5;  // split: columns a slice, groups; others: grid (clusters: groups)
    int cl = 1;         // cluster and pipe: blocks a row
    int64_t held = 0;   // cluster and pipe: staged columns of a slice (0: all of it)
    bool topK = false, bf16 = false, badLabel = false, nanLogit = false;

    std::string name() const {
        static const char* divs[] = {"KL", "reverse KL", "JSD", "MSE"};
        char b[200];
        std::snprintf(b, sizeof b, "%s %s %s %dx%d T=%g%s%s%s%s%s%s", regime.c_str(), bf16 ? "bf16" : "f32", divs[div], rows, cols, T,
                      labels ? (normalizer ? " labels" : " labels, N counted") : " no labels", grad == 2 ? ", in place" : grad == 0 ? ", no gradient" : "",
                      topK ? ", top-k teacher" : "", badLabel ? ", bad label" : "", nanLogit ? ", NaN logit" : "",
                      regime == "split" ? (", K = " + std::to_string((cols + chunk - 1) / chunk)).c_str()
                      : cl > 1 || held ? (", " + std::to_string(cl) + " blocks a row" + (held ? ", " + std::to_string(held) + " columns staged" : "")).c_str() : "");
        return b;
    }
};

// The float64 reference (docs/distillation-loss.md): loss and dL/ds.
double reference(const Case& c, const std::vector<float>& s, const std::vector<float>& t, const std::vector<int64_t>& y, std::vector<double>& g) {
    const int C = c.cols;
    const double T = c.T, a = c.alpha, be = c.beta;
    double total = 0, N = 0;
    for (int r = 0; r < c.rows; r++) if (!c.labels || (y[r] != -100 && y[r] >= 0 && y[r] < C)) N++;
    if (c.normalizer > 0) N = (double)c.normalizer;
    g.assign((size_t)c.rows * C, 0.0);
    bool nan = false;
    std::vector<double> lp(C), lq(C), h(C);
    for (int r = 0; r < c.rows; r++) {
        if (c.labels && y[r] == -100) continue;
        if (c.labels && (y[r] < 0 || y[r] >= C)) { nan = true; continue; }
        const float* sr = &s[(size_t)r * C];
        const float* tr = &t[(size_t)r * C];
        double ma = -INFINITY, mb = -INFINITY, m1 = -INFINITY;
        for (int j = 0; j < C; j++) { ma = std::max(ma, sr[j] / T); mb = std::max(mb, tr[j] / T); m1 = std::max(m1, (double)sr[j]); }
        double za = 0, zb = 0, z1 = 0;
        for (int j = 0; j < C; j++) { za += std::exp(sr[j] / T - ma); zb += std::exp(tr[j] / T - mb); z1 += std::exp(sr[j] - m1); }
        const double la = ma + std::log(za), lb = mb + std::log(zb), l1 = m1 + std::log(z1);
        double D = 0, ph = 0;
        for (int j = 0; j < C; j++) {
            lp[j] = sr[j] / T - la;
            lq[j] = tr[j] / T - lb;
            const double p = std::exp(lp[j]), q = std::exp(lq[j]);
            if (c.div == 0) {
                if (!(q <= 0)) D += q * (lq[j] - lp[j]);  // not q > 0: a NaN must reach the loss
            } else if (c.div == 1) {
                D += p * (lp[j] - lq[j]);
                h[j] = lp[j] - lq[j];
            } else if (c.div == 2) {
                const double m = be * q + (1 - be) * p, lm = std::log(m);
                if (!(q <= 0)) D += be * q * (lq[j] - lm);
                D += (1 - be) * p * (lp[j] - lm);
                h[j] = (1 - be) * (lp[j] - lm);  // dD/dp_j
            } else {
                const double d = (sr[j] - (double)tr[j]) / T;
                D += d * d / C;
            }
            if (c.div == 1 || c.div == 2) ph += p * h[j];
        }
        total += a * T * T * D;
        for (int j = 0; j < C; j++) {
            const double p = std::exp(lp[j]), q = std::exp(lq[j]);
            // d(T^2 D)/ds_j: KL T (p - q); reverse KL and JSD T p (h - sum p h), h = dD/dp;
            // MSE 2 (s - t) / C (T^2 (s - t)^2 / (T^2 C))
            double dd = c.div == 0 ? T * (p - q) : c.div == 3 ? 2 * (sr[j] - (double)tr[j]) / C : T * p * (h[j] - ph);
            dd *= a;
            if (c.labels && c.alpha < 1) dd += (1 - a) * (std::exp(sr[j] - l1) - (j == y[r] ? 1 : 0));
            g[(size_t)r * C + j] = dd / N;
        }
        if (c.labels && c.alpha < 1) total += (1 - a) * (l1 - sr[y[r]]);
    }
    return nan || N == 0 ? NAN : total / N;
}

constexpr int MAX_BLOCKS = 96;  // the host's largest grid, in this harness
constexpr int SCRATCH_FLOATS_PER_BLOCK = 32;  // DistillKernels.SCRATCH_FLOATS_PER_BLOCK
std::vector<float> scratch(MAX_BLOCKS * SCRATCH_FLOATS_PER_BLOCK, 0.f);  // partials + the split ring, zero once (as CudaBackend)
unsigned long long counters[3] = {0, 0, 0};

struct Result { float loss; std::vector<float> grad; };

#define D4J_EMU_ARGS(T) const T*, const T*, const int64_t*, int64_t, int64_t, int, float, float, float, int64_t, unsigned long long*, float, float*, float*, int, T*, int64_t, int64_t
template <typename T> using Kernel = void (*)(D4J_EMU_ARGS(T));

// The kernel the host would launch for this case (DistillKernels.launch: _pg for reverse KL / JSD).
template <typename T> Kernel<T> kernelFor(const Case& c) {
    const bool pg = c.div == 1 || c.div == 2, b = sizeof(T) == 2;
#define D4J_PICK(NAME) return (Kernel<T>)(b ? (pg ? (void*)NAME##_bf16_pg : (void*)NAME##_bf16) : (pg ? (void*)NAME##_f32_pg : (void*)NAME##_f32))
    if (c.regime == "warp") {
        const int items = c.cols <= 32 ? 1 : c.cols <= 64 ? 2 : c.cols <= 128 ? 4 : c.cols <= 256 ? 8 : c.cols <= 512 ? 16 : 32;
        switch (items) {
            case 1: D4J_PICK(d4j_kd_warp1);
            case 2: D4J_PICK(d4j_kd_warp2);
            case 4: D4J_PICK(d4j_kd_warp4);
            case 8: D4J_PICK(d4j_kd_warp8);
            case 16: D4J_PICK(d4j_kd_warp16);
            default: D4J_PICK(d4j_kd_warp32);
        }
    }
    if (c.regime == "block") D4J_PICK(d4j_kd_block);
    if (c.regime == "cluster") {
        switch (c.cl) {
            case 2: D4J_PICK(d4j_kd_cluster2);
            case 4: D4J_PICK(d4j_kd_cluster4);
            case 8: D4J_PICK(d4j_kd_cluster8);
            default: D4J_PICK(d4j_kd_cluster16);
        }
    }
    if (c.regime == "pipe") {
        switch (c.cl) {
            case 1: D4J_PICK(d4j_kd_pipe);
            case 2: D4J_PICK(d4j_kd_pipe2);
            case 4: D4J_PICK(d4j_kd_pipe4);
            case 8: D4J_PICK(d4j_kd_pipe8);
            default: if (c.held) D4J_PICK(d4j_kd_pipe16p); else D4J_PICK(d4j_kd_pipe16);
        }
    }
    if (c.regime == "split") D4J_PICK(d4j_kd_split);
    D4J_PICK(d4j_kd_reread);
#undef D4J_PICK
}

template <typename T>
Result launch(const Case& c, const std::vector<float>& s32, const std::vector<float>& t32, const std::vector<int64_t>& y) {
    const size_t n = (size_t)c.rows * c.cols;
    std::vector<T> s(n), t(n), g(n);
    for (size_t i = 0; i < n; i++) {
        if constexpr (sizeof(T) == 2) { s[i] = __float2bfloat16_rn(s32[i]); t[i] = __float2bfloat16_rn(t32[i]); }
        else { s[i] = s32[i]; t[i] = t32[i]; }
    }
    float loss = 0.f;
    T* grad = c.grad == 0 ? nullptr : c.grad == 1 ? g.data() : s.data();
    const int64_t* labels = c.labels ? y.data() : nullptr;
    const int64_t padded = (c.cols + 7) / 8 * 8;
    // grid, threads, dynamic shared bytes, chunk and staged as DistillKernels plans them
    unsigned grid = c.blocks, threads = c.threads, cluster = 1;
    size_t shared = 0;
    int64_t chunk = c.cols, staged = 0;
    if (c.regime == "warp") threads = 256;
    else if (c.regime == "block") { chunk = staged = padded; shared = padded * 2 * sizeof(T); }
    else if (c.regime == "cluster" || c.regime == "pipe") {
        // as DistillKernels.explicit: a slice of ceil(C / CL) columns rounded up to 8, all or
        // `held` of it staged, two buffers for pipe; whole clusters
        chunk = ((c.cols + c.cl - 1) / c.cl + 7) / 8 * 8;
        staged = c.held ? c.held : chunk;
        shared = (size_t)staged * 2 * sizeof(T) * (c.regime == "pipe" ? 2 : 1);
        grid = c.blocks * c.cl;
        cluster = c.cl;
    }
    else if (c.regime == "split") {
        const int K = (c.cols + c.chunk - 1) / c.chunk;
        grid = c.groups * K;
        chunk = c.chunk;
        staged = 2 * MAX_BLOCKS;  // the ring's offset
        shared = 2 * (size_t)c.chunk * 2 * sizeof(T);
    }
    if (grid > MAX_BLOCKS) { std::fprintf(stderr, "%s: grid %u beyond %d\n", c.name().c_str(), grid, MAX_BLOCKS); std::exit(2); }
    Kernel<T> k = kernelFor<T>(c);
    emuLaunch(grid, threads, shared, [&] {
        k(s.data(), t.data(), labels, c.rows, c.cols, c.div, c.T, c.alpha, c.beta, -100, counters, (float)c.normalizer, scratch.data(), &loss, 1, grad, chunk, staged);
    }, cluster);
    Result out{loss, {}};
    if (grad) {
        out.grad.resize(n);
        for (size_t i = 0; i < n; i++) {
            if constexpr (sizeof(T) == 2) out.grad[i] = __bfloat162float(grad[i]);
            else out.grad[i] = grad[i];
        }
    }
    return out;
}

void expect(bool ok, const Case& c, const std::string& what) {
    checks++;
    if (!ok) {
        failures++;
        std::printf("FAIL %s: %s\n", c.name().c_str(), what.c_str());
    }
}

bool closeLoss(double want, double got, double rel, double floor) {
    if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
    return std::fabs(want - got) <= rel * std::max(floor, std::fabs(want));
}

double gradError(const std::vector<double>& want, const std::vector<float>& got) {
    double max = 1e-30, worst = 0;
    for (double v : want) max = std::max(max, std::fabs(v));
    for (size_t i = 0; i < want.size(); i++) worst = std::max(worst, std::fabs(want[i] - got[i]));
    return worst / max;
}

// D4J_EMU_ONLY=split (a regime): run only its cases, for a quick look while changing one kernel.
const char* only = std::getenv("D4J_EMU_ONLY");

template <typename T>
void run(Case c, std::mt19937_64& rng) {
    if (only && c.regime != only) return;
    c.bf16 = sizeof(T) == 2;
    watchdog.begin(c.name());
    std::normal_distribution<float> gauss(0.f, 1.f);
    const size_t n = (size_t)c.rows * c.cols;
    std::vector<float> s(n), t(n);
    const float scale = c.T < 0.5f ? 1e4f : 4.f;
    for (size_t i = 0; i < n; i++) { s[i] = gauss(rng) * scale; t[i] = gauss(rng) * scale; }
    if (c.bf16) for (size_t i = 0; i < n; i++) { s[i] = __bfloat162float(__float2bfloat16_rn(s[i])); t[i] = __bfloat162float(__float2bfloat16_rn(t[i])); }
    if (c.topK) for (size_t i = 0; i < n; i++) if ((int)(i % c.cols) >= 50) t[i] = -INFINITY;
    std::vector<int64_t> y(c.rows);
    for (int r = 0; r < c.rows; r++) y[r] = r % 5 == 4 ? -100 : (int64_t)(rng() % c.cols);
    if (c.badLabel) y[c.rows / 2] = c.cols;
    if (c.nanLogit) t[(size_t)c.cols + 7] = NAN;  // row 1 counts (rows 4, 9, ... are ignored)
    std::vector<double> g;
    const double want = reference(c, s, t, y, g);
    const Result first = launch<T>(c, s, t, y);
    // The loss's floor: alpha T^2 D carries the difference of two float log-sum-exps of about
    // ln C, so a few of their ulps scaled by alpha T^2 (as GpuDistillationLossTest's bound).
    const double floor = 1e-2 * std::max(1.0, (double)c.alpha * c.T * c.T) * std::max(1.0, std::log((double)c.cols));
    char buf[256];
    std::snprintf(buf, sizeof buf, "loss %.9g vs float64 %.9g", first.loss, want);
    expect(closeLoss(want, first.loss, c.bf16 ? 1e-4 : 1e-5, floor), c, buf);
    if (c.grad && !std::isnan(want)) {
        const double e = gradError(g, first.grad), tol = c.bf16 ? 1e-2 : (c.div == 1 || c.div == 2) ? 1e-4 : 1e-5;
        std::snprintf(buf, sizeof buf, "gradient %.3g of its largest element off the float64 reference", e);
        expect(e <= tol, c, buf);
    }
    for (int again = 0; again < 2; again++) {
        // another kernel in between (other grid, other partials), then the same launch: same bits
        Case other = c;
        other.regime = "reread";
        other.blocks = 3 + again;
        launch<T>(other, s, t, y);
        const Result next = launch<T>(c, s, t, y);
        const bool same = (std::memcmp(&next.loss, &first.loss, 4) == 0 || (std::isnan(next.loss) && std::isnan(first.loss)))
            && next.grad.size() == first.grad.size() && std::memcmp(next.grad.data(), first.grad.data(), 4 * first.grad.size()) == 0;
        expect(same, c, "launch " + std::to_string(again + 2) + " differs from the first (bits)");
    }
    for (int i = 0; i < 3; i++) expect(counters[i] == 0, c, "counters left zero");
    for (int i = 2 * MAX_BLOCKS; i < 6 * MAX_BLOCKS; i++) {
        unsigned w;
        std::memcpy(&w, &scratch[i], 4);
        if (w != 0) { expect(false, c, "split ring flag " + std::to_string(i) + " left non-zero"); break; }
    }
    watchdog.end();
    std::printf("%-82s loss %-14.9g (float64 %.9g)\n", c.name().c_str(), first.loss, want);
    std::fflush(stdout);
}
}  // namespace

int main() {
    watchdog.start(&checks);
    std::mt19937_64 rng(20261123);
    std::vector<Case> cases;
    auto add = [&](Case c) { cases.push_back(c); return &cases.back(); };
    // every regime x divergence, labels and counted N, gradient apart
    for (const char* regime : {"warp", "block", "reread", "pipe", "split"}) {
        for (int div = 0; div < 4; div++) {
            const int cols = std::string(regime) == "warp" ? 200 : 1000;
            Case c{regime, 23, cols, div, 4.f, 0.7f, 0.4f, true, 0, 1};
            c.chunk = 256;  // split: 4 slices a row
            c.groups = 3;   // 3 groups for 23 rows: the ring wraps
            add(c);
        }
    }
    //                regime   rows cols div T     alpha beta labels norm grad
    add({"split", 17, 999, 0, 2.f, 0.6f, 0.5f, true, 30, 2})->chunk = 256, cases.back().groups = 2;           // unaligned rows, in place
    add({"split", 19, 1000, 0, 1.f, 0.5f, 0.5f, true, 0, 1})->chunk = 1000, cases.back().groups = 4;          // K = 1
    add({"split", 9, 4097, 0, 4.f, 0.9f, 0.5f, true, 0, 2})->chunk = 1368, cases.back().groups = 2;           // 3 uneven slices
    add({"split", 11, 600, 0, 0.1f, 0.8f, 0.5f, true, 11, 1})->chunk = 160, cases.back().groups = 3;          // T = 0.1, logits 1e4
    add({"split", 10, 777, 0, 100.f, 0.3f, 0.5f, true, 0, 1})->chunk = 200, cases.back().groups = 2;          // T = 100
    add({"split", 14, 500, 3, 2.f, 1.f, 0.5f, false, 0, 0})->chunk = 128, cases.back().groups = 3;            // MSE, no labels, no gradient
    add({"split", 12, 640, 0, 4.f, 1.f, 0.5f, false, 40, 2})->chunk = 64, cases.back().groups = 2;            // no labels, in place
    add({"split", 31, 1024, 0, 4.f, 0.9f, 0.5f, true, 0, 1})->chunk = 64, cases.back().groups = 5;            // 16 slices, 5 groups
    add({"split", 13, 800, 0, 4.f, 0.7f, 0.5f, true, 0, 1})->chunk = 200, cases.back().groups = 2, cases.back().topK = true;
    add({"split", 10, 300, 0, 4.f, 0.7f, 0.5f, true, 0, 1})->chunk = 100, cases.back().groups = 2, cases.back().badLabel = true;
    // warp32 (explicit plans, 513-1,024 columns): every divergence, extremes, unaligned in place, no labels
    for (int div = 0; div < 4; div++) add({"warp", 37, 1000, div, 4.f, 0.7f, 0.4f, true, 0, 1})->blocks = 2;  // 16 warps: rows loop
    add({"warp", 11, 1024, 1, 0.1f, 0.8f, 0.5f, true, 11, 2});  // reverse KL, T = 0.1, logits 1e4, in place
    add({"warp", 10, 777, 2, 100.f, 0.3f, 0.2f, true, 0, 1});   // JSD, T = 100
    add({"warp", 12, 999, 0, 4.f, 1.f, 0.5f, false, 0, 2});     // no labels, unaligned, in place
    add({"warp", 13, 800, 0, 4.f, 0.7f, 0.5f, true, 0, 1})->topK = true;
    add({"warp", 10, 600, 3, 2.f, 0.5f, 0.5f, true, 0, 0})->badLabel = true;  // MSE, no gradient
    add({"warp", 8, 1000, 2, 2.f, 0.7f, 0.3f, true, 0, 1})->nanLogit = true;
    // split's _pg kernels (reverse KL, JSD: the group meets a second time a row, for sum p g)
    add({"split", 11, 600, 1, 0.1f, 0.8f, 0.5f, true, 11, 2})->chunk = 160, cases.back().groups = 3;          // T = 0.1, logits 1e4, in place
    add({"split", 10, 777, 2, 100.f, 0.3f, 0.2f, true, 0, 1})->chunk = 200, cases.back().groups = 2;          // T = 100
    add({"split", 19, 1000, 1, 1.f, 0.5f, 0.5f, true, 0, 1})->chunk = 1000, cases.back().groups = 4;          // K = 1
    add({"split", 9, 4097, 2, 4.f, 0.9f, 0.7f, true, 0, 2})->chunk = 1368, cases.back().groups = 2;           // 3 uneven slices, in place
    add({"split", 31, 1024, 2, 4.f, 0.9f, 0.5f, true, 0, 1})->chunk = 64, cases.back().groups = 5;            // 16 slices, 5 groups
    add({"split", 17, 999, 1, 2.f, 0.6f, 0.5f, true, 30, 2})->chunk = 256, cases.back().groups = 2;           // unaligned rows, in place
    add({"split", 14, 500, 1, 2.f, 0.7f, 0.5f, true, 0, 0})->chunk = 128, cases.back().groups = 3;            // no gradient
    add({"split", 12, 640, 2, 4.f, 1.f, 0.5f, false, 40, 2})->chunk = 64, cases.back().groups = 2;            // no labels, in place
    add({"split", 13, 800, 2, 4.f, 0.7f, 0.5f, true, 0, 1})->chunk = 200, cases.back().groups = 2, cases.back().topK = true;
    add({"split", 10, 300, 2, 4.f, 0.7f, 0.5f, true, 0, 1})->chunk = 100, cases.back().groups = 2, cases.back().badLabel = true;
    // the other regimes: extremes, unaligned rows, in place, no labels, top-k, bad label
    for (const char* regime : {"warp", "block", "reread", "pipe"}) {
        const bool warp = std::string(regime) == "warp";
        add({regime, 11, warp ? 333 : 999, 1, 0.1f, 0.8f, 0.5f, true, 11, 2});   // reverse KL, T = 0.1, logits 1e4, unaligned, in place
        add({regime, 10, warp ? 257 : 777, 2, 100.f, 0.3f, 0.2f, true, 0, 1});  // JSD, T = 100
        add({regime, 12, warp ? 64 : 640, 0, 4.f, 1.f, 0.5f, false, 0, 2});      // no labels, in place
        add({regime, 13, warp ? 300 : 800, 2, 4.f, 0.7f, 0.5f, true, 0, 1})->topK = true;
        add({regime, 10, warp ? 100 : 300, 0, 4.f, 0.7f, 0.5f, true, 0, 0})->badLabel = true;
        add({regime, 7, warp ? 7 : 520, 3, 2.f, 0.5f, 0.5f, true, 0, 0});        // MSE, no gradient
    }
    // a NaN teacher logit makes the loss NaN in every kernel and divergence (sixth session's guard)
    for (const char* regime : {"warp", "block", "reread", "pipe", "split"}) {
        for (int div = 0; div < 4; div++) {
            Case* c = add({regime, 8, std::string(regime) == "warp" ? 300 : 600, div, 2.f, 0.7f, 0.3f, true, 0, 1});
            c->chunk = 200;
            c->groups = 2;
            c->nanLogit = true;
        }
    }
    // clusters (2-16 blocks a row, fully and partly staged) and the pipelined clusters, every
    // divergence in turn, with more rows than groups, unaligned rows, a top-k teacher whose slices
    // past the first are all -inf, no labels in place, and a NaN logit
    int turn = 0;
    for (int cl : {2, 4, 8, 16}) {
        for (const char* regime : {"cluster", "pipe"}) {
            const bool pipe = std::string(regime) == "pipe";
            for (bool partial : {false, true}) {
                if (partial && pipe && cl != 16) continue;  // the one partly staged pipe kernel: 16 blocks
                const int64_t chunk = ((1000 + cl - 1) / cl + 7) / 8 * 8;
                Case c{regime, 9, 1000, turn++ % 4, 4.f, 0.7f, 0.4f, true, 0, 1};
                c.cl = cl;
                c.blocks = 2;
                if (partial) c.held = std::max<int64_t>(8, chunk / 2 / 8 * 8);
                add(c);
                Case u{regime, 7, 999, turn++ % 4, 2.f, 0.6f, 0.5f, true, 20, 2};  // unaligned, in place
                u.cl = cl;
                u.blocks = 2;
                u.held = c.held;
                add(u);
                Case k{regime, 6, 1200, turn % 2 == 0 ? 0 : 2, 4.f, 0.7f, 0.5f, true, 0, 1};
                k.cl = cl;
                k.blocks = 1;
                k.held = partial ? std::max<int64_t>(8, ((1200 + cl - 1) / cl + 7) / 8 * 8 / 2 / 8 * 8) : 0;
                k.topK = true;
                add(k);
                Case x{regime, 8, 600, turn++ % 4, 2.f, 1.f, 0.5f, false, 0, 2};  // no labels, in place
                x.cl = cl;
                x.blocks = 3;
                add(x);
                Case nan{regime, 8, 600, turn++ % 4, 2.f, 0.7f, 0.3f, true, 0, 1};
                nan.cl = cl;
                nan.blocks = 2;
                nan.nanLogit = true;
                add(nan);
            }
        }
    }
    Case p1{"pipe", 23, 1000, 2, 4.f, 0.7f, 0.4f, true, 0, 1};  // the pipelined block (cl 1): JSD, rows loop
    add(p1);
    for (const Case& c : cases) run<float>(c, rng);
    for (int cl : {2, 16}) {
        Case b{"cluster", 9, 1000, 0, 4.f, 0.7f, 0.5f, true, 0, 1};
        b.cl = cl;
        b.blocks = 2;
        run<__nv_bfloat16>(b, rng);
        b.regime = "pipe";
        b.div = 1;
        run<__nv_bfloat16>(b, rng);
    }
    for (const char* regime : {"warp", "block", "reread", "pipe", "split"}) {
        for (int div : {0, 2}) {
            Case c{regime, 21, std::string(regime) == "warp" ? 500 : 1000, div, 4.f, 0.7f, 0.5f, true, 0, 1};
            c.chunk = 256;
            c.groups = 3;
            run<__nv_bfloat16>(c, rng);
            if (std::string(regime) == "warp") {  // warp32 in bf16
                Case w{regime, 19, 1000, div, 4.f, 0.7f, 0.5f, true, 0, 2};
                run<__nv_bfloat16>(w, rng);
            }
            Case u{regime, 9, std::string(regime) == "warp" ? 301 : 1001, div == 0 ? 3 : 1, 2.f, 0.5f, 0.5f, true, 0, 2};  // unaligned, in place
            u.chunk = 512;
            u.groups = 2;
            run<__nv_bfloat16>(u, rng);
        }
    }
    watchdog.printSlowest();
    std::printf("%d of %d checks passed\n", checks - failures, checks);
    return failures == 0 ? 0 : 1;
}
