package org.distill4j.tests;

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
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.lm.CudaDecoderOps;
import org.distill4j.core.lm.DecoderOpsReference;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * Every CudaDecoderOps op against DecoderOps (the CPU oracle) on fresh random inputs, strict FP32:
 * embeddings (bit for bit in the backward; the gather over a bf16 table bit for bit), LayerNorm, RMSNorm (hidden and Qwen3's per-head rows, in
 * place), RoPE tables and rotation, attention scores, values and backward with GQA, padding on either
 * side and a KV-cache offset, projections (both weight layouts, float32 and bf16 weights), GELU-tanh, SwiGLU
 * and the next-token cross-entropy; and that reruns give
 * the same bits. Bounds: max |gpu - cpu| <= tol * max(1, max |cpu|). Tag "gpu": skipped without one.
 */
@Tag("gpu")
class GpuDecoderOpsTest {
    private static CudaBackend gpu;
    private static CudaDecoderOps ops;
    private final Random random = new Random(TestSeeds.seed(GpuDecoderOpsTest.class));

    @BeforeAll
    static void open() {
        gpu = Gpus.openOrSkip();
        gpu.setMathMode(CudaBackend.MathMode.STRICT_FP32);  // before CudaDecoderOps: its cuBLAS handle takes the mode at creation
        ops = new CudaDecoderOps(gpu);
    }

    @AfterAll
    static void close() {
        if (ops != null) ops.close();
        if (gpu != null) gpu.close();
    }

    private float[] rand(long n, float lo, float hi) {
        float[] v = new float[Math.toIntExact(n)];
        for (int i = 0; i < v.length; i++) v[i] = lo + (hi - lo) * random.nextFloat();
        return v;
    }

    private static MemorySegment host(Arena a, float[] v) {
        return a.allocateFrom(JAVA_FLOAT, v);
    }

    private static Tensor dev(Arena a, float[] v, long... shape) {
        Tensor t = gpu.empty(a, DType.F32, shape);
        gpu.write(t, v);
        return t;
    }

    private static float[] arr(MemorySegment s) {
        return s.toArray(JAVA_FLOAT);
    }

    private static void close(String what, float[] cpu, float[] got, double tol) {
        assertEquals(cpu.length, got.length, what + ": sizes");
        double scale = 1, worst = 0;
        int at = 0;
        for (float c : cpu) scale = Math.max(scale, Math.abs(c));
        for (int i = 0; i < cpu.length; i++) {
            double e = Math.abs((double) got[i] - cpu[i]);
            if (!(e <= worst)) { worst = e; at = i; }  // NaN counts as worst
        }
        assertTrue(worst <= tol * scale, what + ": max error " + worst + " at " + at + " (gpu " + got[at] + ", cpu " + cpu[at] + "; bound " + tol * scale + ")");
    }

    private long[] ids(int n, long limit) {
        long[] v = new long[n];
        for (int i = 0; i < n; i++) v[i] = random.nextLong(Math.max(1, limit / 3));  // repeats: several tokens share a row
        return v;
    }

    @Test
    void embeddingsMatchAndTheBackwardIsBitIdentical() {
        int n = 37;
        long d = 48, vocab = 101, maxPos = 64;
        long[] tok = ids(n, vocab), pos = ids(n, maxPos);
        for (boolean learned : new boolean[] {false, true}) {
            try (Arena a = Arena.ofConfined()) {
                float[] wte = rand(vocab * d, -1, 1), wpe = rand(maxPos * d, -1, 1), dout = rand(n * d, -1, 1);
                MemorySegment out = a.allocate(n * d * 4);
                DecoderOpsReference.embeddingForward(out, tok, pos, host(a, wte), learned ? host(a, wpe) : null, d);
                Tensor gOut = gpu.empty(a, DType.F32, n, d), gWte = dev(a, wte, vocab, d), gWpe = dev(a, wpe, maxPos, d);
                ops.embeddingForward(gOut, tok, pos, gWte, learned ? gWpe : null);
                assertArrayEquals(arr(out), gpu.read(gOut), "embedding forward" + (learned ? " + positions" : ""));
                float[] dwte0 = rand(vocab * d, -1, 1), dwpe0 = rand(maxPos * d, -1, 1);
                MemorySegment dwte = host(a, dwte0), dwpe = host(a, dwpe0);
                DecoderOpsReference.embeddingBackward(dwte, learned ? dwpe : null, host(a, dout), tok, pos, d);
                Tensor gDwte = dev(a, dwte0, vocab, d), gDwpe = dev(a, dwpe0, maxPos, d);
                ops.embeddingBackward(gDwte, learned ? gDwpe : null, dev(a, dout, n, d), tok, pos);
                assertArrayEquals(arr(dwte), gpu.read(gDwte), "dwte: the same float additions in the same order");
                if (learned) assertArrayEquals(arr(dwpe), gpu.read(gDwpe), "dwpe");
            }
        }
        long[] bad = tok.clone();
        bad[5] = 101;
        try (Arena a = Arena.ofConfined()) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> ops.embeddingForward(gpu.empty(a, DType.F32, n, d), bad, pos, gpu.empty(a, DType.F32, vocab, d), null));
            assertTrue(e.getMessage().contains("token id 101 at row 5"), e.getMessage());
        }
    }

    /**
     * The gather over a bf16 token table (a frozen bf16 model: d4j_embedding_forward_bf16): bit for bit
     * DecoderOps' (each value widened exactly, then one float add of a float32 learned position).
     */
    @Test
    void bf16EmbeddingGatherIsBitIdentical() {
        int n = 37;
        long d = 48, vocab = 101, maxPos = 64;
        long[] tok = ids(n, vocab), pos = ids(n, maxPos);
        for (boolean learned : new boolean[] {false, true}) {
            try (Arena a = Arena.ofConfined()) {
                float[] wpe = rand(maxPos * d, -1, 1);
                MemorySegment wBits = a.allocate(vocab * d * 2);
                for (long i = 0; i < vocab * d; i++) wBits.setAtIndex(java.lang.foreign.ValueLayout.JAVA_SHORT, i, (short) random.nextInt(0x7f80)); // finite, positive
                for (long i = 0; i < vocab * d; i += 2) wBits.setAtIndex(java.lang.foreign.ValueLayout.JAVA_SHORT, i,
                    (short) (wBits.getAtIndex(java.lang.foreign.ValueLayout.JAVA_SHORT, i) | 0x8000)); // and negative
                MemorySegment out = a.allocate(n * d * 4);
                DecoderOpsReference.embeddingForwardBf16(out, tok, pos, wBits, learned ? host(a, wpe) : null, d);
                Tensor gOut = gpu.empty(a, DType.F32, n, d), gWte = gpu.empty(a, DType.BF16, vocab, d), gWpe = dev(a, wpe, maxPos, d);
                gpu.copyFromHost(wBits, gWte);
                ops.embeddingForward(gOut, tok, pos, gWte, learned ? gWpe : null);
                assertArrayEquals(arr(out), gpu.read(gOut), "bf16 embedding forward" + (learned ? " + positions" : ""));
            }
        }
    }

    @Test
    void layerNormForwardAndBackward() {
        long n = 29, d = 96;
        float eps = 1e-5f;
        try (Arena a = Arena.ofConfined()) {
            float[] x = rand(n * d, -2, 3), w = rand(d, 0.5f, 1.5f), b = rand(d, -1, 1), dout = rand(n * d, -1, 1), dw0 = rand(d, -1, 1),
                db0 = rand(d, -1, 1), dx0 = rand(n * d, -1, 1);
            MemorySegment out = a.allocate(n * d * 4), mean = a.allocate(n * 4), rstd = a.allocate(n * 4);
            DecoderOpsReference.layerNormForward(out, mean, rstd, host(a, x), host(a, w), host(a, b), n, d, eps);
            Tensor gx = dev(a, x, n, d), gw = dev(a, w, d), gb = dev(a, b, d), gOut = gpu.empty(a, DType.F32, n, d), gMean = gpu.empty(a, DType.F32, n),
                gRstd = gpu.empty(a, DType.F32, n);
            ops.layerNormForward(gOut, gMean, gRstd, gx, gw, gb, eps);
            close("layernorm out", arr(out), gpu.read(gOut), 1e-5);
            close("layernorm mean", arr(mean), gpu.read(gMean), 1e-6);
            close("layernorm rstd", arr(rstd), gpu.read(gRstd), 1e-5);
            for (boolean accumulate : new boolean[] {false, true}) {
                MemorySegment dx = host(a, dx0), dw = host(a, dw0), db = host(a, db0);
                DecoderOpsReference.layerNormBackward(dx, dw, db, host(a, dout), host(a, x), host(a, w), mean, rstd, n, d, accumulate);
                Tensor gDx = dev(a, dx0, n, d), gDw = dev(a, dw0, d), gDb = dev(a, db0, d);
                ops.layerNormBackward(gDx, gDw, gDb, dev(a, dout, n, d), gx, gw, gMean, gRstd, accumulate);
                close("layernorm dx" + (accumulate ? " accumulated" : ""), arr(dx), gpu.read(gDx), 1e-4);
                close("layernorm dw", arr(dw), gpu.read(gDw), 1e-4);
                close("layernorm db", arr(db), gpu.read(gDb), 1e-4);
            }
        }
    }

    @Test
    void rmsNormHiddenAndPerHeadInPlace() {
        float eps = 1e-6f;
        // hidden: [N, D]; per head: the 4 q heads (column 0) and the 2 k heads (after them) of a q | k | v buffer
        long n = 23, hd = 16, heads = 4, kvHeads = 2, qkvW = (heads + 2 * kvHeads) * hd;
        long[][] layouts = {{1, 80, 0, 80}, {heads, hd, 0, qkvW}, {kvHeads, hd, heads * hd, qkvW}};
        for (long[] l : layouts) {
            long h = l[0], d = l[1], col = l[2], stride = l[3];
            String what = "rmsnorm " + h + " x " + d + " from column " + col + " of " + stride;
            try (Arena a = Arena.ofConfined()) {
                float[] x = rand(n * stride, -2, 2), w = rand(d, 0.5f, 1.5f), dout = rand(n * stride, -1, 1), dw0 = rand(d, -1, 1);
                MemorySegment out = host(a, dout), rstd = a.allocate(h * n * 4);  // out starts as dout: columns outside the rows stay
                DecoderOpsReference.rmsNormForward(out, rstd, host(a, x), host(a, w), n, h, d, col, stride, eps);
                Tensor gx = dev(a, x, n, stride), gw = dev(a, w, d), gOut = dev(a, dout, n, stride), gRstd = gpu.empty(a, DType.F32, h, n);
                ops.rmsNormForward(gOut, gRstd, gx, gw, n, h, d, col, stride, eps);
                close(what + " out", arr(out), gpu.read(gOut), 1e-5);
                close(what + " rstd", arr(rstd), gpu.read(gRstd), 1e-5);
                // backward in place (dx = dout), as DecoderModel's per-head norm runs it
                MemorySegment g = host(a, dout), dw = host(a, dw0);
                DecoderOpsReference.rmsNormBackward(g, dw, g, host(a, x), host(a, w), rstd, n, h, d, col, stride, false);
                Tensor gG = dev(a, dout, n, stride), gDw = dev(a, dw0, d);
                ops.rmsNormBackward(gG, gDw, gG, gx, gw, gRstd, n, h, d, col, stride, false);
                close(what + " dx", arr(g), gpu.read(gG), 1e-4);
                close(what + " dw", arr(dw), gpu.read(gDw), 1e-4);
            }
        }
    }

    @Test
    void ropeTablesAndRotation() {
        long n = 19, hd = 32, half = hd / 2, heads = 4, kvHeads = 2, stride = (heads + 2 * kvHeads) * hd;
        long[] pos = new long[(int) n];
        for (int i = 0; i < n; i++) pos[i] = 5 + i % 7 + random.nextInt(3);  // after a cache, with padding's repeats
        float[] invFreq = new float[(int) half];
        for (int j = 0; j < half; j++) invFreq[j] = (float) Math.pow(500000.0, -2.0 * j / hd);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment cos = a.allocate(n * half * 4), sin = a.allocate(n * half * 4);
            DecoderOpsReference.ropeTables(cos, sin, pos, invFreq);
            Tensor gCos = gpu.empty(a, DType.F32, n, half), gSin = gpu.empty(a, DType.F32, n, half);
            ops.ropeTables(gCos, gSin, pos, invFreq);
            close("rope cos", arr(cos), gpu.read(gCos), 1e-6);
            close("rope sin", arr(sin), gpu.read(gSin), 1e-6);
            float[] x = rand(n * stride, -1, 1);
            for (boolean inverse : new boolean[] {false, true}) {
                MemorySegment hx = host(a, x);
                DecoderOpsReference.rope(hx, 0, stride, n, heads, cos, sin, half, inverse);
                DecoderOpsReference.rope(hx, heads * hd, stride, n, kvHeads, cos, sin, half, inverse);
                Tensor gx = dev(a, x, n, stride);
                gpu.write(gCos, arr(cos));  // the CPU's tables: the rotation alone is compared here
                gpu.write(gSin, arr(sin));
                ops.rope(gx, 0, stride, n, heads, gCos, gSin, half, inverse);
                ops.rope(gx, heads * hd, stride, n, kvHeads, gCos, gSin, half, inverse);
                close("rope" + (inverse ? " inverse" : ""), arr(hx), gpu.read(gx), 1e-6);
            }
        }
    }

    private long[] padding(int batch, long t, boolean left) {
        long[] mask = new long[(int) (batch * t)];
        java.util.Arrays.fill(mask, 1);
        for (int b = 1; b < batch; b++) {  // sequence 0 unpadded, the others padded by 1.. tokens
            long pads = Math.min(t - 1, b + random.nextInt(2));
            for (long k = 0; k < pads; k++) mask[(int) (b * t + (left ? k : t - 1 - k))] = 0;
        }
        return mask;
    }

    @Test
    void trainingAttentionWithGqaAndPaddingOnEitherSide() {
        int batch = 3, heads = 4, kvHeads = 2;
        long hd = 16, t = 11, qkvW = (heads + 2L * kvHeads) * hd, ldOut = heads * hd, n = batch * t;
        float scale = (float) (1 / Math.sqrt(hd));
        for (long[] mask : new long[][] {null, padding(batch, t, true), padding(batch, t, false)}) {
            String what = mask == null ? "no mask" : mask[(int) t] == 0 ? "left padding" : "right padding";
            try (Arena a = Arena.ofConfined()) {
                float[] qkv = rand(n * qkvW, -1, 1), dout = rand(n * ldOut, -1, 1);
                long plane = (long) batch * heads * t * t;
                MemorySegment hq = host(a, qkv), probs = a.allocate(plane * 4), out = a.allocate(n * ldOut * 4);
                long kCol = heads * hd, vCol = kCol + kvHeads * hd;
                DecoderOpsReference.attentionScores(batch, heads, kvHeads, hd, t, t, 0, hq, qkvW, 0, hq, hq, qkvW, t * qkvW, kCol, vCol, mask, scale, probs);
                DecoderOpsReference.attentionValues(batch, heads, kvHeads, hd, t, t, 0, hq, qkvW, 0, hq, hq, qkvW, t * qkvW, kCol, vCol, mask, scale, probs,
                    out, ldOut);
                Tensor gq = dev(a, qkv, n, qkvW), gProbs = gpu.empty(a, DType.F32, batch, heads, t, t), gOut = gpu.empty(a, DType.F32, n, ldOut);
                CudaDecoderOps.Attention shape = new CudaDecoderOps.Attention(batch, heads, kvHeads, hd, t, t, 0, gq, qkvW, 0, gq, gq, qkvW, t * qkvW, kCol,
                    vCol, mask, scale);
                ops.attentionScores(shape, gProbs);
                ops.attentionValues(shape, gProbs, gOut, ldOut);
                close("attention probs, " + what, arr(probs), gpu.read(gProbs), 1e-5);
                close("attention out, " + what, arr(out), gpu.read(gOut), 1e-5);
                MemorySegment dprobs = a.allocate(plane * 4), dqkv = a.allocate(n * qkvW * 4);
                DecoderOpsReference.attentionBackward(batch, heads, kvHeads, hd, t, hq, qkvW, mask, scale, probs, dprobs, host(a, dout), ldOut, dqkv);
                Tensor gDprobs = gpu.empty(a, DType.F32, batch, heads, t, t), gDqkv = gpu.empty(a, DType.F32, n, qkvW), gDout = dev(a, dout, n, ldOut);
                gpu.zero(gDqkv);
                ops.attentionBackward(shape, gProbs, gProbs, gDprobs, gDout, ldOut, gDqkv, () -> { });
                float[] first = gpu.read(gDqkv);
                close("attention dq | dk | dv, " + what, arr(dqkv), first, 1e-4);
                gpu.zero(gDqkv);
                ops.attentionBackward(shape, gProbs, gProbs, gDprobs, gDout, ldOut, gDqkv, () -> { });
                assertArrayEquals(first, gpu.read(gDqkv), "attention backward rerun, " + what + ": the same bits");
            }
        }
    }

    @Test
    void cachedAttentionSeesThePastAndItsPadding() {
        int batch = 2, heads = 6, kvHeads = 3;
        long hd = 8, past = 5, tq = 3, capacity = 12, tk = past + tq, kvw = kvHeads * hd, ldQ = (heads + 2L * kvHeads) * hd, ldOut = heads * hd;
        float scale = (float) (1 / Math.sqrt(hd));
        long[] mask = new long[(int) (batch * tk)];
        java.util.Arrays.fill(mask, 1);
        mask[(int) tk] = mask[(int) tk + 1] = 0;  // sequence 1 was left-padded by two
        try (Arena a = Arena.ofConfined()) {
            float[] q = rand(batch * tq * ldQ, -1, 1), kc = rand(batch * capacity * kvw, -1, 1), vc = rand(batch * capacity * kvw, -1, 1);
            long plane = (long) batch * heads * tq * tk;
            MemorySegment hq = host(a, q), hk = host(a, kc), hv = host(a, vc), probs = a.allocate(plane * 4), out = a.allocate(batch * tq * ldOut * 4);
            DecoderOpsReference.attentionScores(batch, heads, kvHeads, hd, tq, tk, past, hq, ldQ, 0, hk, hv, kvw, capacity * kvw, 0, 0, mask, scale, probs);
            DecoderOpsReference.attentionValues(batch, heads, kvHeads, hd, tq, tk, past, hq, ldQ, 0, hk, hv, kvw, capacity * kvw, 0, 0, mask, scale, probs, out,
                ldOut);
            Tensor gq = dev(a, q, batch * tq, ldQ), gk = dev(a, kc, batch, capacity, kvw), gv = dev(a, vc, batch, capacity, kvw);
            Tensor gProbs = gpu.empty(a, DType.F32, batch, heads, tq, tk), gOut = gpu.empty(a, DType.F32, batch * tq, ldOut);
            CudaDecoderOps.Attention shape = new CudaDecoderOps.Attention(batch, heads, kvHeads, hd, tq, tk, past, gq, ldQ, 0, gk, gv, kvw, capacity * kvw, 0,
                0, mask, scale);
            ops.attentionScores(shape, gProbs);
            ops.attentionValues(shape, gProbs, gOut, ldOut);
            close("cached attention probs", arr(probs), gpu.read(gProbs), 1e-5);
            close("cached attention out", arr(out), gpu.read(gOut), 1e-5);
        }
    }

    @Test
    void mlpActivations() {
        long n = 13, f = 171;
        try (Arena a = Arena.ofConfined()) {
            float[] x = rand(n * f, -6, 6), dout = rand(n * f, -1, 1), gateUp = rand(n * 2 * f, -6, 6);
            MemorySegment y = a.allocate(n * f * 4), dx = a.allocate(n * f * 4), s = a.allocate(n * f * 4), dg = a.allocate(n * 2 * f * 4);
            DecoderOpsReference.geluForward(y, host(a, x), n * f);
            DecoderOpsReference.geluBackward(dx, host(a, dout), host(a, x), n * f);
            DecoderOpsReference.swigluForward(s, host(a, gateUp), n, f);
            DecoderOpsReference.swigluBackward(dg, host(a, dout), host(a, gateUp), n, f);
            Tensor gx = dev(a, x, n, f), gDout = dev(a, dout, n, f), gGu = dev(a, gateUp, n, 2 * f);
            Tensor gy = gpu.empty(a, DType.F32, n, f), gDx = gpu.empty(a, DType.F32, n, f), gs = gpu.empty(a, DType.F32, n, f), gDg = gpu.empty(a, DType.F32, n, 2 * f);
            ops.geluForward(gy, gx);
            ops.geluBackward(gDx, gDout, gx);
            ops.swigluForward(gs, gGu);
            ops.swigluBackward(gDg, gDout, gGu);
            close("gelu-tanh", arr(y), gpu.read(gy), 1e-6);
            close("gelu-tanh backward", arr(dx), gpu.read(gDx), 1e-5);
            close("swiglu", arr(s), gpu.read(gs), 1e-5);
            close("swiglu backward", arr(dg), gpu.read(gDg), 1e-5);
        }
    }

    @Test
    void nextTokenCrossEntropy() {
        int batch = 3;
        long t = 9, vocab = 1000;
        long[] labels = new long[(int) (batch * t)];
        for (int i = 0; i < labels.length; i++) labels[i] = i % 5 == 2 ? -100 : random.nextInt((int) vocab);
        try (Arena a = Arena.ofConfined()) {
            float[] logits = rand(batch * t * vocab, -4, 4);
            MemorySegment dl = a.allocate(logits.length * 4L);
            double loss = DecoderOpsReference.nextTokenCrossEntropy(host(a, logits), labels, batch, t, vocab, dl);
            Tensor gLogits = dev(a, logits, batch, t, vocab), gLoss = gpu.empty(a, DType.F32, 1), gDl = gpu.empty(a, DType.F32, batch, t, vocab);
            ops.nextTokenCrossEntropy(gLogits, labels, gLoss, gDl);
            close("next-token loss", new float[] {(float) loss}, gpu.read(gLoss), 1e-5);
            close("next-token dlogits", arr(dl), gpu.read(gDl), 1e-5);
        }
    }

    /** The nearest bfloat16 (ties to even; the values here are finite), as a float. */
    private static float bf16(float v) {
        int u = Float.floatToRawIntBits(v);
        return Float.intBitsToFloat((u + 0x7fff + ((u >>> 16) & 1)) & 0xffff0000);
    }

    @Test
    void projectionsForwardAndBackwardBothLayoutsAndBf16Weights() {
        long n = 21, in = 40, outF = 24, col = 8, ldOut = 56, ldX = 48;  // out's columns [8, 32) of rows of 56; x's rows of 48
        for (boolean storedInOut : new boolean[] {false, true}) {
            String what = storedInOut ? "Conv1D [in, out]" : "Linear [out, in]";
            try (Arena a = Arena.ofConfined()) {
                float[] x = rand(n * ldX, -1, 1), w = rand(in * outF, -1, 1), b = rand(outF, -1, 1), out0 = rand(n * ldOut, -1, 1), dout = rand(n * ldOut, -1, 1),
                    dw0 = rand(in * outF, -1, 1), db0 = rand(outF, -1, 1), dx0 = rand(n * in, -1, 1);
                MemorySegment out = host(a, out0);
                DecoderOpsReference.projectionForward(out, col, ldOut, host(a, x), ldX, host(a, w), host(a, b), n, in, outF, storedInOut);
                Tensor gOut = dev(a, out0, n, ldOut), gx = dev(a, x, n, ldX), gw = dev(a, w, storedInOut ? in : outF, storedInOut ? outF : in), gb = dev(a, b, outF);
                ops.projectionForward(gOut, col, ldOut, gx, ldX, gw, gb, n, in, outF, storedInOut);
                close("projection, " + what, arr(out), gpu.read(gOut), 1e-5);
                for (boolean accumulate : new boolean[] {false, true}) {
                    MemorySegment dx = host(a, dx0), dw = host(a, dw0), db = host(a, db0);
                    DecoderOpsReference.projectionBackward(dx, in, accumulate, dw, db, host(a, dout), col, ldOut, host(a, x), ldX, host(a, w), n, in, outF,
                        storedInOut);
                    Tensor gDx = dev(a, dx0, n, in), gDw = dev(a, dw0, in * outF), gDb = dev(a, db0, outF);
                    ops.projectionBackward(gDx, in, accumulate, gDw, gDb, dev(a, dout, n, ldOut), col, ldOut, gx, ldX, gw, n, in, outF, storedInOut);
                    close("projection dx, " + what + (accumulate ? ", accumulated" : ""), arr(dx), gpu.read(gDx), 1e-5);
                    close("projection dW, " + what, arr(dw), gpu.read(gDw), 1e-5);
                    close("projection db, " + what, arr(db), gpu.read(gDb), 1e-5);
                }
                // bf16 weights (cublasGemmEx): the CPU on x and W rounded to bf16 (products exact in float32, float32 sums)
                float[] xr = x.clone(), wr = w.clone();
                for (int i = 0; i < xr.length; i++) xr[i] = bf16(xr[i]);
                MemorySegment wBits = a.allocate(wr.length * 2L);
                for (int i = 0; i < wr.length; i++) {
                    wr[i] = bf16(wr[i]);
                    wBits.setAtIndex(java.lang.foreign.ValueLayout.JAVA_SHORT, i, (short) (Float.floatToRawIntBits(wr[i]) >>> 16));
                }
                MemorySegment outBf = host(a, out0);
                DecoderOpsReference.projectionForward(outBf, col, ldOut, host(a, xr), ldX, host(a, wr), host(a, b), n, in, outF, storedInOut);
                Tensor gwBf = gpu.empty(a, DType.BF16, storedInOut ? in : outF, storedInOut ? outF : in), gOutBf = dev(a, out0, n, ldOut);
                gpu.copyFromHost(wBits, gwBf);
                ops.projectionForward(gOutBf, col, ldOut, gx, ldX, gwBf, gb, n, in, outF, storedInOut);
                close("bf16 projection (cublasGemmEx), " + what, arr(outBf), gpu.read(gOutBf), 1e-5);
            }
        }
    }
}
