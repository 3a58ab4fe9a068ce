/**
 * Our CUDA kernels, compiled by nvcc into one fatbin and shipped as a resource of this module.
 * No native code runs here: this module only hands the image to the CUDA backend, which loads
 * it with cuModuleLoadData.
 */
module org.distill4j.kernels {
    exports org.distill4j.kernels;
}
