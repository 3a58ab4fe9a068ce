// The one translation unit build-kernels.sh hands to nvcc: `nvcc -fatbin` takes a single input,
// and one unit lets every kernel share the helpers in common.cuh. Every other .cu file in this
// folder must be included here (the build checks).
#include "elementwise.cu"
#include "ops.cu"
#include "decoder.cu"
#include "distill_loss.cu"
