/**
 * FFM bindings in jextract's shape (one header class per C header), native library discovery,
 * status codes to typed exceptions, and typed launchers for Distill4J's own kernels.
 * Restricted FFM methods are called from here: grant {@code --enable-native-access=org.distill4j.bindings}.
 */
module org.distill4j.bindings {
    requires transitive org.distill4j.kernels;
    exports org.distill4j.bindings;
    exports org.distill4j.bindings.abi;
    exports org.distill4j.bindings.cuda;
    exports org.distill4j.bindings.cublas;
    exports org.distill4j.bindings.cudnn;
    exports org.distill4j.bindings.blas;
    exports org.distill4j.bindings.dnnl;
    exports org.distill4j.bindings.cpu;
    exports org.distill4j.bindings.kernels;
}
