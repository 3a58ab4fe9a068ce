package org.distill4j.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.distill4j.core.io.AtomicFiles;
import org.distill4j.core.train.Trainer;
import org.knowm.xchart.BitmapEncoder;
import org.knowm.xchart.XYChart;
import org.knowm.xchart.XYChartBuilder;
import org.knowm.xchart.style.markers.SeriesMarkers;

/** The training-curves PNG written beside metrics.jsonl: losses and test accuracy per evaluation. */
final class Curves {
    private Curves() {}

    /** Writes the PNG; returns false (and writes nothing) on a runtime without Java2D (a jlinked JRE without java.desktop). */
    static boolean write(Path png, String title, List<Trainer.Metrics> history) throws IOException {
        if (history.isEmpty()) return false;
        try {
            draw(png, title, history);
            return true;
        } catch (LinkageError noJava2d) {
            return false;
        }
    }

    private static void draw(Path png, String title, List<Trainer.Metrics> history) throws IOException {
        System.setProperty("java.awt.headless", "true");
        double[] epochs = history.stream().mapToDouble(Trainer.Metrics::epoch).toArray();
        XYChart chart = new XYChartBuilder().width(900).height(500).title(title).xAxisTitle("epoch").yAxisTitle("loss / accuracy").build();
        chart.getStyler().setYAxisMin(0.0);
        chart.addSeries("train loss", epochs, history.stream().mapToDouble(m -> Double.isFinite(m.trainLoss()) ? m.trainLoss() : 0).toArray())
            .setMarker(SeriesMarkers.CIRCLE);
        chart.addSeries("test loss", epochs, history.stream().mapToDouble(Trainer.Metrics::testLoss).toArray()).setMarker(SeriesMarkers.DIAMOND);
        chart.addSeries("test accuracy", epochs, history.stream().mapToDouble(Trainer.Metrics::testAccuracy).toArray()).setMarker(SeriesMarkers.SQUARE);
        byte[] bytes = BitmapEncoder.getBitmapBytes(chart, BitmapEncoder.BitmapFormat.PNG);
        Path tmp = AtomicFiles.temporaryFor(png);
        try {
            Files.write(tmp, bytes);
            AtomicFiles.publish(tmp, png);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }
}
