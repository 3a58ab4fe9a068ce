package org.distill4j.bindings;

import java.util.List;
import org.distill4j.bindings.abi.HeaderSpec;
import org.distill4j.bindings.blas.cblas_h;
import org.distill4j.bindings.cpu.distill4j_cpu_h;
import org.distill4j.bindings.cublas.cublasLt_h;
import org.distill4j.bindings.cublas.cublas_h;
import org.distill4j.bindings.cuda.cuda_h;
import org.distill4j.bindings.cudnn.cudnn_h;
import org.distill4j.bindings.dnnl.dnnl_h;
import org.distill4j.bindings.dnnl.omp_h;

/** Every header Distill4J binds, in dependency order. */
public final class BoundHeaders {
    private BoundHeaders() {}

    public static List<HeaderSpec> all() {
        return List.of(cuda_h.SPEC, cublas_h.SPEC, cublasLt_h.SPEC, cudnn_h.SPEC, cblas_h.SPEC, dnnl_h.SPEC, omp_h.SPEC, distill4j_cpu_h.SPEC);
    }
}
