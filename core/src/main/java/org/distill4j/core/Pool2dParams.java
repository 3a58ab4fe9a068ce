package org.distill4j.core;

/**
 * Pooling geometry as PyTorch's MaxPool2d/AvgPool2d (floor mode, no dilation). Max pooling pads with
 * -inf; average pooling counts padded zeros in the divisor (count_include_pad=True, the default).
 */
public record Pool2dParams(int kernelH, int kernelW, int strideH, int strideW, int padH, int padW) {
    public Pool2dParams {
        if (kernelH < 1 || kernelW < 1 || strideH < 1 || strideW < 1 || padH < 0 || padW < 0) {
            throw new IllegalArgumentException("pool2d: kernel and stride must be >= 1 and padding >= 0");
        }
        if (padH > kernelH / 2 || padW > kernelW / 2) {
            throw new IllegalArgumentException("pool2d: padding must be at most half the kernel (PyTorch's rule), got padding ("
                + padH + ", " + padW + ") for kernel (" + kernelH + ", " + kernelW + ")");
        }
    }

    public static Pool2dParams of(int kernel, int stride, int padding) {
        return new Pool2dParams(kernel, kernel, stride, stride, padding, padding);
    }

    public int outH(long h) { return (int) ((h + 2L * padH - kernelH) / strideH + 1); }
    public int outW(long w) { return (int) ((w + 2L * padW - kernelW) / strideW + 1); }
}
