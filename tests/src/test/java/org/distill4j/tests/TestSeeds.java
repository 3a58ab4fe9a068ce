package org.distill4j.tests;

/**
 * A randomized test's seed: fresh every run (so runs keep exploring), printed at the start (so a
 * failure can be replayed), and fixed with {@code -Ddistill4j.test.seed=N} (the replay).
 */
final class TestSeeds {
    private TestSeeds() {}

    static long seed(Class<?> test) {
        long seed = Long.getLong("distill4j.test.seed", System.nanoTime());
        System.out.println(test.getSimpleName() + " random seed " + seed + " (-Ddistill4j.test.seed=" + seed + " replays it)");
        return seed;
    }
}
