package org.distill4j.core.infer;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.FloatBuffer;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.IntraOpPool;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.nn.InferencePlan;
import org.distill4j.core.nn.Layer;
import org.distill4j.core.nn.Model;
import org.distill4j.core.nn.ModelSpec;

/**
 * Embedded inference: a model in eval mode behind a thread-safe {@code predict}.
 *
 * <p>On the CPU a call runs on its caller's thread in an {@link InferencePlan.Workspace} (buffers for
 * {@code maxBatch} rows) taken from a bounded pool for the call and given back when it returns.
 * The pool holds at most {@link Options#cpuWorkspaces()} workspaces (default: the available
 * processors, the number of calls that can compute at once), made on demand; a call that finds
 * them all busy waits (parked, without holding a monitor, so a virtual thread unmounts) for the
 * first one given back. Native memory is therefore bounded by the pool, not by the number of
 * threads that ever called: a thread-per-request service on virtual threads is safe
 * ({@link #cpuWorkspacesCreated()} reports how many were made). Once the pool is warm a call
 * allocates nothing on the Java heap, and nothing natively through Distill4J (no workspace, no
 * {@link org.distill4j.core.cpu.CpuMemory} allocation; tested for an MLP and a CNN). By default each
 * call runs on its caller's thread only: while such a Predictor is open, OpenBLAS is held to one
 * thread per call ({@link org.distill4j.core.cpu.CpuBlas#holdSingleThreaded()}, process-wide); see
 * {@link Options#intraOpThreads()}.
 *
 * <p>On CUDA a call takes one of {@code gpuWorkers} workers, each with its own stream (a backend of
 * its own, with its cuBLAS and cuDNN handles) and copy of the weights: inputs are staged through
 * pinned memory into fixed device buffers and, per batch size, the forward pass is captured once
 * as a CUDA graph and replayed.
 *
 * <p>Optional dynamic batching: single-row calls from many threads are gathered by one dispatcher
 * into batches of up to {@code maxBatch} rows, waiting at most {@code maxWaitMicros} for more, then
 * split back; callers wait parked. (That path allocates when the dispatcher blocks on its queue.)
 *
 * <p>Closing waits for the calls in flight to finish; a call after close throws
 * {@link IllegalStateException}. Wrong input or output sizes throw
 * {@link IllegalArgumentException} naming what was expected and what was given.
 */
public final class Predictor implements AutoCloseable {
    /**
     * @param maxBatch        most rows run at once (longer inputs are split); the dynamic batch size
     * @param dynamicBatching gather concurrent single-row calls into batches
     * @param maxWaitMicros   how long the dispatcher waits for more rows once it has one
     * @param intraOpThreads  CPU only: 1 (default) runs each call on its caller's thread alone, BLAS
     *                        included (OpenBLAS and oneDNN are held to one thread, process-wide, while
     *                        the Predictor is open): right for many concurrent callers; 0 lets a call
     *                        use more cores: lower latency for a single caller. On the oneDNN engine
     *                        (the default) a call is split between its caller and the spinning helpers
     *                        of {@link IntraOpPool#shared()} (a batch of 8 or more rows into row blocks,
     *                        one row's large gemvs into feature blocks), each block single-threaded, and
     *                        a helper that is busy or asleep is never waited for; on the OpenBLAS
     *                        engine OpenBLAS keeps its own thread pool, on which concurrent callers queue
     * @param gpuWorkers      CUDA only: workers, each with its own backend (stream, cuBLAS and cuDNN
     *                        handles), copy of the weights, pinned buffers and graphs; calls take a
     *                        free worker, so this many batches are in flight at once
     * @param cpuWorkspaces   CPU only: the most workspaces (native buffers for {@code maxBatch} rows
     *                        each) the Predictor makes, so the most calls that compute at once; more
     *                        concurrent callers wait for a free one. Default
     *                        {@link #defaultCpuWorkspaces()}: the available processors, since a call
     *                        runs on its caller's thread and more workspaces than processors only
     *                        cost memory. Made on demand: a single caller makes one. With intraOpThreads 0 on the oneDNN
     *                        engine each may make one more per extra core, on first use, for the
     *                        parts of a split batch (not counted in cpuWorkspacesCreated)
     * @param computeDtype    CPU only: {@link DType#F32} (default), or {@link DType#BF16}: every matrix
     *                        product and convolution on weights and inputs rounded to bfloat16
     *                        (nearest even), float32 sums, everything else float32 (oneDNN's bf16
     *                        kernels on the oneDNN engine, an exact but slow Java loop on the others;
     *                        {@link InferencePlan}). A CUDA Predictor refuses BF16.
     */
    public record Options(int maxBatch, boolean dynamicBatching, long maxWaitMicros, int intraOpThreads, int gpuWorkers, int cpuWorkspaces,
                          DType computeDtype) {
        public Options {
            if (computeDtype != DType.F32 && computeDtype != DType.BF16) {
                throw new IllegalArgumentException("computeDtype must be F32 or BF16, got " + computeDtype);
            }
            if (maxBatch < 1) throw new IllegalArgumentException("maxBatch must be >= 1, got " + maxBatch);
            if (maxWaitMicros < 0) throw new IllegalArgumentException("maxWaitMicros must be >= 0, got " + maxWaitMicros);
            if (intraOpThreads != 0 && intraOpThreads != 1) {
                throw new IllegalArgumentException("intraOpThreads must be 1 (the caller's thread) or 0 (more cores per call), got " + intraOpThreads);
            }
            if (gpuWorkers < 1) throw new IllegalArgumentException("gpuWorkers must be >= 1, got " + gpuWorkers);
            if (cpuWorkspaces < 1) throw new IllegalArgumentException("cpuWorkspaces must be >= 1, got " + cpuWorkspaces);
        }

        public Options(int maxBatch, boolean dynamicBatching, long maxWaitMicros, int intraOpThreads, int gpuWorkers, int cpuWorkspaces) {
            this(maxBatch, dynamicBatching, maxWaitMicros, intraOpThreads, gpuWorkers, cpuWorkspaces, DType.F32);
        }

        public Options(int maxBatch, boolean dynamicBatching, long maxWaitMicros) {
            this(maxBatch, dynamicBatching, maxWaitMicros, 1, 2);
        }

        public Options(int maxBatch, boolean dynamicBatching, long maxWaitMicros, int intraOpThreads) {
            this(maxBatch, dynamicBatching, maxWaitMicros, intraOpThreads, 2);
        }

        public Options(int maxBatch, boolean dynamicBatching, long maxWaitMicros, int intraOpThreads, int gpuWorkers) {
            this(maxBatch, dynamicBatching, maxWaitMicros, intraOpThreads, gpuWorkers, defaultCpuWorkspaces());
        }

        /** maxBatch 64, no dynamic batching, one thread per call, 2 GPU workers, {@link #defaultCpuWorkspaces()} CPU workspaces. */
        public static Options defaults() {
            return new Options(64, false, 200, 1, 2);
        }

        /** These options with at most {@code cpuWorkspaces} CPU workspaces. */
        public Options withCpuWorkspaces(int cpuWorkspaces) {
            return new Options(maxBatch, dynamicBatching, maxWaitMicros, intraOpThreads, gpuWorkers, cpuWorkspaces, computeDtype);
        }

        /** These options computing in {@code dtype}: F32, or BF16 (bf16 weights and inputs, float32 sums; CPU only). */
        public Options withComputeDtype(DType dtype) {
            return new Options(maxBatch, dynamicBatching, maxWaitMicros, intraOpThreads, gpuWorkers, cpuWorkspaces, dtype);
        }

        /**
         * {@link Runtime#availableProcessors()} (which honours CPU affinity and container limits): the
         * calls that can compute at once, each on its caller's thread; also the parallelism of the
         * virtual-thread scheduler, so virtual-thread callers never wait for a workspace while a
         * carrier is idle.
         */
        public static int defaultCpuWorkspaces() {
            return Runtime.getRuntime().availableProcessors();
        }
    }

    /** A place to run up to maxBatch rows: host input/output segments of the engine. */
    private interface Engine extends AutoCloseable {
        Slot acquire();

        void release(Slot slot);

        @Override
        void close();
    }

    private abstract static class Slot {
        final MemorySegment input, output;

        Slot(MemorySegment input, MemorySegment output) {
            this.input = input;
            this.output = output;
        }

        abstract void run(int rows);
    }

    private final Model model;
    private final boolean ownsModel;
    private final Options options;
    private final long inputSize, outputSize;
    private final long[] inputShape, outputShape;
    private final Engine engine;
    private final Batcher batcher;
    private final AtomicInteger inFlight = new AtomicInteger();
    private volatile boolean closed;

    private Predictor(Model model, boolean ownsModel, Options options) {
        this.model = model;
        this.ownsModel = ownsModel;
        this.options = options;
        this.inputShape = model.inputShape();
        this.outputShape = model.outputShape();
        this.inputSize = Tensor.numel(inputShape);
        this.outputSize = Tensor.numel(outputShape);
        Backend backend = model.parameters().isEmpty() ? null : model.parameters().getFirst().value().backend();
        if (options.computeDtype() == DType.BF16 && backend != null && !backend.isHost()) {
            throw new IllegalArgumentException("a bf16 Predictor runs on the CPU backend only so far, not " + backend.name() + ": use F32 there");
        }
        this.engine = backend == null || backend.isHost()
            ? new CpuEngine(InferencePlan.compile(model, options.maxBatch(), ownsModel, options.computeDtype()), options.intraOpThreads() == 1, options.cpuWorkspaces())
            : new CudaEngine((CudaBackend) backend, model, options, inputShape, outputShape);
        this.batcher = options.dynamicBatching() ? new Batcher() : null;
    }

    /** Builds the model of {@code spec} on {@code backend}, loads {@code weights} and serves it; the Predictor owns (and closes) the model. */
    public static Predictor load(Backend backend, Path spec, Path weights, Options options) throws IOException {
        Model m = ModelSpec.read(spec).build(backend, 0);
        try {
            m.load(weights);
            return new Predictor(m, true, options);
        } catch (IOException | RuntimeException e) {
            m.close();
            throw e;
        }
    }

    /**
     * Serves a model already in memory (e.g. a student just trained); the caller keeps it. On the
     * oneDNN CPU engine the Predictor packs its own copy of the linear layers' weights when it is
     * made and serves those (writes to the model afterwards are not seen: make a new Predictor to
     * serve new weights); other layers read the model's tensors, so do not train it while serving.
     */
    public static Predictor of(Model model, Options options) {
        return new Predictor(model, false, options);
    }

    public long[] inputShape() { return inputShape.clone(); }
    public long[] outputShape() { return outputShape.clone(); }

    /**
     * How many CPU workspaces this Predictor has made so far: at most {@link Options#cpuWorkspaces()},
     * however many threads have called it (0 on CUDA, whose workers are made up front). For tests
     * and monitoring: each one holds {@code maxBatch} rows of every intermediate buffer natively.
     */
    public int cpuWorkspacesCreated() {
        return engine instanceof CpuEngine cpu ? cpu.created() : 0;
    }

    /** Floats per input row (the product of the input shape) and per output row. */
    public long inputSize() { return inputSize; }
    public long outputSize() { return outputSize; }

    /** Logits for {@code input} (rows x inputSize floats) into {@code output} (at least rows x outputSize). */
    public void predict(float[] input, float[] output) {
        int rows = rows(input.length, output.length);
        enter();
        try {
            if (batcher != null && rows == 1) {
                batcher.single(MemorySegment.ofArray(input), 0, output);
                return;
            }
            for (int done = 0; done < rows; done += options.maxBatch()) {
                int n = Math.min(options.maxBatch(), rows - done);
                Slot s = engine.acquire();
                try {
                    MemorySegment.copy(input, (int) (done * inputSize), s.input, JAVA_FLOAT, 0, (int) (n * inputSize));
                    s.run(n);
                    MemorySegment.copy(s.output, JAVA_FLOAT, 0, output, (int) (done * outputSize), (int) (n * outputSize));
                } finally {
                    engine.release(s);
                }
            }
        } finally {
            exit();
        }
    }

    /** Convenience: allocates the output. */
    public float[] predict(float[] input) {
        float[] out = new float[(int) (rows(input.length, Integer.MAX_VALUE) * outputSize)];
        predict(input, out);
        return out;
    }

    /** As {@link #predict(float[], float[])} for buffers: from {@code input}'s position to its limit, into {@code output} at its position (positions unchanged). */
    public void predict(FloatBuffer input, FloatBuffer output) {
        int rows = rows(input.remaining(), output.remaining());
        enter();
        try {
            int inBase = input.position(), outBase = output.position();
            for (int done = 0; done < rows; done += options.maxBatch()) {
                int n = Math.min(options.maxBatch(), rows - done);
                Slot s = engine.acquire();
                try {
                    long in0 = (long) done * inputSize;
                    for (long i = 0; i < n * inputSize; i++) s.input.setAtIndex(JAVA_FLOAT, i, input.get((int) (inBase + in0 + i)));
                    s.run(n);
                    long out0 = (long) done * outputSize;
                    for (long i = 0; i < n * outputSize; i++) output.put((int) (outBase + out0 + i), s.output.getAtIndex(JAVA_FLOAT, i));
                } finally {
                    engine.release(s);
                }
            }
        } finally {
            exit();
        }
    }

    /** As {@link #predict(float[], float[])} for memory segments of float32 (sizes in bytes: multiples of 4). */
    public void predict(MemorySegment input, MemorySegment output) {
        if (input.byteSize() % Float.BYTES != 0 || output.byteSize() % Float.BYTES != 0) {
            throw new IllegalArgumentException("predict: segments hold float32; got " + input.byteSize() + " and " + output.byteSize() + " bytes");
        }
        int rows = rows(input.byteSize() / Float.BYTES, output.byteSize() / Float.BYTES);
        enter();
        try {
            for (int done = 0; done < rows; done += options.maxBatch()) {
                int n = Math.min(options.maxBatch(), rows - done);
                Slot s = engine.acquire();
                try {
                    MemorySegment.copy(input, done * inputSize * Float.BYTES, s.input, 0, n * inputSize * Float.BYTES);
                    s.run(n);
                    MemorySegment.copy(s.output, 0, output, done * outputSize * Float.BYTES, n * outputSize * Float.BYTES);
                } finally {
                    engine.release(s);
                }
            }
        } finally {
            exit();
        }
    }

    private int rows(long inputFloats, long outputFloats) {
        if (inputFloats == 0 || inputFloats % inputSize != 0) {
            throw new IllegalArgumentException("predict: the input holds " + inputFloats + " floats; expected a positive multiple of " + inputSize
                + " (rows of " + Arrays.toString(inputShape) + ")");
        }
        long rows = inputFloats / inputSize;
        if (outputFloats < rows * outputSize) {
            throw new IllegalArgumentException("predict: the output holds " + outputFloats + " floats; " + rows + " rows need " + rows * outputSize
                + " (rows of " + Arrays.toString(outputShape) + ")");
        }
        if (rows > Integer.MAX_VALUE) throw new IllegalArgumentException("predict: " + rows + " rows in one call is too many");
        return (int) rows;
    }

    private void enter() {
        inFlight.incrementAndGet();
        if (closed) {
            inFlight.decrementAndGet();
            throw new IllegalStateException("predictor is closed");
        }
    }

    private void exit() {
        inFlight.decrementAndGet();
    }

    /** Waits for the calls in flight, then frees everything (and the model, when it was loaded by {@link #load}). */
    @Override
    public void close() {
        if (closed) return;
        closed = true;
        while (inFlight.get() > 0) LockSupport.parkNanos(100_000);
        if (batcher != null) batcher.stop();
        engine.close();
        if (ownsModel) model.close();
    }

    // ---- CPU: a bounded pool of workspaces, one per call in flight

    private static final class CpuEngine implements Engine {
        private final InferencePlan plan;
        private final boolean singleThreaded;
        /** The CPU engine is oneDNN (fixed per process): OpenBLAS serves only the small calls. */
        private final boolean onednn = org.distill4j.core.cpu.CpuBlas.engine() == org.distill4j.core.cpu.CpuEngine.ONEDNN;
        private final int capacity;
        // Free workspaces. ArrayBlockingQueue: j.u.c. locks, so a virtual thread waiting in take()
        // unmounts instead of pinning its carrier; a fixed array, so an acquire/release pair
        // allocates nothing. Not fair: a fair lock hands every released workspace to the longest
        // waiter, a context switch per call once callers outnumber workspaces; 32 platform threads
        // on 2 workspaces made 157k calls in 8 s fair and 4.2M unfair (PredictorServiceTest,
        // 2-core machine, 2026-12-06). Waiters still wake in order; a newly arriving caller may
        // take a workspace first.
        private final ArrayBlockingQueue<CpuSlot> free;
        private final AtomicInteger created = new AtomicInteger();
        private final List<InferencePlan.Workspace> all = new CopyOnWriteArrayList<>(); // closed at close
        /**
         * With the libraries' pools on the oneDNN engine: the pool that splits a call between its
         * caller and spinning helpers (a batch into row blocks on workspaces of their own, one row's
         * gemvs into feature blocks); null otherwise, or on one core.
         */
        private final IntraOpPool splitPool;
        /** Calls computing now (on the split path): a call splits only while fewer than the pool's threads compute. */
        private final AtomicInteger computing = new AtomicInteger();

        CpuEngine(InferencePlan plan, boolean singleThreaded, int capacity) {
            this.plan = plan;
            this.singleThreaded = singleThreaded;
            this.capacity = capacity;
            IntraOpPool pool = !singleThreaded && onednn ? IntraOpPool.shared() : null;
            this.splitPool = pool != null && pool.parallelism() > 1 ? pool : null;
            this.free = new ArrayBlockingQueue<>(capacity, false);
            // Parallelism comes from the callers: each call runs on its own thread, BLAS included.
            // With the libraries' pools on the oneDNN engine, OpenBLAS still runs single-threaded:
            // its calls here are the small ones (one row, a narrow head), where waiting for its
            // second thread costs more than it saves (CpuBlas.holdOpenBlasSingleThreaded).
            if (singleThreaded) org.distill4j.core.cpu.CpuBlas.holdSingleThreaded();
            else if (onednn) org.distill4j.core.cpu.CpuBlas.holdOpenBlasSingleThreaded();
        }

        int created() {
            return created.get();
        }

        /** A free workspace, else a new one while fewer than capacity exist, else the first one given back. */
        @Override
        public Slot acquire() {
            CpuSlot s = free.poll();
            if (s != null) return s;
            for (int n = created.get(); n < capacity; n = created.get()) {
                if (created.compareAndSet(n, n + 1)) {
                    InferencePlan.Workspace w;
                    try {
                        w = plan.newWorkspace();
                    } catch (RuntimeException | OutOfMemoryError e) {
                        created.decrementAndGet();
                        throw e;
                    }
                    all.add(w);
                    return new CpuSlot(w, splitPool, all, plan, computing);
                }
            }
            try {
                return free.take();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted while waiting for a CPU workspace (all " + capacity + " busy)", e);
            }
        }

        @Override
        public void release(Slot slot) {
            free.add((CpuSlot) slot); // never full: at most capacity workspaces exist
        }

        @Override
        public void close() {
            all.forEach(InferencePlan.Workspace::close);
            plan.close(); // the packed weights, after the workspaces' contexts
            if (singleThreaded) org.distill4j.core.cpu.CpuBlas.releaseSingleThreaded();
            else if (onednn) org.distill4j.core.cpu.CpuBlas.releaseOpenBlasSingleThreaded();
        }
    }

    private static final class CpuSlot extends Slot {
        /** Fewest rows a part of a split batch gets (smaller blocks lose more to per-call costs than a second core gains). */
        private static final int MIN_ROWS_PER_PART = 4;
        private final InferencePlan.Workspace w;
        private final IntraOpPool pool;
        /** Workspaces of parts 1, 2, ... of a split batch (part 0 runs on w), made on first use; closed with the engine's. */
        private final InferencePlan.Workspace[] partSpaces;
        private final List<InferencePlan.Workspace> engineWorkspaces;
        private final InferencePlan plan;
        private final IntraOpPool.Parts runPart = this::runPart; // one object, not one per call
        private int rowsNow; // the call in flight (a slot runs one call at a time)

        private final AtomicInteger computing;

        CpuSlot(InferencePlan.Workspace w, IntraOpPool pool, List<InferencePlan.Workspace> engineWorkspaces, InferencePlan plan, AtomicInteger computing) {
            super(w.input(), w.output());
            this.w = w;
            this.pool = pool;
            this.computing = computing;
            this.engineWorkspaces = engineWorkspaces;
            this.plan = plan;
            this.partSpaces = new InferencePlan.Workspace[pool == null ? 0 : pool.parallelism()];
        }

        @Override
        void run(int rows) {
            if (pool == null) {
                w.run(rows);
                return;
            }
            // As many calls computing as threads: no core is idle, the callers are the parallelism, and
            // each call runs single-threaded (a one-part job), as with intraOpThreads 1; a helper spinning
            // beside them would only take cores from them (8 callers, one row: 0.7x unsplit).
            boolean alone = computing.incrementAndGet() < pool.parallelism();
            if (alone) pool.bind(); // one row: its large gemvs split themselves (CpuBlas)
            try {
                int parts = alone ? Math.min(pool.parallelism(), rows / MIN_ROWS_PER_PART) : 1;
                if (parts < 2) {
                    rowsNow = rows;
                    pool.run(1, runPart);
                    return;
                }
                for (int p = 1; p < parts; p++) {
                    if (partSpaces[p] == null) {
                        partSpaces[p] = plan.newWorkspace();
                        engineWorkspaces.add(partSpaces[p]);
                    }
                }
                rowsNow = rows;
                pool.run(parts, runPart);
            } finally {
                if (alone) IntraOpPool.unbind();
                computing.decrementAndGet();
            }
        }

        /**
         * Rows [lo, hi) of the call: part 0 on the slot's own workspace in place (its first rows),
         * the others copied into their workspace's first rows and their outputs copied back. The
         * parts read disjoint input rows and write disjoint output rows.
         */
        private void runPart(int part, int parts) {
            int rows = rowsNow;
            int lo = (int) ((long) rows * part / parts), hi = (int) ((long) rows * (part + 1) / parts);
            if (part == 0) {
                w.run(hi);
                return;
            }
            InferencePlan.Workspace x = partSpaces[part];
            long in = plan.inputSize() * Float.BYTES, out = plan.outputSize() * Float.BYTES;
            MemorySegment.copy(w.input(), lo * in, x.input(), 0, (hi - lo) * in);
            x.run(hi - lo);
            MemorySegment.copy(x.output(), 0, w.output(), lo * out, (hi - lo) * out);
        }
    }

    // ---- CUDA: workers, each with its own stream, weights, pinned staging and a graph per batch size

    private static final class CudaEngine implements Engine {
        private final ArrayBlockingQueue<CudaWorker> free;
        private final List<CudaWorker> workers = new java.util.ArrayList<>();

        CudaEngine(CudaBackend gpu, Model model, Options options, long[] inputShape, long[] outputShape) {
            free = new ArrayBlockingQueue<>(options.gpuWorkers());
            try {
                workers.add(CudaWorker.create(gpu, model, false, options.maxBatch(), inputShape, outputShape));
                for (int i = 1; i < options.gpuWorkers(); i++) {
                    // A backend of its own (stream, handles) and a copy of the weights, through the host.
                    CudaBackend own = gpu.peer();  // computes as the backend it was given (math mode)
                    Model copy = model.spec().build(own, 0);
                    try (Arena a = Arena.ofConfined()) {
                        for (int p = 0; p < model.parameters().size(); p++) {
                            Tensor from = model.parameters().get(p).value(), to = copy.parameters().get(p).value();
                            MemorySegment host = a.allocate(Math.max(1, from.byteSize()), 64).asSlice(0, from.byteSize());
                            from.backend().copyToHost(from, host);
                            own.copyFromHost(host, to);
                        }
                    }
                    workers.add(CudaWorker.create(own, copy, true, options.maxBatch(), inputShape, outputShape));
                }
            } catch (RuntimeException e) {
                workers.forEach(CudaWorker::close);
                throw e;
            }
            free.addAll(workers);
        }

        @Override
        public Slot acquire() {
            try {
                return free.take();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted while waiting for a GPU worker", e);
            }
        }

        @Override
        public void release(Slot s) {
            free.add((CudaWorker) s);
        }

        @Override
        public void close() {
            workers.forEach(CudaWorker::close);
        }
    }

    private static final class CudaWorker extends Slot {
        private final CudaBackend gpu;
        private final Model model;
        private final boolean owns;
        private final Arena arena;
        private final Tensor[] inViews, outViews;
        private final Backend.Graph[] graphs;

        private CudaWorker(CudaBackend gpu, Model model, boolean owns, int maxBatch, Arena arena, Tensor in, Tensor out) {
            super(gpu.allocateHost(arena, in.byteSize()), gpu.allocateHost(arena, out.byteSize()));
            this.gpu = gpu;
            this.model = model;
            this.owns = owns;
            this.arena = arena;
            inViews = new Tensor[maxBatch + 1];
            outViews = new Tensor[maxBatch + 1];
            for (int n = 1; n <= maxBatch; n++) {
                inViews[n] = in.narrow0(0, n);
                outViews[n] = out.narrow0(0, n);
            }
            graphs = new Backend.Graph[maxBatch + 1];
        }

        /** Fixed device input/output buffers of {@code maxBatch} rows, pinned staging of the same size, no graphs yet. */
        static CudaWorker create(CudaBackend gpu, Model model, boolean owns, int maxBatch, long[] inputShape, long[] outputShape) {
            Arena arena = Arena.ofShared();
            try {
                return new CudaWorker(gpu, model, owns, maxBatch, arena, gpu.empty(arena, DType.F32, withBatch(maxBatch, inputShape)),
                    gpu.empty(arena, DType.F32, withBatch(maxBatch, outputShape)));
            } catch (RuntimeException e) {
                arena.close();
                throw e;
            }
        }

        @Override
        void run(int rows) {
            try (Backend.Fence f = gpu.copyFromHostAsync(input.asSlice(0, inViews[rows].byteSize()), inViews[rows])) {
                if (graphs[rows] == null) {
                    Tensor x = inViews[rows], y = outViews[rows];
                    graphs[rows] = gpu.capture(() -> {
                        try (Arena a = Arena.ofShared()) {
                            gpu.copy(model.forward(new Layer.Pass(gpu, a, false, 0, 0), x), y);
                        }
                    });
                }
                graphs[rows].replay();
                gpu.copyToHost(outViews[rows], output); // synchronises this worker's stream: the answer is ready
                f.await();
            }
        }

        void close() {
            for (Backend.Graph g : graphs) if (g != null) g.close();
            gpu.synchronize();
            arena.close();
            if (owns) {
                model.close();
                gpu.close();
            }
        }

        private static long[] withBatch(long n, long[] shape) {
            long[] s = new long[shape.length + 1];
            s[0] = n;
            System.arraycopy(shape, 0, s, 1, shape.length);
            return s;
        }
    }

    // ---- dynamic batching

    /** One waiting single-row call (one per calling thread, reused). */
    private static final class Request {
        final Thread caller = Thread.currentThread();
        MemorySegment input;
        long inputOffset;
        float[] output;
        volatile boolean done;
        RuntimeException failure;
    }

    private final class Batcher {
        private final ArrayBlockingQueue<Request> queue = new ArrayBlockingQueue<>(65536);
        private final ThreadLocal<Request> requests = ThreadLocal.withInitial(Request::new);
        private final Thread dispatcher;
        private volatile boolean running = true;

        Batcher() {
            dispatcher = Thread.ofPlatform().daemon().name("distill4j-batcher").start(this::loop);
        }

        void single(MemorySegment input, long offset, float[] output) {
            Request r = requests.get();
            r.input = input;
            r.inputOffset = offset;
            r.output = output;
            r.failure = null;
            r.done = false;
            if (!queue.offer(r)) throw new IllegalStateException("predict: the dynamic-batching queue is full (65,536 waiting calls)");
            while (!r.done) LockSupport.park(this);
            if (r.failure != null) throw r.failure;
        }

        private void loop() {
            Request[] batch = new Request[options.maxBatch()];
            while (running || !queue.isEmpty()) {
                try {
                    Request first = queue.poll(10, TimeUnit.MILLISECONDS);
                    if (first == null) continue;
                    batch[0] = first;
                    int n = 1;
                    long deadline = System.nanoTime() + options.maxWaitMicros() * 1000;
                    while (n < batch.length) {
                        Request r = queue.poll();
                        if (r == null) {
                            long left = deadline - System.nanoTime();
                            if (left <= 0) break;
                            r = queue.poll(left, TimeUnit.NANOSECONDS);
                            if (r == null) break;
                        }
                        batch[n++] = r;
                    }
                    run(batch, n);
                } catch (InterruptedException e) {
                    if (!running) return;
                }
            }
        }

        private void run(Request[] batch, int n) {
            RuntimeException failure = null;
            Slot s = engine.acquire();
            try {
                for (int i = 0; i < n; i++) MemorySegment.copy(batch[i].input, batch[i].inputOffset, s.input, i * inputSize * Float.BYTES, inputSize * Float.BYTES);
                s.run(n);
                for (int i = 0; i < n; i++) MemorySegment.copy(s.output, JAVA_FLOAT, i * outputSize * Float.BYTES, batch[i].output, 0, (int) outputSize);
            } catch (RuntimeException e) {
                failure = e;
            } finally {
                engine.release(s);
            }
            for (int i = 0; i < n; i++) {
                Request r = batch[i];
                batch[i] = null;
                r.failure = failure;
                r.done = true;
                LockSupport.unpark(r.caller);
            }
        }

        void stop() {
            running = false;
            try {
                dispatcher.join();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }
}
