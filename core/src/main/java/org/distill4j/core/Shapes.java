package org.distill4j.core;

import java.util.Arrays;

/** Argument checks shared by the backends: every failure names the op and the shapes involved. */
public final class Shapes {
    private Shapes() {}

    public static void alive(String op, Tensor... ts) {
        for (Tensor t : ts) {
            if (t != null && !t.isAlive()) throw new IllegalStateException(op + ": tensor " + t.describe() + " is closed");
        }
    }

    public static void dtype(String op, DType expected, Tensor... ts) {
        for (Tensor t : ts) {
            if (t != null && t.dtype() != expected) throw new IllegalArgumentException(op + ": expected " + expected + ", got " + t.describe());
        }
    }

    public static void same(String op, Tensor a, Tensor b) {
        if (a.numel() != b.numel() || !Arrays.equals(a.shape(), b.shape())) {
            throw new IllegalArgumentException(op + ": shapes differ: " + Arrays.toString(a.shape()) + " vs " + Arrays.toString(b.shape()));
        }
    }

    public static void rank(String op, Tensor t, int... allowed) {
        for (int r : allowed) if (t.rank() == r) return;
        throw new IllegalArgumentException(op + ": expected rank " + Arrays.toString(allowed) + ", got " + t.describe());
    }

    public static void expect(String op, Tensor t, long... shape) {
        if (!Arrays.equals(t.shape(), shape)) {
            throw new IllegalArgumentException(op + ": expected shape " + Arrays.toString(shape) + ", got " + Arrays.toString(t.shape()));
        }
    }

    public static void backend(String op, Backend b, Tensor... ts) {
        for (Tensor t : ts) {
            if (t != null && t.backend() != b) {
                throw new IllegalArgumentException(op + ": tensor " + t.describe() + " belongs to another backend than " + b.name());
            }
        }
    }

    public static int toInt(String op, long v) {
        if (v > Integer.MAX_VALUE) throw new IllegalArgumentException(op + ": dimension " + v + " exceeds 2^31 - 1");
        return (int) v;
    }
}
