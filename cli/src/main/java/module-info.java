/** The {@code distill} command-line tool: a thin picocli layer over the core library. */
module org.distill4j.cli {
    requires org.distill4j.core;
    requires info.picocli;
    requires com.fasterxml.jackson.databind;
    // picocli fills @Option/@Command fields reflectively.
    opens org.distill4j.cli to info.picocli;
    exports org.distill4j.cli;
}
