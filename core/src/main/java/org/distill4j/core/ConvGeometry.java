package org.distill4j.core;

/** A checked conv2d geometry: x [n, c, h, w], weight [k, c, r, s], y [n, k, oh, ow]. */
public record ConvGeometry(int n, int c, int h, int w, int k, int r, int s, int oh, int ow) {
    /** Rows of the im2col matrix: c * r * s. */
    public int crs() { return c * r * s; }

    /** Output pixels per image: oh * ow. */
    public int ohw() { return oh * ow; }
}
