package org.distill4j.core.lm;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.loss.DistillationLoss;
import org.distill4j.core.nn.Parameter;

/**
 * A language model's loss taken from its final hidden states chunk by chunk, as Liger-Kernel's
 * fused linear losses do, so the [N, V] logits of a batch never exist at once. For each chunk of
 * c token rows:
 *
 * <pre>
 *   z_s [c, V'] = h_s[rows] W_s[0:V']^T                       student logits (the lm_head)
 *   z_t [c, V'] = teacher logits of the same rows             (its lm_head, or a cache)
 *   loss += fused loss(z_s, z_t, targets[rows]) / normalizer; z_s := dL/dz_s (in place)
 *   dh_s[rows] = z_s W_s[0:V'];  dW_s[0:V'] += z_s^T h_s[rows]
 * </pre>
 *
 * so the loss's memory is two chunks of V' floats (one without a teacher) instead of two [N, V]
 * tensors. V' is the id range both models share ({@code vocab}); a student's rows past it (padding
 * of its embedding matrix) get no gradient. With no distillation settings the loss is next-token
 * cross-entropy alone. Rows whose target is -100 count for neither term.
 *
 * <p>Per-token normalisation: every term is summed over counted rows and divided by
 * {@code normalizer}, the counted target tokens of the whole optimizer step, so micro-batches
 * accumulate to the gradient of one big batch.
 */
public final class ChunkedLmLoss {
    /** Logits F32 (or bf16 widened) budget of one chunk buffer when the chunk size is automatic: 8 Mi floats (32 MiB). */
    static final long AUTO_CHUNK_ELEMENTS = 8L << 20;

    private ChunkedLmLoss() {}

    /** Fills {@code out} F32 [count, vocab] with the teacher's logits for token rows [from, from + count) of the micro-batch. */
    @FunctionalInterface
    public interface TeacherRows {
        void logits(long from, int count, Tensor out);

        /** The teacher's lm_head over its final hidden states {@code hidden} F32 [N, Dt], columns [0, vocab) of its head [Vt, Dt]. */
        static TeacherRows ofHead(Tensor hidden, Parameter head, long vocab) {
            long dt = head.value().size(1);
            DecoderOpChecks.hostOnly("the chunked teacher lm_head", "it runs DecoderOps.projectionForward on host memory", hidden.backend());
            if (hidden.numel() % dt != 0) throw new IllegalArgumentException("teacher hidden states " + hidden.describe() + " are not rows of " + dt);
            boolean bf16 = head.value().dtype() == DType.BF16; // a frozen bf16 teacher's head
            return (from, count, out) -> DecoderOps.projectionForward(out.data(), 0, vocab, rows(hidden.data(), from, count, dt), dt, head.value().data(), bf16,
                null, count, dt, vocab, false);
        }
    }

    /** The step's loss terms of one call, each already divided by the normaliser: [total, soft (alpha T^2 D), hard ((1 - alpha) CE)]. */
    public record Terms(double total, double soft, double hard) {
        public Terms plus(Terms o) {
            return new Terms(total + o.total, soft + o.soft, hard + o.hard);
        }

        public static final Terms ZERO = new Terms(0, 0, 0);
    }

    /** Rows per chunk: {@code requested} > 0 as given, 0 for all rows at once (no chunking), < 0 automatic (about 32 MiB of logits a chunk). */
    public static int chunkRows(int requested, long rows, long vocab) {
        if (requested > 0) return (int) Math.min(requested, rows);
        if (requested == 0) return Math.toIntExact(rows);
        long most = Math.max(1, Math.min(rows, AUTO_CHUNK_ELEMENTS / Math.max(1, vocab)));
        long chunks = (rows + most - 1) / most;
        return (int) Math.max(1, (rows + chunks - 1) / chunks); // equal chunks (512 rows: 4 x 128, not 3 x 166 + 14)
    }

    /**
     * The loss of one micro-batch and, when {@code dHidden} is not null, its gradient: dL/dh_s into
     * {@code dHidden} [N, Ds] (overwritten) and dL/dW_s added to the student head's gradient.
     *
     * @param hidden     the student's final hidden states F32 [N, Ds]
     * @param head       the student's lm_head [Vs, Ds] (tied: its embedding)
     * @param vocab      the shared id range V' <= Vs (and <= the teacher's)
     * @param targets    [N] next-token ids in [0, V'), or -100 for rows that do not count
     * @param kd         the distillation loss, or null for next-token cross-entropy alone
     * @param teacher    the teacher's logits by rows (null exactly when kd is null)
     * @param normalizer counted target tokens of the optimizer step (> 0)
     * @param chunk      rows per chunk (see {@link #chunkRows})
     */
    public static Terms compute(Backend backend, Tensor hidden, Parameter head, long vocab, long[] targets, DistillationLoss kd, TeacherRows teacher,
                                long normalizer, int chunk, Tensor dHidden) {
        long ds = head.value().size(1), n = targets.length;
        DecoderOpChecks.hostOnly("the chunked LM loss", "it runs the lm_head (DecoderOps) and the fused loss over host memory", backend);
        if (hidden.dtype() != DType.F32 || hidden.numel() != n * ds) {
            throw new IllegalArgumentException("chunked loss: hidden states " + hidden.describe() + ", expected F32 [" + n + ", " + ds + "]");
        }
        if (dHidden != null && (dHidden.dtype() != DType.F32 || dHidden.numel() != n * ds)) {
            throw new IllegalArgumentException("chunked loss: dHidden " + dHidden.describe() + ", expected F32 [" + n + ", " + ds + "]");
        }
        if (vocab < 1 || vocab > head.value().size(0)) throw new IllegalArgumentException("chunked loss: vocab " + vocab + " outside [1, " + head.value().size(0) + "]");
        if ((kd == null) != (teacher == null)) throw new IllegalArgumentException("chunked loss: a teacher goes with distillation settings, and only with them");
        if (normalizer < 1) throw new IllegalArgumentException("chunked loss: normalizer must be >= 1, got " + normalizer);
        if (chunk < 1) throw new IllegalArgumentException("chunked loss: chunk must be >= 1 row, got " + chunk);
        for (int r = 0; r < n; r++) {
            if (targets[r] != -100 && (targets[r] < 0 || targets[r] >= vocab)) {
                throw new IllegalArgumentException("target id " + targets[r] + " at row " + r + " is outside the vocabulary [0, " + vocab + ")");
            }
        }
        Terms sum = Terms.ZERO;
        try (Arena arena = Arena.ofShared()) {
            int c = (int) Math.min(chunk, n);
            Tensor zs = backend.empty(arena, DType.F32, c, vocab);
            Tensor zt = kd == null ? null : backend.empty(arena, DType.F32, c, vocab);
            Tensor labels = backend.empty(arena, DType.I64, c);
            Tensor terms = backend.empty(arena, DType.F32, 3), ce = backend.empty(arena, DType.F32, 1);
            for (long from = 0; from < n; from += c) {
                int rows = (int) Math.min(c, n - from);
                Tensor s = zs.narrow0(0, rows), l = labels.narrow0(0, rows);
                long[] y = Arrays.copyOfRange(targets, (int) from, (int) from + rows);
                l.copyFrom(y);
                MemorySegment h = rows(hidden.data(), from, rows, ds);
                long pt = DecoderProfile.start();
                DecoderOps.projectionForward(s.data(), 0, vocab, h, ds, head.value().data(), null, rows, ds, vocab, false);
                DecoderProfile.stop(DecoderProfile.Phase.LOSS_STUDENT_HEAD_F, pt);
                pt = DecoderProfile.start();
                Tensor grad = dHidden == null ? null : s; // the gradient overwrites the logits it comes from
                if (kd == null) {
                    long counted = Arrays.stream(y).filter(v -> v != -100).count();
                    if (counted == 0) {
                        if (grad != null) backend.zero(grad);
                    } else {
                        backend.crossEntropy(s, l, -100, 0f, ce, grad);
                        double scale = (double) counted / normalizer; // the call's mean over its rows -> the step's sum / normalizer
                        double part = ce.toFloatArray()[0] * scale;
                        sum = sum.plus(new Terms(part, 0, part));
                        if (grad != null) backend.scale((float) scale, grad);
                    }
                } else {
                    Tensor t = zt.narrow0(0, rows);
                    long tt = DecoderProfile.start();
                    teacher.logits(from, rows, t);
                    DecoderProfile.stop(DecoderProfile.Phase.LOSS_TEACHER_HEAD_F, tt);
                    pt += DecoderProfile.start() - tt; // the fused loss's clock leaves out the teacher's head
                    backend.distillationLoss(s, t, l, kd, normalizer, terms, grad);
                    float[] v = terms.toFloatArray();
                    sum = sum.plus(new Terms(v[0], v[1], v[2]));
                }
                DecoderProfile.stop(DecoderProfile.Phase.LOSS_FUSED, pt);
                if (dHidden != null) {
                    pt = DecoderProfile.start();
                    DecoderOps.projectionBackward(rows(dHidden.data(), from, rows, ds), ds, false, head.grad().data(), null, s.data(), 0, vocab, h, ds,
                        head.value().data(), rows, ds, vocab, false);
                    DecoderProfile.stop(DecoderProfile.Phase.LOSS_HEAD_B, pt);
                }
            }
        }
        return sum;
    }

    /** Rows [from, from + count) of a row-major F32 [*, width] buffer. */
    static MemorySegment rows(MemorySegment data, long from, long count, long width) {
        return data.asSlice(from * width * Float.BYTES, count * width * Float.BYTES);
    }
}
