package org.distill4j.core.cuda;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.distill4j.bindings.cuda.CudaException.check;
import static org.distill4j.bindings.cuda.cuda_h.*;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * A captured and instantiated CUDA graph: a fixed sequence of kernels and copies replayed with one
 * cuGraphLaunch, so the host's per-step cost no longer grows with the number of ops.
 */
public final class CudaGraph implements org.distill4j.core.Backend.Graph {
    private final CudaContext context;
    private final MemorySegment graph;
    private final MemorySegment exec;
    private boolean closed;

    private CudaGraph(CudaContext context, MemorySegment graph, MemorySegment exec) {
        this.context = context;
        this.graph = graph;
        this.exec = exec;
    }

    static CudaGraph capture(CudaContext context, Runnable work) {
        context.makeCurrent();
        MemorySegment stream = context.stream();
        // THREAD_LOCAL: only this thread's unsafe calls (e.g. a synchronous cuMemcpy) invalidate the
        // capture; other threads using other streams are not disturbed.
        check(cuStreamBeginCapture_v2(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "cuStreamBeginCapture");
        RuntimeException failure = null;
        try {
            work.run();
        } catch (RuntimeException e) {
            failure = e;
        }
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment g = arena.allocate(ADDRESS);
            int r = cuStreamEndCapture(stream, g);
            if (failure != null) {
                if (r == CUDA_SUCCESS) cuGraphDestroy(g.get(ADDRESS, 0));
                throw failure;
            }
            check(r, "cuStreamEndCapture");
            MemorySegment graph = g.get(ADDRESS, 0);
            MemorySegment e = arena.allocate(ADDRESS);
            int ri = cuGraphInstantiateWithFlags(e, graph, 0L);
            if (ri != CUDA_SUCCESS) {
                cuGraphDestroy(graph);
                check(ri, "cuGraphInstantiateWithFlags");
            }
            return new CudaGraph(context, graph, e.get(ADDRESS, 0));
        }
    }

    /** The graph's nodes (kernels, copies, memsets...): what one replay runs, e.g. one per fused loss evaluation. */
    public long nodeCount() {
        if (closed) throw new IllegalStateException("CUDA graph is closed");
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment n = arena.allocate(JAVA_LONG);
            check(cuGraphGetNodes(graph, MemorySegment.NULL, n), "cuGraphGetNodes");
            return n.get(JAVA_LONG, 0);
        }
    }

    /** Enqueues one replay of the graph on the context's stream. */
    public void launch() {
        if (closed) throw new IllegalStateException("CUDA graph is closed");
        context.makeCurrent();
        check(cuGraphLaunch(exec, context.stream()), "cuGraphLaunch");
    }

    @Override
    public void replay() {
        launch();
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        context.makeCurrent();
        check(cuGraphExecDestroy(exec), "cuGraphExecDestroy");
        check(cuGraphDestroy(graph), "cuGraphDestroy");
    }
}
