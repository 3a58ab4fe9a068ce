package org.distill4j.cli;

import java.io.IOException;
import java.nio.file.Path;
import org.distill4j.core.Backend;
import org.distill4j.core.DType;
import org.distill4j.core.cpu.CpuBlas;
import org.distill4j.core.cuda.CudaBackend;
import org.distill4j.core.lm.DecoderModel;

/**
 * What a frozen decoder's matrix products run in: {@code --teacher-dtype} of {@code distill
 * distill} (default stored, the "in its stored dtype") and {@code --dtype} of predict,
 * generate and eval (default f32: the float32 numerics the fixtures are checked against).
 * stored: bf16 when every weight is BF16 on disk and this backend multiplies bf16 natively (the
 * oneDNN engine on the CPU; CUDA, through cublasGemmEx), float32 otherwise; transformers' dtype="auto" likewise keeps a bf16
 * checkpoint in bf16. bf16 and f32 force one or the other.
 */
enum DecoderDtype {
    STORED, F32, BF16;

    /** The flag's value: stored, f32 or bf16; a one-line error naming the flag otherwise. */
    static DecoderDtype parse(String flag, String value) {
        return switch (value) {
            case "stored" -> STORED;
            case "f32" -> F32;
            case "bf16" -> BF16;
            default -> throw new IllegalArgumentException(flag + " must be stored, f32 or bf16, got '" + value + "'");
        };
    }

    /** The dtype to load in, given the dtypes on disk ("BF16", "F32", "BF16, F32", ...) and the backend. */
    DType resolve(String diskDtype, Backend backend) {
        return switch (this) {
            case F32 -> DType.F32;
            case BF16 -> DType.BF16;
            case STORED -> "BF16".equals(diskDtype) && nativeBf16(backend) ? DType.BF16 : DType.F32;
        };
    }

    /** Why {@link #resolve} chose what it chose, for the log: "bf16 (as stored)", "float32 (--dtype f32)", ... */
    String describe(String flag, String diskDtype, Backend backend) {
        return switch (this) {
            case F32 -> "float32 (" + flag + " f32)";
            case BF16 -> "bf16 (" + flag + " bf16)";
            case STORED -> !"BF16".equals(diskDtype) ? "float32 (stored " + diskDtype + ")"
                : nativeBf16(backend) ? "bf16 (as stored)"
                : "float32: " + (backend.isHost() ? "the " + CpuBlas.engine().key() + " engine has no bf16 matrix product (oneDNN has)"
                    : backend.name() + " has no bf16 decoder") + "; " + flag + " bf16 forces it";
        };
    }

    /** Whether bf16 products are native here: the CPU with a bf16 matmul (oneDNN), or CUDA (cublasGemmEx, bf16 tensor cores). */
    private static boolean nativeBf16(Backend backend) {
        return backend instanceof CudaBackend || (backend.isHost() && CpuBlas.hasFastBf16());
    }

    /** Loads the folder in the dtype this choice resolves to. */
    DecoderModel load(Backend backend, Path dir) throws IOException {
        return DecoderModel.load(backend, dir, resolve(DecoderModel.summary(dir).diskDtype(), backend));
    }
}
