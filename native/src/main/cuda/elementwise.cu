// Elementwise kernels over flat float32 buffers.
//
// Names are extern "C" so that the host side finds them with cuModuleGetFunction by their
// plain name (no C++ mangling). Every kernel takes its element count as a 64-bit integer and
// walks the buffer with a grid-stride loop, so any launch geometry covers any length: the host
// picks a grid that fills the device, not one that matches n.
//
// Shapes and units: x, y, out are float32 device buffers of n elements; n counts elements,
// not bytes.
#include <cstdint>

extern "C" __global__ void d4j_fill_f32(float* __restrict__ out, float value, int64_t n) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = value;
    }
}

// y <- alpha * x + y (BLAS axpy with unit strides).
extern "C" __global__ void d4j_axpy_f32(float alpha, const float* __restrict__ x,
                                        float* __restrict__ y, int64_t n) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = fmaf(alpha, x[i], y[i]);
    }
}

// x <- alpha * x.
extern "C" __global__ void d4j_scale_f32(float alpha, float* __restrict__ x, int64_t n) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        x[i] = alpha * x[i];
    }
}
