package org.distill4j.core.data;

import java.io.IOException;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;

/**
 * The one data syntax every command uses (docs/data.md):
 * <ul>
 *   <li>{@code idx:IMAGES,LABELS} MNIST-style IDX files;</li>
 *   <li>{@code cifar10:BATCH[,BATCH...]} CIFAR-10 binary batches;</li>
 *   <li>{@code npy:SAMPLES.npy,LABELS.npy} float32 samples [N, ...] and integer labels [N].</li>
 * </ul>
 */
public final class DataSpec {
    private DataSpec() {}

    public static Dataset open(String spec) throws IOException {
        int colon = spec.indexOf(':');
        if (colon < 0) throw new IllegalArgumentException("data '" + spec + "': expected idx:IMAGES,LABELS, cifar10:FILE[,FILE...] or npy:X.npy,Y.npy");
        String kind = spec.substring(0, colon);
        List<Path> files = Arrays.stream(spec.substring(colon + 1).split(",")).filter(s -> !s.isBlank()).map(Path::of).toList();
        return switch (kind) {
            case "idx" -> {
                if (files.size() != 2) throw new IllegalArgumentException("data '" + spec + "': idx needs two files, IMAGES,LABELS");
                yield ByteImageDataset.idx(files.get(0), files.get(1));
            }
            case "npy" -> {
                if (files.size() != 2) throw new IllegalArgumentException("data '" + spec + "': npy needs two files, SAMPLES.npy,LABELS.npy");
                yield ArrayDataset.npy(files.get(0), files.get(1));
            }
            case "cifar10" -> {
                if (files.isEmpty()) throw new IllegalArgumentException("data '" + spec + "': cifar10 needs at least one batch file");
                yield ByteImageDataset.cifar10(files);
            }
            default -> throw new IllegalArgumentException("data '" + spec + "': unknown kind '" + kind + "' (idx, cifar10 or npy)");
        };
    }
}
