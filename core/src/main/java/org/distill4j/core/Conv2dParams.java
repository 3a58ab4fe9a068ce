package org.distill4j.core;

/** Conv2d geometry (PyTorch's Conv2d without groups/dilation): zero padding and stride per axis. */
public record Conv2dParams(int padH, int padW, int strideH, int strideW) {
    public Conv2dParams {
        if (padH < 0 || padW < 0 || strideH < 1 || strideW < 1) {
            throw new IllegalArgumentException("conv2d: padding must be >= 0 and stride >= 1, got padding (" + padH + ", " + padW
                + "), stride (" + strideH + ", " + strideW + ")");
        }
    }

    public static Conv2dParams of(int padding, int stride) {
        return new Conv2dParams(padding, padding, stride, stride);
    }

    public int outH(long h, long r) { return (int) ((h + 2L * padH - r) / strideH + 1); }
    public int outW(long w, long s) { return (int) ((w + 2L * padW - s) / strideW + 1); }
}
