package org.distill4j.core.data;

import java.util.SplittableRandom;

/**
 * Deterministic synthetic classification data generated in code (for the demo and tests): each
 * class is a mixture of Gaussian clusters with random centres in {@code dims} dimensions, close
 * enough to overlap, and a fraction of the training labels is flipped at random, so a small network
 * cannot saturate it and a teacher's soft targets carry information the hard labels do not.
 */
public final class Synthetic {
    private Synthetic() {}

    /** The task: cluster centres drawn once from {@code seed}. */
    public record Task(int dims, int classes, float[][] centres, float noise) {
        /** {@code n} samples; labels flipped to a uniformly random other class with probability {@code labelNoise}. */
        public ArrayDataset sample(int n, long seed, float labelNoise) {
            SplittableRandom r = new SplittableRandom(seed);
            float[] x = new float[n * dims];
            long[] y = new long[n];
            int perClass = centres.length / classes;
            for (int i = 0; i < n; i++) {
                int c = r.nextInt(classes);
                float[] centre = centres[c * perClass + r.nextInt(perClass)];
                for (int d = 0; d < dims; d++) x[i * dims + d] = centre[d] + noise * (float) gaussian(r);
                y[i] = c;
                if (labelNoise > 0 && r.nextDouble() < labelNoise) y[i] = (c + 1 + r.nextInt(classes - 1)) % classes;
            }
            return new ArrayDataset(x, y, new long[] {dims});
        }
    }

    public static Task task(long seed, int dims, int classes, int clustersPerClass, float spread, float noise) {
        SplittableRandom r = new SplittableRandom(seed);
        float[][] centres = new float[classes * clustersPerClass][dims];
        for (float[] c : centres) for (int d = 0; d < dims; d++) c[d] = spread * (float) gaussian(r);
        return new Task(dims, classes, centres, noise);
    }

    private static double gaussian(SplittableRandom r) {
        double u = 1 - r.nextDouble(), v = r.nextDouble();
        return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    }
}
