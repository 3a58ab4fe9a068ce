// A CPU emulation of the CUDA features the fused loss kernels use, to run their logic without a
// GPU (native/src/test/emu/run.sh). Not a simulator of timing or of the memory model's weak
// orderings: blocks are OS threads (all resident at once, truly concurrent: their atomics, flags
// and spin-waits interleave for real), the threads of a block are fibers (ucontext) switched at
// __syncthreads and warp shuffles, so per-block state (__shared__) is thread_local to the block's
// OS thread. What it checks: indexing, the order of steps, barriers reached by every thread,
// protocols between blocks (tickets, flags, rings, grid barriers) and the arithmetic, against a
// float64 reference. Races that need the GPU's weaker memory ordering are not exposed.
#pragma once
#include <atomic>
#include <chrono>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <sched.h>
#include <thread>
#include <ucontext.h>
#include <vector>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __cluster_dims__(...)

struct dim3 { unsigned x = 0, y = 0, z = 0; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };

namespace emu {
// The block this OS thread runs, and the fiber (CUDA thread) running in it.
struct Block;
inline thread_local Block* current = nullptr;

struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    bool done = false;
};

struct Block {
    unsigned threads;
    std::vector<Fiber> fibers;
    ucontext_t scheduler;
    unsigned running = 0;
    // barriers: arrivals and generation, for the block and for each warp
    unsigned arrived = 0, generation = 0;
    std::vector<unsigned> warpArrived, warpGeneration;
    std::vector<unsigned long long> warpSlots;  // one 8-byte value a lane, for shuffles
    std::vector<char> dynamicShared;
    std::function<void()> body;
    char* tlsAnchor = nullptr;  // this OS thread's address of tlsAnchor (below): maps another block's __shared__
};

// Thread-block clusters: CL consecutive blocks. A cluster barrier counts every thread of them.
struct Cluster {
    std::atomic<unsigned> arrived{0}, generation{0};
};
inline unsigned clusterSize = 1;
inline std::vector<Block*> blocks;           // by block index, registered when each starts
inline std::vector<Cluster>* clusters = nullptr;
inline thread_local char tlsAnchor;

inline void yield() { swapcontext(&current->fibers[current->running].ctx, &current->scheduler); }

// D4J_EMU_JITTER=N: at a block barrier or an atomic, with probability N / 1000, the block's OS
// thread sleeps 0-200 us, so that blocks drift apart as far as the kernels' protocols allow (a
// group's fast block racing rounds ahead of a slow one: ring reuse, flags). 0 (unset): no jitter.
inline const int jitterPerMille = [] {
    const char* j = std::getenv("D4J_EMU_JITTER");
    return j ? std::atoi(j) : 0;
}();
inline void jitter() {
    if (jitterPerMille <= 0) return;
    thread_local unsigned long long state = 0x9E3779B97F4A7C15ull ^ (unsigned long long)std::hash<std::thread::id>()(std::this_thread::get_id());
    state = state * 6364136223846793005ull + 1442695040888963407ull;  // an LCG: per thread, no locks
    const unsigned r = (unsigned)(state >> 33);
    if ((int)(r % 1000) < jitterPerMille) std::this_thread::sleep_for(std::chrono::microseconds((r >> 10) % 200));
}

inline void blockBarrier() {
    Block* b = current;
    unsigned gen = b->generation;
    if (++b->arrived == b->threads) {
        jitter();  // once a barrier: the whole block waits
        b->arrived = 0;
        b->generation++;
        return;
    }
    while (b->generation == gen) yield();
}

inline void warpBarrier(unsigned lane0Warp) {
    Block* b = current;
    unsigned gen = b->warpGeneration[lane0Warp];
    if (++b->warpArrived[lane0Warp] == 32) {
        b->warpArrived[lane0Warp] = 0;
        b->warpGeneration[lane0Warp]++;
        return;
    }
    while (b->warpGeneration[lane0Warp] == gen) yield();
}
}  // namespace emu

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {
// A block's dynamic shared memory, 16-byte aligned (what the kernels get as their extern array).
inline char* alignedShared(Block* b) {
    uintptr_t p = (uintptr_t)b->dynamicShared.data();
    return (char*)((p + 15) & ~(uintptr_t)15);
}

// Every thread of the cluster arrives; the block's other fibers run while this one waits.
inline void clusterBarrier() {
    Cluster& c = (*clusters)[blockIdx.x / clusterSize];
    unsigned gen = c.generation.load();
    if (c.arrived.fetch_add(1) + 1 == clusterSize * blockDim.x) {
        c.arrived.store(0);
        c.generation.fetch_add(1);
        return;
    }
    while (c.generation.load() == gen) yield();
}
}  // namespace emu

// The cluster API the kernels use (cooperative_groups::this_cluster()).
namespace cooperative_groups {
struct cluster_group {
    unsigned block_rank() const { return blockIdx.x % emu::clusterSize; }
    void sync() const { emu::clusterBarrier(); }
    // The same variable in block `rank` of this cluster: dynamic shared memory at the same offset
    // of that block's buffer; a __shared__ (thread_local) variable at the same offset from that
    // block's OS thread's TLS (every thread's static TLS has the same layout).
    template <typename V> V* map_shared_rank(V* p, int rank) const {
        emu::Block* mine = emu::current;
        emu::Block* other = emu::blocks[blockIdx.x - block_rank() + rank];
        char* c = reinterpret_cast<char*>(p);
        char* lo = emu::alignedShared(mine);
        if (c >= mine->dynamicShared.data() && c < mine->dynamicShared.data() + mine->dynamicShared.size()) {
            return reinterpret_cast<V*>(emu::alignedShared(other) + (c - lo));
        }
        return reinterpret_cast<V*>(c + (other->tlsAnchor - mine->tlsAnchor));
    }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups

namespace emu {
inline void trampoline() {
    Block* b = current;
    threadIdx.x = b->running;
    b->body();
    b->fibers[b->running].done = true;
    // back to the scheduler for good (uc_link)
}

// Runs one block: every thread a fiber, resumed round-robin until all are done.
inline void runBlock(Block& b) {
    current = &b;
    for (unsigned t = 0; t < b.threads; t++) {
        Fiber& f = b.fibers[t];
        f.stack.resize(256 * 1024);
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = &b.scheduler;
        makecontext(&f.ctx, trampoline, 0);
    }
    for (;;) {
        bool any = false;
        for (unsigned t = 0; t < b.threads; t++) {
            if (b.fibers[t].done) continue;
            any = true;
            b.running = t;
            threadIdx.x = t;
            swapcontext(&b.scheduler, &b.fibers[t].ctx);
        }
        if (!any) break;
        sched_yield();  // a round done: let other blocks run (this one may be waiting for them)
    }
    current = nullptr;
}
}  // namespace emu

// Launches kernel(args...) on grid x block threads with `shared` bytes of dynamic shared memory:
// every block an OS thread, all at once (a cooperative launch's residency).
template <typename F>
inline void emuLaunch(unsigned grid, unsigned block, size_t shared, F kernel, unsigned cluster = 1) {
    gridDim.x = grid;
    blockDim.x = block;
    if (grid % cluster != 0) { std::fprintf(stderr, "emu: grid %u is not whole clusters of %u\n", grid, cluster); std::abort(); }
    emu::clusterSize = cluster;
    emu::blocks.assign(grid, nullptr);
    std::vector<emu::Cluster> clusters(grid / cluster);
    emu::clusters = &clusters;
    std::vector<std::thread> workers;
    for (unsigned g = 0; g < grid; g++) {
        workers.emplace_back([=] {
            emu::Block b;
            b.threads = block;
            b.fibers.resize(block);
            b.warpArrived.assign(block / 32, 0);
            b.warpGeneration.assign(block / 32, 0);
            b.warpSlots.assign(block, 0);
            b.dynamicShared.assign(shared + 16, 0);
            b.body = kernel;
            b.tlsAnchor = &emu::tlsAnchor;
            blockIdx.x = g;
            emu::blocks[g] = &b;  // read by cluster peers only after a cluster barrier, which all reach after this
            emu::runBlock(b);
        });
    }
    for (auto& w : workers) w.join();
}

inline void* emuDynamicShared() { return emu::alignedShared(emu::current); }

inline void __syncthreads() { emu::blockBarrier(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
// A spinning thread lets the block's other fibers run (and, once a round, other blocks).
inline void __nanosleep(unsigned) { emu::yield(); }
[[noreturn]] inline void __trap() { std::abort(); }

template <typename V> inline V emuShuffle(V v, unsigned srcLane) {
    static_assert(sizeof(V) <= 8, "8-byte lanes");
    emu::Block* b = emu::current;
    unsigned t = threadIdx.x, warp = t / 32, base = warp * 32;
    unsigned long long raw = 0;
    std::memcpy(&raw, &v, sizeof(V));
    b->warpSlots[t] = raw;
    emu::warpBarrier(warp);
    raw = b->warpSlots[base + (srcLane & 31)];
    emu::warpBarrier(warp);  // every lane has read before the slots are reused
    V out;
    std::memcpy(&out, &raw, sizeof(V));
    return out;
}
template <typename V> inline V __shfl_xor_sync(unsigned, V v, int o) { return emuShuffle(v, (threadIdx.x & 31) ^ (unsigned)o); }
template <typename V> inline V __shfl_sync(unsigned, V v, int src) { return emuShuffle(v, (unsigned)src); }
inline unsigned __reduce_add_sync(unsigned, unsigned v) {
    unsigned sum = 0;
    for (int lane = 0; lane < 32; lane++) sum += emuShuffle(v, (unsigned)lane);
    return sum;
}

inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { emu::jitter(); return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { emu::jitter(); return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
// L2 loads (read what another block wrote: a volatile read, never a value cached in a register)
template <typename V> inline V __ldcg(const V* p) { return *reinterpret_cast<const volatile V*>(p); }
template <typename V> inline V __ldg(const V* p) { return *p; }

inline float __expf(float x) { return expf(x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max(int64_t a, int64_t b) { return a > b ? a : b; }
