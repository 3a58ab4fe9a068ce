package org.distill4j.core.data;

import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.NoSuchElementException;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Philox;
import org.distill4j.core.Tensor;

/**
 * Batches of a dataset, assembled on a loader thread into one of two host buffers while the
 * caller computes on the other (double buffering), then copied to the backend's device.
 *
 * <p>Order: with shuffling, each epoch is a Fisher-Yates permutation drawn with Philox from
 * (seed, epoch), so runs and resumes are reproducible. A batch returned by {@link #next()} stays
 * valid until the following call to {@code next()}.
 *
 * <p>On the CPU the host buffers are the batch tensors themselves. On CUDA they are page-locked
 * buffers: handing a batch out enqueues asynchronous copies to that slot's device tensors and
 * records an event; the loader thread waits for the event before it refills the slot's host
 * buffer. Ops enqueued after {@code next()} see the data through stream order, so the GPU never
 * waits on the host once the loader keeps ahead.
 */
public final class DataLoader implements AutoCloseable {
    /** One batch: x [rows, ...sample], y I64 [rows]. */
    public record Batch(Tensor x, Tensor y, int rows, long firstPosition) {}

    private long[] epochOrder; // of the epoch start() began

    private static final class Slot {
        final MemorySegment hostX, hostY;
        final Tensor x, y;
        Backend.Fence copied = Backend.Fence.DONE; // the host-to-device copy out of hostX/hostY

        Slot(MemorySegment hostX, MemorySegment hostY, Tensor x, Tensor y) {
            this.hostX = hostX;
            this.hostY = hostY;
            this.x = x;
            this.y = y;
        }
    }

    private record Filled(Slot slot, int rows, long firstPosition, RuntimeException failure, boolean end) {}

    private final Dataset dataset;
    private final Backend backend;
    private final int batchSize;
    private final boolean shuffle, dropLast;
    private final long seed;
    private final Arena arena = Arena.ofShared();
    private final java.util.List<Slot> slots = new java.util.ArrayList<>();
    private final BlockingQueue<Slot> free = new ArrayBlockingQueue<>(2);
    private final BlockingQueue<Filled> filled = new ArrayBlockingQueue<>(3);
    private Thread loader;
    private Filled current;
    private Filled pending;
    private volatile boolean closed;

    public DataLoader(Dataset dataset, Backend backend, int batchSize, boolean shuffle, long seed, boolean dropLast) {
        if (batchSize < 1) throw new IllegalArgumentException("batch size must be >= 1, got " + batchSize);
        this.dataset = dataset;
        this.backend = backend;
        this.batchSize = batchSize;
        this.shuffle = shuffle;
        this.seed = seed;
        this.dropLast = dropLast;
        long per = dataset.sampleSize();
        long[] xShape = new long[dataset.sampleShape().length + 1];
        xShape[0] = batchSize;
        System.arraycopy(dataset.sampleShape(), 0, xShape, 1, dataset.sampleShape().length);
        boolean cpu = backend.isHost();
        // (slots are handed to the loader by start())
        for (int i = 0; i < 2; i++) {
            Tensor x = backend.empty(arena, DType.F32, xShape), y = backend.empty(arena, DType.I64, batchSize);
            MemorySegment hx = cpu ? x.data() : backend.allocateHost(arena, batchSize * per * 4);
            MemorySegment hy = cpu ? y.data() : backend.allocateHost(arena, batchSize * 8L);
            slots.add(new Slot(hx, hy, x, y));
        }
    }

    /** Batches per epoch. */
    public long batchesPerEpoch() {
        long n = dataset.size();
        return dropLast ? n / batchSize : (n + batchSize - 1) / batchSize;
    }

    /** The sample order of an epoch (a permutation when shuffling, the identity otherwise). */
    public long[] order(int epoch) {
        return epochOrder(dataset.size(), epoch, seed, shuffle);
    }

    /**
     * The order of {@code n} items in {@code epoch}: a Fisher-Yates permutation drawn from Philox
     * stream (seed, epoch) when shuffling, else 0, 1, 2, ... The rule every loader shares (samples
     * here, token windows in {@link TokenWindows}), so a seed means the same order everywhere.
     */
    public static long[] epochOrder(long n, int epoch, long seed, boolean shuffle) {
        long[] order = new long[Math.toIntExact(n)];
        for (int i = 0; i < order.length; i++) order[i] = i;
        if (shuffle) {
            long stream = seed ^ (0x9E3779B97F4A7C15L * (epoch + 1));
            for (int i = order.length - 1; i > 0; i--) {
                int j = (int) (((Philox.word(stream, i) & 0xffffffffL) * (i + 1)) >>> 32);
                long t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
        }
        return order;
    }

    /** The order of the epoch {@link #start} began (positions, as in {@link Batch#firstPosition}, to sample indices); not to be modified. */
    public long[] epochOrder() {
        if (epochOrder == null) throw new IllegalStateException("call start(epoch, firstBatch) first");
        return epochOrder;
    }

    /** Starts producing the batches of {@code epoch} from batch {@code firstBatch} on (for exact resume). */
    public void start(int epoch, long firstBatch) {
        if (closed) throw new IllegalStateException("data loader is closed");
        stopLoader();
        long[] order = order(epoch);
        this.epochOrder = order;
        long batches = batchesPerEpoch();
        long per = dataset.sampleSize();
        loader = Thread.ofPlatform().daemon().name("distill4j-loader").start(() -> {
            try {
                for (long b = firstBatch; b < batches && !closed; b++) {
                    Slot slot = free.take();
                    slot.copied.await(); // the GPU has finished reading this host buffer
                    slot.copied.close();
                    slot.copied = Backend.Fence.DONE;
                    int rows = (int) Math.min(batchSize, order.length - b * batchSize);
                    for (int r = 0; r < rows; r++) {
                        long index = order[(int) (b * batchSize + r)];
                        dataset.sample(index, slot.hostX, r * per);
                        slot.hostY.setAtIndex(JAVA_LONG, r, dataset.label(index));
                    }
                    filled.put(new Filled(slot, rows, b * batchSize, null, false));
                }
                filled.put(new Filled(null, 0, 0, null, true));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            } catch (RuntimeException e) {
                try {
                    filled.put(new Filled(null, 0, 0, e, true));
                } catch (InterruptedException ignored) {
                    Thread.currentThread().interrupt();
                }
            }
        });
    }

    /** True when the epoch has another batch (blocks until the loader knows). */
    public boolean hasNext() {
        if (pending == null) pending = take();
        return !pending.end();
    }

    /** The next batch of the epoch; the previous batch's buffers go back to the loader. */
    public Batch next() {
        if (!hasNext()) {
            if (pending.failure() != null) throw pending.failure();
            throw new NoSuchElementException("epoch finished");
        }
        if (current != null) free.add(current.slot());
        current = pending;
        pending = null;
        Slot s = current.slot();
        if (!backend.isHost()) {
            backend.copyFromHostAsync(s.hostX, s.x).close();
            s.copied = backend.copyFromHostAsync(s.hostY, s.y); // recorded after both copies
        }
        int rows = current.rows();
        return new Batch(rows == batchSize ? s.x : s.x.narrow0(0, rows), rows == batchSize ? s.y : s.y.narrow0(0, rows), rows,
            current.firstPosition());
    }

    private Filled take() {
        if (loader == null) throw new IllegalStateException("call start(epoch, firstBatch) first");
        try {
            Filled f = filled.take();
            if (f.end() && f.failure() != null) throw f.failure();
            return f;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while waiting for the data loader", e);
        }
    }

    private void stopLoader() {
        if (loader == null) {
            free.clear();
            free.addAll(slots);
            return;
        }
        loader.interrupt();
        try {
            loader.join();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        current = null;
        pending = null;
        loader = null;
        // Every slot goes back to the loader, wherever the stopped epoch left it.
        filled.clear();
        free.clear();
        free.addAll(slots);
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        stopLoader();
        for (Slot s : slots) {
            s.copied.await();
            s.copied.close();
        }
        arena.close();
    }

}
