// The split regime of the fused loss (d4j_kd_split in distill_loss.cu) run on the CPU emulation
// (include/cuda_emu.h), against a float64 reference and against the re-reading kernel (run on the
// same emulation; that kernel has passed GpuDistillationLossTest on an H100). Built and run by
// run.sh. Checks: loss within 1e-5 relative, gradient within 1e-5 of its largest element (fp32;
// bf16 within one bf16 ulp), the same bits over repeated launches with other launches between
// (the ring is left as found), ring wrap-around (more rows than groups), one slice a row (K = 1)
// and many, unaligned rows, labels with ignored rows, a counted normaliser (grid barrier), an
// out-of-range label (NaN), no labels, KL and MSE, a top-k teacher, gradient apart, in place, none.
#include "distill_loss_emu.cu"
#include <random>
#include <string>

namespace {
int failures = 0, checks = 0;

struct Case {
    std::string name;
    int rows, cols, div;  // div: 0 KL, 3 MSE
    float T, alpha;
    bool labels;
    long normalizer;      // 0: counted (labels) or rows (no labels)
    int grad;             // 0 none, 1 apart, 2 in place over s
    int chunk, groups, threads;
    bool topK = false, bf16 = false, badLabel = false;
};

// The float64 reference (docs/distillation-loss.md): loss and dL/ds.
double reference(const Case& c, const std::vector<float>& s, const std::vector<float>& t, const std::vector<int64_t>& y, std::vector<double>& g) {
    const int C = c.cols;
    double soft = 0, hard = 0, N = 0;
    for (int r = 0; r < c.rows; r++) if (!c.labels || (y[r] != -100 && y[r] >= 0 && y[r] < C)) N++;
    if (c.normalizer > 0) N = (double)c.normalizer;
    g.assign((size_t)c.rows * C, 0.0);
    bool nan = false;
    for (int r = 0; r < c.rows; r++) {
        if (c.labels && y[r] == -100) continue;
        if (c.labels && (y[r] < 0 || y[r] >= C)) { nan = true; continue; }
        const float* sr = &s[(size_t)r * C];
        const float* tr = &t[(size_t)r * C];
        double ma = -INFINITY, mb = -INFINITY, m1 = -INFINITY;
        for (int j = 0; j < C; j++) { ma = std::max(ma, sr[j] / (double)c.T); mb = std::max(mb, tr[j] / (double)c.T); m1 = std::max(m1, (double)sr[j]); }
        double za = 0, zb = 0, z1 = 0;
        for (int j = 0; j < C; j++) { za += std::exp(sr[j] / (double)c.T - ma); zb += std::exp(tr[j] / (double)c.T - mb); z1 += std::exp(sr[j] - m1); }
        const double la = ma + std::log(za), lb = mb + std::log(zb), l1 = m1 + std::log(z1);
        for (int j = 0; j < C; j++) {
            double lp = sr[j] / (double)c.T - la, lq = tr[j] / (double)c.T - lb, dd;
            if (c.div == 0) {
                double q = std::exp(lq), p = std::exp(lp);
                if (q > 0) soft += c.alpha * c.T * c.T * q * (lq - lp);
                dd = c.alpha * c.T * (p - q);
            } else {
                double diff = (sr[j] - (double)tr[j]) / c.T;
                soft += c.alpha * c.T * c.T * diff * diff / C;
                dd = c.alpha * c.T * 2 * diff / C;
            }
            if (c.labels && c.alpha < 1) dd += (1 - c.alpha) * (std::exp(sr[j] - l1) - (j == y[r] ? 1 : 0));
            g[(size_t)r * C + j] = dd / N;
        }
        if (c.labels && c.alpha < 1) hard += (1 - c.alpha) * (l1 - sr[y[r]]);
    }
    return nan || N == 0 ? NAN : (soft + hard) / N;
}

constexpr int MAX_BLOCKS = 96;  // the host's largest grid, in this harness
std::vector<float> scratch(MAX_BLOCKS * 26, 0.f);  // partials + the split ring, zero once (as CudaBackend)
unsigned long long counters[3] = {0, 0, 0};

struct Result { std::vector<float> loss; std::vector<float> grad; };

template <typename T>
Result launch(const Case& c, const char* regime, const std::vector<float>& s32, const std::vector<float>& t32, const std::vector<int64_t>& y) {
    size_t n = (size_t)c.rows * c.cols;
    std::vector<T> s(n), t(n), g(n);
    for (size_t i = 0; i < n; i++) {
        if constexpr (sizeof(T) == 2) { s[i] = __float2bfloat16_rn(s32[i]); t[i] = __float2bfloat16_rn(t32[i]); }
        else { s[i] = s32[i]; t[i] = t32[i]; }
    }
    std::vector<float> loss(1, 0.f);
    T* grad = c.grad == 0 ? nullptr : c.grad == 1 ? g.data() : s.data();
    const int64_t* labels = c.labels ? y.data() : nullptr;
    const float norm = (float)c.normalizer;
    if (std::string(regime) == "split") {
        const int K = (c.cols + c.chunk - 1) / c.chunk;
        const unsigned grid = (unsigned)(c.groups * K);
        if (grid > MAX_BLOCKS) { std::fprintf(stderr, "%s: grid %u beyond %d\n", c.name.c_str(), grid, MAX_BLOCKS); std::exit(2); }
        emuLaunch(grid, c.threads, 2 * (size_t)c.chunk * 2 * sizeof(T), [&] {
            if constexpr (sizeof(T) == 2) d4j_kd_split_bf16(s.data(), t.data(), labels, c.rows, c.cols, c.div, c.T, c.alpha, 0.5f, -100, counters, norm, scratch.data(), loss.data(), 1, grad, c.chunk, 2 * MAX_BLOCKS);
            else d4j_kd_split_f32(s.data(), t.data(), labels, c.rows, c.cols, c.div, c.T, c.alpha, 0.5f, -100, counters, norm, scratch.data(), loss.data(), 1, grad, c.chunk, 2 * MAX_BLOCKS);
        });
    } else {  // the re-reading block: 7 blocks, 64 threads (a different grid: it overwrites other partials)
        emuLaunch(7, 64, 0, [&] {
            if constexpr (sizeof(T) == 2) d4j_kd_reread_bf16(s.data(), t.data(), labels, c.rows, c.cols, c.div, c.T, c.alpha, 0.5f, -100, counters, norm, scratch.data(), loss.data(), 1, grad, c.cols, 0);
            else d4j_kd_reread_f32(s.data(), t.data(), labels, c.rows, c.cols, c.div, c.T, c.alpha, 0.5f, -100, counters, norm, scratch.data(), loss.data(), 1, grad, c.cols, 0);
        });
    }
    Result out;
    out.loss = loss;
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
        std::printf("FAIL %s: %s\n", c.name.c_str(), what.c_str());
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

template <typename T>
void run(const Case& c, std::mt19937_64& rng) {
    std::normal_distribution<float> gauss(0.f, 1.f);
    size_t n = (size_t)c.rows * c.cols;
    std::vector<float> s(n), t(n);
    const float scale = c.T < 0.5f ? 1e4f : 4.f;
    for (size_t i = 0; i < n; i++) { s[i] = gauss(rng) * scale; t[i] = gauss(rng) * scale; }
    if (sizeof(T) == 2) for (size_t i = 0; i < n; i++) { s[i] = __bfloat162float(__float2bfloat16_rn(s[i])); t[i] = __bfloat162float(__float2bfloat16_rn(t[i])); }
    if (c.topK) for (size_t i = 0; i < n; i++) if ((int)(i % c.cols) >= 50) t[i] = -INFINITY;
    std::vector<int64_t> y(c.rows);
    for (int r = 0; r < c.rows; r++) y[r] = r % 5 == 4 ? -100 : (int64_t)(rng() % c.cols);
    if (c.badLabel) y[c.rows / 2] = c.cols;
    std::vector<double> g;
    const double want = reference(c, s, t, y, g);
    Result first = launch<T>(c, "split", s, t, y);
    const double tol = sizeof(T) == 2 ? 1e-2 : 1e-5;
    // The loss's floor: alpha T^2 D carries the difference of two float log-sum-exps of about
    // ln C, so a few of their ulps scaled by alpha T^2 (as GpuDistillationLossTest's bound).
    const double floor = 1e-2 * std::max(1.0, (double)c.alpha * c.T * c.T) * std::max(1.0, std::log((double)c.cols));
    char buf[256];
    std::snprintf(buf, sizeof buf, "loss %.9g vs float64 %.9g", first.loss[0], want);
    expect(closeLoss(want, first.loss[0], (sizeof(T) == 2 ? 1e-4 : 1e-5), floor), c, buf);
    if (c.grad) {
        double e = gradError(g, first.grad);
        std::snprintf(buf, sizeof buf, "gradient %.3g of its largest element off the float64 reference", e);
        expect(e <= tol, c, buf);
    }
    Result reread = launch<T>(c, "reread", s, t, y);
    std::snprintf(buf, sizeof buf, "loss %.9g vs the re-reading kernel's %.9g", first.loss[0], reread.loss[0]);
    expect(closeLoss(reread.loss[0], first.loss[0], sizeof(T) == 2 ? 1e-4 : 1e-5, floor), c, buf);
    for (int again = 0; again < 2; again++) {
        Result next = launch<T>(c, "split", s, t, y);
        bool same = std::memcmp(next.loss.data(), first.loss.data(), 4) == 0 && next.grad == first.grad;
        if (std::isnan(first.loss[0])) same = std::isnan(next.loss[0]) && next.grad == first.grad;
        expect(same, c, "launch " + std::to_string(again + 2) + " differs from the first (bits)");
    }
    for (int i = 0; i < 3; i++) expect(counters[i] == 0, c, "counters left zero");
    for (int i = 2 * MAX_BLOCKS; i < 6 * MAX_BLOCKS; i++) {
        unsigned w;
        std::memcpy(&w, &scratch[i], 4);
        if (w != 0) { expect(false, c, "ring flag " + std::to_string(i) + " left non-zero"); break; }
    }
    std::printf("%-44s loss %-14.9g (float64 %.9g)\n", c.name.c_str(), first.loss[0], want);
}
}  // namespace

int main() {
    std::mt19937_64 rng(20261123);
    //            name                                rows cols div T     alpha labels norm grad chunk groups threads
    std::vector<Case> cases = {
        {"KL, 4 slices, ring wraps, counted N", 23, 1000, 0, 4.f, 0.7f, true, 0, 1, 256, 3, 64},
        {"KL, unaligned rows (999), in place", 17, 999, 0, 2.f, 0.6f, true, 30, 2, 256, 2, 64},
        {"KL, one slice a row (K = 1)", 19, 1000, 0, 1.f, 0.5f, true, 0, 1, 1000, 4, 128},
        {"KL, 3 uneven slices (4097)", 9, 4097, 0, 4.f, 0.9f, true, 0, 2, 1368, 2, 128},
        {"KL, T = 0.1, logits 1e4", 11, 600, 0, 0.1f, 0.8f, true, 11, 1, 160, 3, 32},
        {"KL, T = 100", 10, 777, 0, 100.f, 0.3f, true, 0, 1, 200, 2, 64},
        {"MSE, no labels, no gradient", 14, 500, 3, 2.f, 1.f, false, 0, 0, 128, 3, 64},
        {"MSE, labels, gradient apart", 14, 512, 3, 3.f, 0.4f, true, 0, 1, 128, 2, 32},
        {"KL, no labels, in place", 12, 640, 0, 4.f, 1.f, false, 40, 2, 64, 2, 32},
        {"KL, 16 slices of 64, 5 groups", 31, 1024, 0, 4.f, 0.9f, true, 0, 1, 64, 5, 32},
    };
    Case topK = {"KL, top-k teacher (-inf past 50 columns)", 13, 800, 0, 4.f, 0.7f, true, 0, 1, 200, 2, 64};
    topK.topK = true;
    cases.push_back(topK);
    Case bad = {"KL, a label out of range: NaN", 10, 300, 0, 4.f, 0.7f, true, 0, 1, 100, 2, 32};
    bad.badLabel = true;
    cases.push_back(bad);
    for (const Case& c : cases) run<float>(c, rng);
    Case b1 = {"bf16 KL, 4 slices, counted N", 21, 1000, 0, 4.f, 0.7f, true, 0, 1, 256, 3, 64};
    Case b2 = {"bf16 MSE, unaligned, in place", 9, 1001, 3, 2.f, 0.5f, true, 0, 2, 512, 2, 64};
    run<__nv_bfloat16>(b1, rng);
    run<__nv_bfloat16>(b2, rng);
    std::printf("%d of %d checks passed\n", checks - failures, checks);
    return failures == 0 ? 0 : 1;
}
