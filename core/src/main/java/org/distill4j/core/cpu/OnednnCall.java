package org.distill4j.core.cpu;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicIntegerArray;
import java.util.function.Consumer;
import org.distill4j.bindings.Downcalls;
import org.distill4j.bindings.dnnl.DnnlException;
import org.distill4j.bindings.dnnl.dnnl_h;

/**
 * The per-shape cache and the per-call contexts of the CPU backend's oneDNN primitives other than
 * matmul ({@link OnednnConv}, {@link OnednnPool}), in {@link OnednnMatmul}'s pattern:
 * <ul>
 *   <li>a problem is an int[] key (op, sizes, geometry, thread count) that the caller fills in
 *       its context's {@link Context#key} array; its primitive is created on first use and kept
 *       for the process ({@link #CACHE_LIMIT} problems; past that, made and destroyed per context);</li>
 *   <li>the scratchpad is ours (user mode), so a primitive runs from several threads at once;</li>
 *   <li>a call claims a context (stream, argument array, memory objects of its recent problems,
 *       scratchpad and buffers) from a fixed pool with one CAS, finds its problem among
 *       the context's recent ones by comparing keys, and re-points the memory objects at the
 *       caller's segments: nothing on the Java heap once warm.</li>
 * </ul>
 * A call that finds every context busy gets null from {@link #claim()} and runs on the fallback.
 */
final class OnednnCall {
    private static final int CACHE_LIMIT = 4096;
    private static final MemorySegment ENGINE = Onednn.engine();

    private OnednnCall() {}

    /**
     * One problem's primitive: its descriptor, the DNNL_ARG_* of each argument in the order the
     * caller binds them, with the memory descriptor the primitive takes for it (the creator lists
     * every descriptor it made in {@link #ownedDescs}, destroyed with the primitive). {@code primitive}
     * is null when oneDNN declined the problem.
     */
    static final class Primitive {
        final int[] key;
        final boolean cached;
        MemorySegment primitiveDesc, primitive;
        int[] args = new int[0];
        MemorySegment[] mds = new MemorySegment[0];
        /** Memory and primitive descriptors the creator made, destroyed with the primitive (a backward's forward hint among them). */
        final List<MemorySegment> ownedDescs = new ArrayList<>(), ownedPrimitiveDescs = new ArrayList<>();
        long scratchpadBytes;
        /** Bytes of a further buffer the op needs besides the caller's (max pooling's workspace); 0 if none. */
        long extraBytes;
        String implementation = "declined";

        Primitive(int[] key, boolean cached) {
            this.key = key;
            this.cached = cached;
        }

        /**
         * Per argument, the layout the primitive chose when it differs from the caller's (created
         * with format_tag_any, e.g. oneDNN's channel-blocked nChw16c), else null; with the reorder
         * primitive between the two (caller's -> the primitive's for an input, back for an output)
         * and the bytes of the context buffer that holds the argument in the primitive's layout.
         */
        MemorySegment[] innerMds = new MemorySegment[0], reorders = new MemorySegment[0];
        boolean[] outputs = new boolean[0];
        long[] innerBytes = new long[0];
        /** A u8 descriptor of the largest scratchpad among the primitive and its reorders (bound to every one of them in turn). */
        MemorySegment scratchMd = MemorySegment.NULL;

        /** A float32 memory descriptor of {@code dims} in format {@code tag}, owned by this primitive (destroyed with it). */
        MemorySegment desc(Arena arena, int tag, long... dims) {
            return descOfType(arena, dnnl_h.dnnl_f32, tag, dims);
        }

        /** As {@link #desc}, of data type {@code dataType} (dnnl_f32, dnnl_bf16); its own name so that int dims never bind to it by mistake. */
        MemorySegment descOfType(Arena arena, int dataType, int tag, long... dims) {
            MemorySegment md = plainOfType(arena, dataType, tag, dims);
            ownedDescs.add(md);
            return md;
        }

        /**
         * The forward primitive descriptor a backward primitive takes as its hint, from the status of
         * the forward's create call that wrote it to {@code out}; owned by this primitive. Null, with
         * this primitive left declined, when oneDNN has no such forward.
         */
        MemorySegment hint(int status, MemorySegment out, String what) {
            if (status == dnnl_h.dnnl_unimplemented) {
                implementation = "declined: no forward for the backward's hint";
                return null;
            }
            DnnlException.check(status, what + " (hint) for " + java.util.Arrays.toString(key));
            MemorySegment hint = out.get(ADDRESS, 0);
            ownedPrimitiveDescs.add(hint);
            return hint;
        }

        /** Records the arguments (DNNL_ARG_*, the caller's memory descriptor) in binding order. */
        void arguments(int[] args, MemorySegment... mds) {
            this.args = args;
            this.mds = mds;
            innerMds = new MemorySegment[mds.length];
            reorders = new MemorySegment[mds.length];
            outputs = new boolean[mds.length];
            innerBytes = new long[mds.length];
        }

        /**
         * Argument i as the primitive descriptor wants it ({@code chosen}, queried from it): when it
         * differs from the caller's descriptor, a reorder to it (an input) or from it (an output).
         */
        void layout(int i, MemorySegment chosen, boolean output, MemorySegment out) {
            if (dnnl_h.dnnl_memory_desc_equal(chosen, mds[i]) == 1) return;
            innerMds[i] = chosen;
            outputs[i] = output;
            innerBytes[i] = dnnl_h.dnnl_memory_desc_get_size(chosen);
            MemorySegment attr = userScratchpadAttr(out);
            try {
                DnnlException.check(dnnl_h.dnnl_reorder_primitive_desc_create(out, output ? chosen : mds[i], ENGINE, output ? mds[i] : chosen, ENGINE, attr),
                    "dnnl_reorder_primitive_desc_create");
            } finally {
                dnnl_h.dnnl_primitive_attr_destroy(attr);
            }
            MemorySegment pd = out.get(ADDRESS, 0);
            try {
                MemorySegment scratch = dnnl_h.dnnl_primitive_desc_query_md(pd, dnnl_h.dnnl_query_scratchpad_md, 0);
                if (!scratch.equals(MemorySegment.NULL)) scratchpadBytes = Math.max(scratchpadBytes, dnnl_h.dnnl_memory_desc_get_size(scratch));
                DnnlException.check(dnnl_h.dnnl_primitive_create(out, pd), "dnnl_primitive_create (reorder)");
                reorders[i] = out.get(ADDRESS, 0);
            } finally {
                dnnl_h.dnnl_primitive_desc_destroy(pd); // the primitive keeps its own copy
            }
        }

        /** Takes the primitive descriptor (call first, then {@link #arguments}, {@link #layout}, {@link #create}). */
        void descriptor(MemorySegment pd, MemorySegment out) {
            primitiveDesc = pd;
            if (dnnl_h.dnnl_primitive_desc_query(pd, dnnl_h.dnnl_query_impl_info_str, 0, out) == dnnl_h.dnnl_success) {
                implementation = Downcalls.cString(out.get(ADDRESS, 0), "?");
            }
            MemorySegment scratch = dnnl_h.dnnl_primitive_desc_query_md(pd, dnnl_h.dnnl_query_scratchpad_md, 0);
            if (!scratch.equals(MemorySegment.NULL)) scratchpadBytes = Math.max(scratchpadBytes, dnnl_h.dnnl_memory_desc_get_size(scratch));
        }

        /** Creates the primitive of the descriptor, and the scratchpad descriptor its calls (and its reorders') share. */
        void create(MemorySegment out) {
            if (scratchpadBytes > 0) {
                try (Arena arena = Arena.ofConfined()) {
                    DnnlException.check(dnnl_h.dnnl_memory_desc_create_with_tag(out, 1, arena.allocateFrom(JAVA_LONG, scratchpadBytes), dnnl_h.dnnl_u8,
                        dnnl_h.dnnl_a), "dnnl_memory_desc_create_with_tag (scratchpad)");
                }
                scratchMd = out.get(ADDRESS, 0);
                ownedDescs.add(scratchMd);
            }
            DnnlException.check(dnnl_h.dnnl_primitive_create(out, primitiveDesc), "dnnl_primitive_create");
            primitive = out.get(ADDRESS, 0);
            if (java.util.Arrays.stream(reorders).anyMatch(java.util.Objects::nonNull)) {
                StringBuilder b = new StringBuilder(implementation).append(" [reorders:");
                for (int i = 0; i < reorders.length; i++) if (reorders[i] != null) b.append(' ').append(outputs[i] ? "out" : "in").append(i);
                implementation = b.append(']').toString();
            }
        }

        void destroy() {
            for (MemorySegment r : reorders) if (r != null) dnnl_h.dnnl_primitive_destroy(r);
            if (primitive != null) dnnl_h.dnnl_primitive_destroy(primitive);
            if (primitiveDesc != null) dnnl_h.dnnl_primitive_desc_destroy(primitiveDesc); // owns the scratchpad descriptor
            for (MemorySegment pd : ownedPrimitiveDescs) dnnl_h.dnnl_primitive_desc_destroy(pd);
            for (MemorySegment md : ownedDescs) dnnl_h.dnnl_memory_desc_destroy(md);
        }
    }

    /** The int[] key as a map key (compared by content). */
    private record Key(int[] fields) {
        @Override
        public boolean equals(Object o) {
            return o instanceof Key k && Arrays.equals(fields, k.fields);
        }

        @Override
        public int hashCode() {
            return Arrays.hashCode(fields);
        }

        @Override
        public String toString() {
            return Arrays.toString(fields);
        }
    }

    private static final ConcurrentHashMap<Key, Primitive> CACHE = new ConcurrentHashMap<>();

    /** The oneDNN implementation of each cached problem whose key starts with {@code op}, e.g. "[1, 8, 3, ...] -> brg_conv_fwd:avx512_core". */
    static List<String> implementations(int op) {
        return CACHE.entrySet().stream().filter(e -> e.getKey().fields()[0] == op).map(e -> e.getKey() + " -> " + e.getValue().implementation)
            .sorted().toList();
    }

    /** Makes the primitive of a problem: {@code new Primitive(key, cached)}, filled in (left declined when oneDNN has no implementation). */
    interface Creator {
        Primitive create(int[] key, boolean cached);
    }

    private static Primitive primitive(int[] key, Creator create) {
        Key k = new Key(key);
        Primitive p = CACHE.get(k);
        if (p != null) return p;
        if (CACHE.size() >= CACHE_LIMIT) return create.create(key, false);
        return CACHE.computeIfAbsent(k, kk -> create.create(kk.fields(), true));
    }

    // ---- contexts

    private static final int CONTEXTS = 64;
    private static final Context[] POOL = new Context[CONTEXTS];
    private static final AtomicIntegerArray BUSY = new AtomicIntegerArray(CONTEXTS);

    /** What one call needs besides the primitive, used by one thread at a time (native memory kept for the process). */
    static final class Context {
        /**
         * RECENT: recent problems with their memory objects: a CNN's step has ~20 (each conv layer forward, backward-data, backward-weights).
         * MAX_ARGS: the most arguments of a call, its scratchpad included (batch norm's backward: 8 and the scratchpad).
         */
        private static final int RECENT = 32, MAX_ARGS = 9;
        final int index;
        /** The key of the problem at hand, filled by the caller before {@link #find}. */
        final int[] key = new int[24];
        private final MemorySegment stream, out, argArray, reorderArgs;
        private final Primitive[] recent = new Primitive[RECENT];
        private final MemorySegment[][] memories = new MemorySegment[RECENT][];
        private int replace, nargs, slot;
        private final Onednn.Scratch scratch = new Onednn.Scratch(); // kept for the process, as the context
        /** Buffers 0 and 1 for the ops' own use, 2 + i for argument i in the primitive's layout. */
        private final Arena[] bufferArenas = new Arena[2 + MAX_ARGS];
        private final MemorySegment[] buffers = new MemorySegment[2 + MAX_ARGS];

        Context(int index) {
            this.index = index;
            out = Arena.global().allocate(ADDRESS);
            DnnlException.check(dnnl_h.dnnl_stream_create(out, ENGINE, dnnl_h.dnnl_stream_default_flags), "dnnl_stream_create");
            stream = out.get(ADDRESS, 0);
            argArray = Arena.global().allocate(dnnl_h.dnnl_exec_arg_t.LAYOUT, MAX_ARGS);
            reorderArgs = Arena.global().allocate(dnnl_h.dnnl_exec_arg_t.LAYOUT, 3);
        }

        /**
         * Makes the problem of {@code key[0, length)} current, creating (or taking from the cache) its
         * primitive with {@code create} on a miss; returns it (its primitive is null when declined).
         */
        Primitive find(int length, Creator create) {
            for (int i = 0; i < RECENT; i++) {
                Primitive p = recent[i];
                if (p != null && Arrays.equals(p.key, 0, p.key.length, key, 0, length)) {
                    slot = i;
                    nargs = 0;
                    return p;
                }
            }
            Primitive p = primitive(Arrays.copyOf(key, length), create);
            install(p);
            nargs = 0;
            return p;
        }

        private void install(Primitive p) {
            slot = replace;
            replace = (replace + 1) % RECENT;
            release(slot);
            recent[slot] = p;
            if (p.primitive != null) {
                // [0, args): the caller's layouts; [args, 2 args): the primitive's where it differs; last: the scratchpad.
                int a = p.mds.length;
                MemorySegment[] mem = new MemorySegment[2 * a + 1];
                for (int i = 0; i < a; i++) {
                    mem[i] = memory(p.mds[i]);
                    if (p.innerMds[i] != null) mem[a + i] = memory(p.innerMds[i]);
                }
                mem[2 * a] = p.scratchpadBytes > 0 ? memory(p.scratchMd) : null;
                memories[slot] = mem;
            }
        }

        private void release(int s) {
            if (memories[s] != null) for (MemorySegment m : memories[s]) if (m != null) dnnl_h.dnnl_memory_destroy(m);
            memories[s] = null;
            if (recent[s] != null && !recent[s].cached) recent[s].destroy();
            recent[s] = null;
        }

        private MemorySegment memory(MemorySegment md) {
            return Onednn.memory(out, md, MemorySegment.NULL);
        }

        /**
         * Binds argument {@code i} (in the primitive's binding order) to the caller's {@code data};
         * where the primitive takes another layout, it gets a context buffer in that layout instead,
         * reordered from data before the primitive runs (an input) or into data after (an output).
         */
        void bind(int i, MemorySegment data) {
            Primitive p = recent[slot];
            MemorySegment memory = memories[slot][i];
            DnnlException.check(dnnl_h.dnnl_memory_set_data_handle(memory, data), "dnnl_memory_set_data_handle");
            if (p.innerMds[i] != null) {
                memory = memories[slot][p.mds.length + i];
                DnnlException.check(dnnl_h.dnnl_memory_set_data_handle(memory, buffer(2 + i, p.innerBytes[i])), "dnnl_memory_set_data_handle");
            }
            arg(argArray, nargs++, p.args[i], memory);
        }

        private static void arg(MemorySegment array, int index, int arg, MemorySegment memory) {
            Onednn.setArg(array, index, arg, memory);
        }

        /** Runs the current problem's primitive on the bound arguments (with its reorders, and the context's scratchpad) and waits for it. */
        void execute() {
            Primitive p = recent[slot];
            MemorySegment[] mem = memories[slot];
            int a = p.mds.length;
            MemorySegment scratchMemory = mem[2 * a];
            if (scratchMemory != null) {
                DnnlException.check(dnnl_h.dnnl_memory_set_data_handle(scratchMemory, scratch(p.scratchpadBytes)), "dnnl_memory_set_data_handle");
                arg(argArray, nargs++, dnnl_h.DNNL_ARG_SCRATCHPAD, scratchMemory);
            }
            for (int i = 0; i < a; i++) if (p.reorders[i] != null && !p.outputs[i]) reorder(p.reorders[i], mem[i], mem[a + i], scratchMemory);
            DnnlException.check(dnnl_h.dnnl_primitive_execute(p.primitive, stream, nargs, argArray), "dnnl_primitive_execute");
            for (int i = 0; i < a; i++) if (p.reorders[i] != null && p.outputs[i]) reorder(p.reorders[i], mem[a + i], mem[i], scratchMemory);
            DnnlException.check(dnnl_h.dnnl_stream_wait(stream), "dnnl_stream_wait");
            nargs = 0;
        }

        /** Enqueues one reorder on the stream (in order with the primitive). */
        private void reorder(MemorySegment reorder, MemorySegment from, MemorySegment to, MemorySegment scratchMemory) {
            arg(reorderArgs, 0, dnnl_h.DNNL_ARG_FROM, from);
            arg(reorderArgs, 1, dnnl_h.DNNL_ARG_TO, to);
            int n = 2;
            if (scratchMemory != null) arg(reorderArgs, n++, dnnl_h.DNNL_ARG_SCRATCHPAD, scratchMemory);
            DnnlException.check(dnnl_h.dnnl_primitive_execute(reorder, stream, n, reorderArgs), "dnnl_primitive_execute (reorder)");
        }

        private MemorySegment scratch(long bytes) {
            return scratch.at(bytes);
        }

        /** Buffer {@code which} (0 or 1 for the caller) of at least {@code bytes}, kept by the context (e.g. a gradient to add to the caller's). */
        MemorySegment buffer(int which, long bytes) {
            if (buffers[which] == null || buffers[which].byteSize() < bytes) {
                if (bufferArenas[which] != null) bufferArenas[which].close();
                bufferArenas[which] = Arena.ofShared();
                buffers[which] = bufferArenas[which].allocate(bytes, 64);
            }
            return buffers[which]; // at least bytes long; the whole segment, so a warm call makes no slice object
        }
    }

    /**
     * Claims a free context (starting at a slot picked by the thread's id, so a thread tends to get
     * its own back), or null when oneDNN is not usable here or all are busy. Give it back with
     * {@link #release(Context)}.
     */
    static Context claim() {
        if (ENGINE == null) return null;
        int start = (int) (Thread.currentThread().threadId() % CONTEXTS);
        for (int i = 0; i < CONTEXTS; i++) {
            int s = (start + i) % CONTEXTS;
            if (BUSY.compareAndSet(s, 0, 1)) {
                if (POOL[s] == null) {
                    try {
                        POOL[s] = new Context(s);
                    } catch (RuntimeException e) {
                        BUSY.set(s, 0);
                        throw e;
                    }
                }
                return POOL[s];
            }
        }
        return null;
    }

    static void release(Context ctx) {
        BUSY.set(ctx.index, 0);
    }

    // ---- descriptor helpers for the creators

    /**
     * A dense memory descriptor of {@code dims} in the given format tag (dnnl_nchw, dnnl_oihw, dnnl_a,
     * ...) and data type (dnnl_f32, dnnl_bf16); the caller destroys it ({@link Primitive#desc} makes
     * ones its primitive owns).
     */
    static MemorySegment plainOfType(Arena arena, int dataType, int tag, long... dims) {
        MemorySegment out = arena.allocate(ADDRESS);
        DnnlException.check(dnnl_h.dnnl_memory_desc_create_with_tag(out, dims.length, arena.allocateFrom(java.lang.foreign.ValueLayout.JAVA_LONG, dims),
            dataType, tag), "dnnl_memory_desc_create_with_tag");
        return out.get(ADDRESS, 0);
    }

    /**
     * Gives {@code attr} the post-op chain that {@code chain} appends to a new dnnl_post_ops_t (its
     * dnnl_post_ops_append_* calls, in order). The attribute keeps its own copy, so ours is
     * destroyed here. {@code out}: a pointer-sized scratch slot.
     */
    static void setPostOps(MemorySegment attr, MemorySegment out, Consumer<MemorySegment> chain) {
        DnnlException.check(dnnl_h.dnnl_post_ops_create(out), "dnnl_post_ops_create");
        MemorySegment postOps = out.get(ADDRESS, 0);
        try {
            chain.accept(postOps);
            DnnlException.check(dnnl_h.dnnl_primitive_attr_set_post_ops(attr, postOps), "dnnl_primitive_attr_set_post_ops");
        } finally {
            dnnl_h.dnnl_post_ops_destroy(postOps);
        }
    }

    /** Appends ReLU, max(y, +0), to a post-op chain (see {@link #setPostOps}). */
    static void appendRelu(MemorySegment postOps) {
        DnnlException.check(dnnl_h.dnnl_post_ops_append_eltwise(postOps, dnnl_h.dnnl_eltwise_relu, 0f, 0f), "dnnl_post_ops_append_eltwise");
    }

    /** A primitive attribute with the user scratchpad mode; the caller destroys it. */
    static MemorySegment userScratchpadAttr(MemorySegment out) {
        DnnlException.check(dnnl_h.dnnl_primitive_attr_create(out), "dnnl_primitive_attr_create");
        MemorySegment attr = out.get(ADDRESS, 0);
        DnnlException.check(dnnl_h.dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_h.dnnl_scratchpad_mode_user),
            "dnnl_primitive_attr_set_scratchpad_mode");
        return attr;
    }
}
