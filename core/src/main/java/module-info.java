/** Distill4J's library layer: device memory and contexts, backends, and the system report. */
@SuppressWarnings("requires-automatic") // DJL's tokenizers binding ships as an automatic module (Automatic-Module-Name: ai.djl.tokenizers)
module org.distill4j.core {
    requires transitive org.distill4j.bindings;
    requires ai.djl.tokenizers; // Hugging Face tokenizers (Rust, JNI) behind org.distill4j.core.tok.Tokenizer
    // DJL's jars are automatic modules, which read every module but pull no explicit one into the graph: the explicit
    // modules they use at run time must be required by someone, or its classes are missing on the module path.
    requires org.slf4j;
    requires com.google.gson;
    requires transitive com.fasterxml.jackson.databind; // ModelSpec exposes the parsed JSON
    exports org.distill4j.core;
    exports org.distill4j.core.cuda;
    exports org.distill4j.core.cpu;
    exports org.distill4j.core.info;
    exports org.distill4j.core.loss;
    exports org.distill4j.core.io;
    exports org.distill4j.core.nn;
    exports org.distill4j.core.data;
    exports org.distill4j.core.train;
    exports org.distill4j.core.infer;
    exports org.distill4j.core.lm;
    exports org.distill4j.core.tok;
}
