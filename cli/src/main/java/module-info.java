/** The {@code distill} command-line tool: a thin picocli layer over the core library. */
@SuppressWarnings("requires-automatic") // XChart ships as an automatic module (Automatic-Module-Name: org.knowm.xchart)
module org.distill4j.cli {
    requires org.distill4j.core;
    requires info.picocli;
    requires com.fasterxml.jackson.databind;
    requires org.knowm.xchart;
    requires java.desktop; // XChart draws the curves PNG with Java2D (headless)
    // picocli fills @Option/@Command fields reflectively.
    opens org.distill4j.cli to info.picocli;
    exports org.distill4j.cli;
}
