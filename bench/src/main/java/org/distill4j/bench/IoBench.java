package org.distill4j.bench;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.Tensor;
import org.distill4j.core.cpu.CpuBackend;
import org.distill4j.core.data.DataLoader;
import org.distill4j.core.data.DataSpec;
import org.distill4j.core.data.Dataset;
import org.distill4j.core.io.Safetensors;

/**
 * I/O benchmarks (median of repeats, warm page cache):
 *  1. loader: samples/s of full epochs of an IDX dataset through the double-buffered DataLoader;
 *  2. safetensors: loading every tensor of a 200 MB file into tensors, against reading the same
 *     file into memory with one FileChannel read (goal: within 1.2x).
 * Usage: IoBench [IDX_IMAGES IDX_LABELS]   (default: data/mnist/train-*)
 */
public final class IoBench {
    private IoBench() {}

    public static void main(String[] args) throws IOException {
        Backend cpu = CpuBackend.get();
        String images = args.length > 1 ? args[0] : "data/mnist/train-images-idx3-ubyte", labels = args.length > 1 ? args[1] : "data/mnist/train-labels-idx1-ubyte";
        try (Dataset d = DataSpec.open("idx:" + images + "," + labels); DataLoader loader = new DataLoader(d, cpu, 256, true, 1, false)) {
            double[] rates = new double[7];
            for (int e = 0; e < rates.length; e++) {
                long t0 = System.nanoTime(), n = 0;
                loader.start(e, 0);
                while (loader.hasNext()) n += loader.next().rows();
                rates[e] = n / ((System.nanoTime() - t0) / 1e9);
            }
            Arrays.sort(rates);
            System.out.printf("loader: %.0f samples/s (median of 7 epochs of %d samples, batch 256, shuffled; min %.0f, max %.0f)%n",
                rates[3], d.size(), rates[0], rates[6]);
        }
        Path file = Files.createTempFile("distill4j-bench", ".safetensors");
        try {
            Map<String, Tensor> tensors = new LinkedHashMap<>();
            for (int i = 0; i < 50; i++) {
                Tensor t = cpu.empty(DType.F32, 1000, 1000);
                cpu.uniform(t, -1, 1, i, 0);
                tensors.put("layer" + i + ".weight", t);
            }
            Safetensors.write(file, tensors, Map.of());
            long size = Files.size(file);
            double[] load = new double[7], raw = new double[7];
            Arena rawArena = Arena.ofConfined();
            MemorySegment buf = rawArena.allocate(size, 64); // allocated (and zeroed) once, outside the timing
            for (int r = 0; r < 7; r++) {
                long t0 = System.nanoTime();
                try (Safetensors st = Safetensors.open(file)) {
                    for (var e : tensors.entrySet()) st.copyInto(e.getKey(), e.getValue());
                }
                load[r] = (System.nanoTime() - t0) / 1e6;
                t0 = System.nanoTime();
                try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
                    ByteBuffer bb = buf.asByteBuffer();
                    while (bb.hasRemaining() && ch.read(bb) >= 0) { /* read it all */ }
                }
                raw[r] = (System.nanoTime() - t0) / 1e6;
            }
            rawArena.close();
            Arrays.sort(load);
            Arrays.sort(raw);
            System.out.printf("safetensors: %.1f ms to load %d MB into tensors vs %.1f ms to read the file: %.2fx (median of 7)%n",
                load[3], size >> 20, raw[3], load[3] / raw[3]);
            tensors.values().forEach(Tensor::close);
        } finally {
            Files.deleteIfExists(file);
        }
    }
}
