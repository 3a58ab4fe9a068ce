/** Distill4J's library layer: device memory and contexts, backends, and the system report. */
module org.distill4j.core {
    requires transitive org.distill4j.bindings;
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
}
