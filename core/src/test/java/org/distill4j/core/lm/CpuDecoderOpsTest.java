package org.distill4j.core.lm;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.lm.DecoderDeviceOps.Attention;
import org.junit.jupiter.api.Test;

/**
 * CpuDecoderOps is DecoderOps on the tensors' memory: every op of the interface against the
 * DecoderOps function DecoderModel called before it went through the interface, bit for bit, on
 * fresh random inputs (Qwen3's per-head RMSNorm as the per-head loop it replaced); and the shared
 * argument checks (DecoderOpChecks, which CudaDecoderOps runs too) refuse a wrong buffer in one
 * line. The whole model's bits before and after are checked by DecoderFixtureTest's tight
 * comparisons and were compared on every fixture when the interface came in (docs/language-models.md).
 * The seed is printed; -Ddistill4j.test.seed=N replays it.
 */
class CpuDecoderOpsTest {
    private final long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
    private final Random random = new Random(seed);
    private final CpuBackend cpu = CpuBackend.get();
    private final DecoderDeviceOps ops = DecoderDeviceOps.forBackend(cpu);

    CpuDecoderOpsTest() {
        System.out.println("CpuDecoderOpsTest random seed " + seed + " (fresh inputs every run; -Ddistill4j.test.seed=" + seed + " replays it)");
    }

    private float[] rand(long n) {
        float[] v = new float[Math.toIntExact(n)];
        for (int i = 0; i < v.length; i++) v[i] = 2 * random.nextFloat() - 1;
        return v;
    }

    /** A tensor and a separate segment holding the same values: one for the interface, one for DecoderOps. */
    private record Twin(Tensor t, MemorySegment s) {
        float[] tensor() { return t.toFloatArray(); }
        float[] segment() { return s.toArray(JAVA_FLOAT); }
    }

    private Twin twin(Arena a, long... shape) {
        float[] v = rand(Tensor.numel(shape));
        Tensor t = cpu.empty(a, DType.F32, shape);
        t.copyFrom(v);
        return new Twin(t, a.allocateFrom(JAVA_FLOAT, v));
    }

    private void same(String what, Twin x) {
        assertArrayEquals(x.segment(), x.tensor(), what + " (seed " + seed + ")");
    }

    @Test
    void everyOpGivesDecoderOpsBits() {
        int b = 2, heads = 4, kvHeads = 2;
        long t = 5, hd = 8, d = 24, vocab = 31, n = b * t, a = heads * hd, kvw = kvHeads * hd, qkvW = a + 2 * kvw, inner = 20;
        try (Arena ar = Arena.ofShared()) {
            long[] ids = new long[(int) n], pos = new long[(int) n], mask = new long[(int) n];
            for (int i = 0; i < n; i++) {
                ids[i] = random.nextInt((int) vocab);
                pos[i] = i % t;
                mask[i] = i % t == 0 && i > 0 ? 0 : 1; // row 1's first token is padding
            }
            // Embeddings, with learned positions.
            Twin out = twin(ar, n, d), wte = twin(ar, vocab, d), wpe = twin(ar, t, d);
            ops.embeddingForward(out.t(), ids, pos, wte.t(), wpe.t());
            DecoderOps.embeddingForward(out.s(), ids, pos, wte.s(), wpe.s(), d);
            same("embeddingForward", out);
            ops.embeddingBackward(wte.t(), wpe.t(), out.t(), ids, pos);
            DecoderOps.embeddingBackward(wte.s(), wpe.s(), out.s(), ids, pos, d);
            same("embeddingBackward dwte", wte);
            same("embeddingBackward dwpe", wpe);

            // LayerNorm and the hidden RMSNorm.
            Twin x = twin(ar, n, d), w = twin(ar, d), bias = twin(ar, d), y = twin(ar, n, d), mean = twin(ar, n), rstd = twin(ar, n);
            ops.layerNormForward(y.t(), mean.t(), rstd.t(), x.t(), w.t(), bias.t(), 1e-5f);
            DecoderOps.layerNormForward(y.s(), mean.s(), rstd.s(), x.s(), w.s(), bias.s(), n, d, 1e-5f);
            same("layerNormForward", y);
            same("layerNorm rstd", rstd);
            Twin dx = twin(ar, n, d), dw = twin(ar, d), db = twin(ar, d);
            ops.layerNormBackward(dx.t(), dw.t(), db.t(), y.t(), x.t(), w.t(), mean.t(), rstd.t(), true);
            DecoderOps.layerNormBackward(dx.s(), dw.s(), db.s(), y.s(), x.s(), w.s(), mean.s(), rstd.s(), n, d, true);
            same("layerNormBackward dx", dx);
            same("layerNormBackward dw", dw);
            same("layerNormBackward db", db);
            ops.rmsNormForward(y.t(), rstd.t(), x.t(), w.t(), n, 1, d, 0, d, 1e-6f);
            DecoderOps.rmsNormForward(y.s(), rstd.s(), x.s(), w.s(), n, d, d, 1e-6f);
            same("rmsNormForward", y);
            ops.rmsNormBackward(dx.t(), dw.t(), y.t(), x.t(), w.t(), rstd.t(), n, 1, d, 0, d, true);
            DecoderOps.rmsNormBackward(dx.s(), dw.s(), y.s(), x.s(), w.s(), rstd.s(), n, d, d, true);
            same("rmsNormBackward dx", dx);
            same("rmsNormBackward dw", dw);

            // Projections: nn.Linear into columns of a wider buffer with a bias, Conv1D without.
            Twin qkv = twin(ar, n, qkvW), wq = twin(ar, kvw, d), bq = twin(ar, kvw), wc = twin(ar, d, kvw);
            ops.projectionForward(qkv.t(), a, qkvW, x.t(), d, wq.t(), bq.t(), n, d, kvw, false);
            DecoderOps.projectionForward(qkv.s(), a, qkvW, x.s(), d, wq.s(), bq.s(), n, d, kvw, false);
            ops.projectionForward(qkv.t(), a + kvw, qkvW, x.t(), d, wc.t(), null, n, d, kvw, true);
            DecoderOps.projectionForward(qkv.s(), a + kvw, qkvW, x.s(), d, wc.s(), null, n, d, kvw, true);
            same("projectionForward", qkv);
            Twin dwq = twin(ar, kvw, d), dbq = twin(ar, kvw), dwc = twin(ar, d, kvw);
            ops.projectionBackward(dx.t(), d, false, dwq.t(), dbq.t(), qkv.t(), a, qkvW, x.t(), d, wq.t(), n, d, kvw, false);
            DecoderOps.projectionBackward(dx.s(), d, false, dwq.s(), dbq.s(), qkv.s(), a, qkvW, x.s(), d, wq.s(), n, d, kvw, false);
            ops.projectionBackward(dx.t(), d, true, dwc.t(), null, qkv.t(), a + kvw, qkvW, x.t(), d, wc.t(), n, d, kvw, true);
            DecoderOps.projectionBackward(dx.s(), d, true, dwc.s(), null, qkv.s(), a + kvw, qkvW, x.s(), d, wc.s(), n, d, kvw, true);
            same("projectionBackward dx", dx);
            same("projectionBackward dW (Linear)", dwq);
            same("projectionBackward db", dbq);
            same("projectionBackward dW (Conv1D)", dwc);

            // Qwen3's per-head RMSNorm (the per-head loop DecoderModel ran), forward and in-place backward.
            Twin hn = twin(ar, n, qkvW), hw = twin(ar, hd), hRstd = twin(ar, kvHeads, n), hdw = twin(ar, hd);
            ops.rmsNormForward(hn.t(), hRstd.t(), qkv.t(), hw.t(), n, kvHeads, hd, a, qkvW, 1e-6f);
            ops.rmsNormBackward(hn.t(), hdw.t(), hn.t(), qkv.t(), hw.t(), hRstd.t(), n, kvHeads, hd, a, qkvW, false);
            for (int h = 0; h < kvHeads; h++) {
                long c = a + h * hd;
                DecoderOps.rmsNormForward(DecoderOps.columns(hn.s(), c), hRstd.s().asSlice(h * n * Float.BYTES), DecoderOps.columns(qkv.s(), c), hw.s(), n, hd,
                    qkvW, 1e-6f);
            }
            for (int h = 0; h < kvHeads; h++) {
                long c = a + h * hd;
                MemorySegment g = DecoderOps.columns(hn.s(), c);
                DecoderOps.rmsNormBackward(g, hdw.s(), g, DecoderOps.columns(qkv.s(), c), hw.s(), hRstd.s().asSlice(h * n * Float.BYTES), n, hd, qkvW, false);
            }
            same("per-head rmsNorm forward then in-place backward", hn);
            same("per-head rmsNorm rstd", hRstd);
            same("per-head rmsNorm dw", hdw);

            // RoPE tables and rotation, forward and inverse.
            float[] invFreq = {1f, 0.3f, 0.1f, 0.03f};
            Twin cos = twin(ar, n, hd / 2), sin = twin(ar, n, hd / 2);
            ops.ropeTables(cos.t(), sin.t(), pos, invFreq);
            DecoderOps.ropeTables(cos.s(), sin.s(), pos, invFreq);
            same("ropeTables cos", cos);
            for (boolean inverse : new boolean[] {false, true}) {
                ops.rope(qkv.t(), 0, qkvW, n, heads, cos.t(), sin.t(), hd / 2, inverse);
                DecoderOps.rope(qkv.s(), 0, qkvW, n, heads, cos.s(), sin.s(), hd / 2, inverse);
                same("rope" + (inverse ? " inverse" : ""), qkv);
            }

            // Attention with GQA and padding: scores, values, backward.
            Twin probs = twin(ar, b, heads, t, t), att = twin(ar, n, a), dprobs = twin(ar, b, heads, t, t), dqkv = twin(ar, n, qkvW);
            float scale = (float) (1 / Math.sqrt(hd));
            Attention shape = new Attention(b, heads, kvHeads, hd, t, t, 0, qkv.t(), qkvW, 0, qkv.t(), qkv.t(), qkvW, t * qkvW, a, a + kvw, mask, scale);
            DecoderOps.AttentionShape cpuShape = new DecoderOps.AttentionShape(b, heads, kvHeads, hd, t, t, 0, qkv.s(), qkvW, 0, qkv.s(), qkv.s(), qkvW, t * qkvW,
                a, a + kvw, mask, scale);
            ops.attentionScores(shape, probs.t());
            DecoderOps.attentionScores(cpuShape, probs.s());
            same("attentionScores", probs);
            ops.attentionValues(shape, probs.t(), att.t(), a);
            DecoderOps.attentionValues(cpuShape, probs.s(), att.s(), a);
            same("attentionValues", att);
            int[] calls = new int[2];
            ops.attentionBackward(shape, probs.t(), probs.t(), dprobs.t(), att.t(), a, dqkv.t(), () -> calls[0]++);
            DecoderOps.attentionBackward(cpuShape, probs.s(), probs.s(), dprobs.s(), att.s(), a, dqkv.s(), () -> calls[1]++);
            same("attentionBackward dqkv", dqkv);
            same("attentionBackward dscores", dprobs);
            assertEquals(1, calls[0], "beforeSoftmax runs once");

            // Activations.
            Twin gateUp = twin(ar, n, 2 * inner), act = twin(ar, n, inner), dgu = twin(ar, n, 2 * inner);
            ops.swigluForward(act.t(), gateUp.t());
            DecoderOps.swigluForward(act.s(), gateUp.s(), n, inner);
            same("swigluForward", act);
            ops.swigluBackward(dgu.t(), act.t(), gateUp.t());
            DecoderOps.swigluBackward(dgu.s(), act.s(), gateUp.s(), n, inner);
            same("swigluBackward", dgu);
            Twin g = twin(ar, n, inner), dg = twin(ar, n, inner);
            ops.geluForward(g.t(), act.t());
            DecoderOps.geluForward(g.s(), act.s(), n * inner);
            same("geluForward", g);
            ops.geluBackward(dg.t(), g.t(), act.t());
            DecoderOps.geluBackward(dg.s(), g.s(), act.s(), n * inner);
            same("geluBackward", dg);

            // The KV cache's row copy, and the loss (in place, as LmTrainer runs it).
            Twin cache = twin(ar, b, 2 * t, kvw);
            ops.copyRows(cache.t(), 3 * kvw, kvw, qkv.t(), a, qkvW, t, kvw);
            for (long r = 0; r < t; r++) {
                MemorySegment.copy(qkv.s(), (a + r * qkvW) * Float.BYTES, cache.s(), (3 + r) * kvw * Float.BYTES, kvw * Float.BYTES);
            }
            same("copyRows", cache);
            Twin logits = twin(ar, b, t, vocab);
            long[] labels = ids.clone();
            labels[3] = -100;
            double loss = ops.nextTokenLoss(logits.t(), labels, logits.t());
            double want = DecoderOps.nextTokenCrossEntropy(logits.s(), labels, b, t, vocab, logits.s());
            assertEquals(want, loss, 0.0, "nextTokenLoss (seed " + seed + ")");
            same("nextTokenLoss dlogits in place", logits);
        }
    }

    @Test
    void theSharedChecksRefuseAWrongBufferInOneLine() {
        try (Arena ar = Arena.ofShared()) {
            Tensor x = cpu.empty(ar, DType.F32, 4, 8), w = cpu.empty(ar, DType.F32, 8), small = cpu.empty(ar, DType.F32, 3);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ops.layerNormForward(x, null, small, x, w, null, 1e-5f));
            assertEquals("layerNormForward: rstd must hold 4 elements, got " + small.describe(), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> ops.projectionForward(x, 4, 8, x, 8, cpu.empty(ar, DType.F32, 8, 8), null, 4, 8, 8, false));
            assertTrue(e.getMessage().startsWith("projectionForward: columns [4, 12) of rows of 8"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> ops.embeddingForward(x, new long[] {0, 1, 9, 2}, null, x, null));
            assertEquals("embeddingForward: token id 9 at row 2 is outside [0, 4)", e.getMessage());
            Tensor ids = cpu.empty(ar, DType.I64, 4, 8);
            e = assertThrows(IllegalArgumentException.class, () -> ops.geluForward(ids, x));
            assertTrue(e.getMessage().startsWith("geluForward: expected F32"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> ops.copyRows(x, 0, 8, x, 30, 8, 1, 4));
            assertTrue(e.getMessage().startsWith("copyRows: 1 rows of 4 do not fit"), e.getMessage());
        }
    }
}
