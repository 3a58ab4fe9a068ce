package org.distill4j.core.cpu;

import java.lang.foreign.MemorySegment;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.LockSupport;

/**
 * Splits one call's work between its calling thread and helper threads that spin for a while
 * after each piece of work: the intra-op parallelism of a Predictor with {@code intraOpThreads 0}
 * on the oneDNN engine (a batch split into row blocks, one row's gemv split into blocks of output
 * features; each piece single-threaded).
 *
 * <p>Why not the libraries' own pools: OpenBLAS's threaded gemv and oneDNN's OpenMP team both wait
 * for every one of their threads at each call. On a loaded 2-core machine that wait was a
 * scheduler slice (a one-row call's p50 went from 40 us to 24 ms, bench/RESULTS.md), and with 8
 * callers each OpenMP team oversubscribed the cores. Here the caller is never made to wait for a
 * helper that has not started: it takes parts until none are left, so a busy or sleeping helper
 * costs nothing but the offer; it waits only for parts a helper has already begun.
 *
 * <p>One job at a time: a caller that finds another caller's job still offered runs all its parts
 * itself (with many callers the callers are the parallelism). Helpers spin on the offer for
 * {@link #SPIN_NANOS} after their last part (back-to-back calls find them awake, as ONNX Runtime's
 * and OpenMP's spinning workers are), then park until the next offer.
 *
 * <p>Every thread that runs parts here, the helpers and a caller inside {@link #run}, runs oneDNN
 * single-threaded ({@link #inPart()}, read by {@link Onednn#threadsForThisCall()}): the split is the
 * parallelism. A part must not throw away the pool's thread: an exception in a helper's part is
 * rethrown by the caller.
 */
public final class IntraOpPool {
    /** How long a helper spins after its last part before it parks (200 us: a few calls' worth of gap). */
    static final long SPIN_NANOS = 200_000;

    /** One call's parts: {@code run(part, parts)} does part {@code part} of {@code parts}. */
    @FunctionalInterface
    public interface Parts {
        void run(int part, int parts);
    }

    private static final class Job {
        final Parts body;
        final int parts;
        final AtomicInteger next = new AtomicInteger();
        final AtomicInteger done = new AtomicInteger();
        volatile Throwable error;

        Job(Parts body, int parts) {
            this.body = body;
            this.parts = parts;
        }

        /** Takes and runs parts until none are left. */
        void work() {
            for (int p; (p = next.getAndIncrement()) < parts; ) {
                try {
                    body.run(p, parts);
                } catch (Throwable t) {
                    if (error == null) error = t;
                } finally {
                    done.incrementAndGet();
                }
            }
        }
    }

    private static final ThreadLocal<int[]> IN_PART = ThreadLocal.withInitial(() -> new int[1]);
    private static final ThreadLocal<IntraOpPool> BOUND = new ThreadLocal<>();
    private static volatile IntraOpPool shared;

    private final AtomicReference<Job> offered = new AtomicReference<>();
    private final Thread[] helpers;
    private final boolean[] parkedFlags; // written by its helper before parkedCount's increment, read by callers after reading it
    private final AtomicInteger parkedCount = new AtomicInteger();

    private IntraOpPool(int helperCount) {
        helpers = new Thread[helperCount];
        parkedFlags = new boolean[helperCount];
        for (int i = 0; i < helperCount; i++) {
            int index = i;
            helpers[i] = Thread.ofPlatform().daemon().name("distill4j-intra-op-" + i).unstarted(() -> helperLoop(index));
            helpers[i].start();
        }
    }

    /**
     * The process's pool: one helper per core beyond the first (none on one core), made on first
     * use; its threads are daemons and park when idle.
     */
    public static IntraOpPool shared() {
        IntraOpPool p = shared;
        if (p != null) return p;
        synchronized (IntraOpPool.class) {
            if (shared == null) shared = new IntraOpPool(Math.max(0, Runtime.getRuntime().availableProcessors() - 1));
            return shared;
        }
    }

    /**
     * Whether a helper may read and write {@code segment}: not a confined arena's (only its owner
     * thread may touch it), so the caller runs such work itself.
     */
    boolean reaches(MemorySegment segment) {
        return helpers.length == 0 || segment.isAccessibleBy(helpers[0]);
    }

    /** Threads a call can use at most: the caller and the helpers. */
    public int parallelism() {
        return helpers.length + 1;
    }

    /** Whether the calling thread is running a part of a job, or is a caller inside {@link #run}: oneDNN then runs single-threaded. */
    static boolean inPart() {
        return IN_PART.get()[0] > 0;
    }

    /**
     * The pool the calling thread is bound to ({@link #bind}), or null: what lets a gemm deep
     * inside a call (one row's gemv, {@link CpuBlas}) split itself.
     */
    static IntraOpPool bound() {
        return BOUND.get();
    }

    /** Binds the calling thread to this pool until {@link #unbind()} (not nested). */
    public void bind() {
        BOUND.set(this);
    }

    public static void unbind() {
        BOUND.remove();
    }

    /**
     * Runs parts 0 to {@code parts - 1}, some on helpers if any are free, and returns when all are
     * done; rethrows the first part's exception. Parts must be independent (write disjoint memory).
     */
    public void run(int parts, Parts body) {
        if (parts < 1) throw new IllegalArgumentException("parts must be >= 1, got " + parts);
        int[] depth = IN_PART.get();
        depth[0]++;
        try {
            Job job = new Job(body, parts);
            // Offered only when there is someone to help and no other caller's job is on offer
            // (then the callers are the parallelism); otherwise every part runs here.
            boolean offer = parts > 1 && helpers.length > 0 && offered.compareAndSet(null, job);
            if (offer && parkedCount.get() > 0) wakeParked();
            try {
                job.work();
            } finally {
                if (offer) offered.compareAndSet(job, null); // every part is taken: nothing left to offer
            }
            // Only parts a helper has begun are left. Spin a little, then yield: a helper preempted
            // mid-part (a loaded machine) needs a core to finish on.
            for (int spins = 0; job.done.get() < parts; spins++) {
                if (spins < 2_000) Thread.onSpinWait();
                else Thread.yield();
            }
            Throwable t = job.error;
            if (t instanceof RuntimeException r) throw r;
            if (t instanceof Error e) throw e;
            if (t != null) throw new IllegalStateException("an intra-op part failed: " + t, t);
        } finally {
            depth[0]--;
        }
    }

    private void wakeParked() {
        for (int i = 0; i < helpers.length; i++) {
            if (parkedFlags[i]) LockSupport.unpark(helpers[i]);
        }
    }

    private void helperLoop(int index) {
        IN_PART.get()[0] = 1; // a helper only ever runs parts
        long idleSince = System.nanoTime();
        while (true) {
            Job job = offered.get();
            if (job != null && job.next.get() < job.parts) {
                job.work();
                idleSince = System.nanoTime();
                continue;
            }
            if (System.nanoTime() - idleSince < SPIN_NANOS) {
                Thread.onSpinWait();
                continue;
            }
            // Park: announce it first, then look once more, so an offer made in between is not missed
            // (the caller reads parkedCount after its offer; unpark before park makes park return).
            parkedFlags[index] = true;
            parkedCount.incrementAndGet();
            Job again = offered.get();
            if (again == null || again.next.get() >= again.parts) LockSupport.park(this);
            parkedFlags[index] = false;
            parkedCount.decrementAndGet();
            idleSince = System.nanoTime();
        }
    }
}
