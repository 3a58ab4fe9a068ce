package org.distill4j.bindings;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.distill4j.bindings.cublas.CublasException;
import org.distill4j.bindings.cublas.cublas_h;
import org.distill4j.bindings.cudnn.CudnnException;
import org.distill4j.bindings.cudnn.cudnn_h;
import org.distill4j.bindings.dnnl.DnnlException;
import org.distill4j.bindings.dnnl.dnnl_h;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/**
 * Non-success statuses become typed exceptions with the library's own name and message. Without
 * a GPU the real libraries give us real failures to check: cublasCreate returns NOT_INITIALIZED.
 */
class StatusExceptionTest {
    @Test
    void cublasWithoutADriverFailsWithItsOwnStatusName() {
        Assumptions.assumeTrue(NativeLibraries.forBindings(NativeLibraries.Library.CUBLAS).isLoaded(), "cuBLAS not installed here");
        Assumptions.assumeFalse(NativeLibraries.forBindings(NativeLibraries.Library.CUDA_DRIVER).isLoaded(), "a CUDA driver is installed here");
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment handle = arena.allocate(ADDRESS);
            int status = cublas_h.cublasCreate_v2(handle);
            assertEquals(cublas_h.CUBLAS_STATUS_NOT_INITIALIZED, status);
            CublasException e = assertThrows(CublasException.class, () -> CublasException.check(status, "cublasCreate"));
            assertEquals("CUBLAS_STATUS_NOT_INITIALIZED", e.statusName());
            assertTrue(e.getMessage().startsWith("cublasCreate failed: CUBLAS_STATUS_NOT_INITIALIZED (1): "), e.getMessage());
        }
    }

    @Test
    void cudnnStatusesCarryCudnnsText() {
        Assumptions.assumeTrue(NativeLibraries.forBindings(NativeLibraries.Library.CUDNN).isLoaded(), "cuDNN not installed here");
        assertTrue(cudnn_h.cudnnGetVersion() >= 90000, "cuDNN 9 expected, got " + cudnn_h.cudnnGetVersion());
        CudnnException e = assertThrows(CudnnException.class, () -> CudnnException.check(cudnn_h.CUDNN_STATUS_BAD_PARAM, "cudnnSetTensor4dDescriptor"));
        assertEquals("CUDNN_STATUS_BAD_PARAM", e.statusName());
        assertEquals(cudnn_h.CUDNN_STATUS_BAD_PARAM, e.status());
        // Creating a handle without a GPU is a real failure, typed and named.
        Assumptions.assumeFalse(NativeLibraries.forBindings(NativeLibraries.Library.CUDA_DRIVER).isLoaded(), "a CUDA driver is installed here");
        try (Arena arena = Arena.ofConfined()) {
            int status = cudnn_h.cudnnCreate(arena.allocate(ADDRESS));
            assertNotEquals(cudnn_h.CUDNN_STATUS_SUCCESS, status);
            CudnnException created = assertThrows(CudnnException.class, () -> CudnnException.check(status, "cudnnCreate"));
            assertTrue(created.statusName().startsWith("CUDNN_STATUS_"), created.statusName());
        }
    }

    /** A real oneDNN failure: a matmul whose source [2, 3] and weights [4, 5] disagree on K is dnnl_invalid_arguments, typed and named. */
    @Test
    void onednnRejectsAMatmulWhoseShapesDisagree() {
        Assumptions.assumeTrue(NativeLibraries.forBindings(NativeLibraries.Library.DNNL).isLoaded(), "oneDNN not available here");
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            DnnlException.check(dnnl_h.dnnl_engine_create(out, dnnl_h.dnnl_cpu, 0), "dnnl_engine_create");
            MemorySegment engine = out.get(ADDRESS, 0);
            MemorySegment[] mds = new MemorySegment[3];
            long[][] dims = {{2, 3}, {4, 5}, {2, 5}};
            for (int i = 0; i < 3; i++) {
                DnnlException.check(dnnl_h.dnnl_memory_desc_create_with_strides(out, 2, arena.allocateFrom(JAVA_LONG, dims[i]), dnnl_h.dnnl_f32,
                    arena.allocateFrom(JAVA_LONG, dims[i][1], 1)), "dnnl_memory_desc_create_with_strides");
                mds[i] = out.get(ADDRESS, 0);
            }
            int status = dnnl_h.dnnl_matmul_primitive_desc_create(out, engine, mds[0], mds[1], MemorySegment.NULL, mds[2], MemorySegment.NULL);
            for (MemorySegment md : mds) dnnl_h.dnnl_memory_desc_destroy(md);
            dnnl_h.dnnl_engine_destroy(engine);
            assertEquals(dnnl_h.dnnl_invalid_arguments, status);
            DnnlException e = assertThrows(DnnlException.class, () -> DnnlException.check(status, "dnnl_matmul_primitive_desc_create"));
            assertEquals("dnnl_invalid_arguments", e.statusName());
            assertTrue(e.getMessage().startsWith("dnnl_matmul_primitive_desc_create failed: dnnl_invalid_arguments (2): "), e.getMessage());
        }
    }

    @Test
    void successIsSilent() {
        CublasException.check(0, "anything");
        CudnnException.check(0, "anything");
        DnnlException.check(0, "anything");
    }
}
