// The reference HdrHistogram implementation (Debian libhdrhistogram-java) as a witness for
// kvmprof's files: run as a single-file program, `java -cp hdrhistogram.jar HdrCheck.java MODE ...`.
//
//   read LOG        every series of an interval log, read with HistogramLogReader
//   write LOG MODE  writes a log with HistogramLogWriter (MODE: tagged or untagged) and prints
//                   its series as `read` would; MODE double: one DoubleHistogram, nothing printed
//   decode FILE     one base64 compressed histogram per line, decoded
//
// Output: one JSON object per series, `{"tag":..,"count":..,"p99":..,"max":..,"intervals":..}`,
// the tag "" for untagged histograms (decode: the line number instead).
import java.io.File;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.HdrHistogram.DoubleHistogram;
import org.HdrHistogram.EncodableHistogram;
import org.HdrHistogram.Histogram;
import org.HdrHistogram.HistogramLogReader;
import org.HdrHistogram.HistogramLogWriter;

public class HdrCheck {
    public static void main(String[] args) throws Exception {
        switch (args[0]) {
            case "read" -> print(read(args[1]));
            case "write" -> {
                write(args[1], args[2]);
                if (!args[2].equals("double")) {
                    print(read(args[1]));
                }
            }
            case "decode" -> decode(args[1]);
            default -> throw new IllegalArgumentException("mode: read, write or decode");
        }
    }

    /** Sum and interval count of one series. */
    record Series(Histogram sum, int[] intervals) {}

    static Map<String, Series> read(String path) throws Exception {
        Map<String, Series> series = new TreeMap<>();
        HistogramLogReader reader = new HistogramLogReader(new File(path));
        EncodableHistogram e;
        while ((e = reader.nextIntervalHistogram()) != null) {
            Histogram h = (Histogram) e;
            String tag = h.getTag() == null ? "" : h.getTag();
            // Three digits and auto-resize, like kvmprof's histograms.
            Series s = series.computeIfAbsent(tag, t -> new Series(new Histogram(3), new int[1]));
            s.sum().add(h);
            s.intervals()[0]++;
        }
        return series;
    }

    static void print(Map<String, Series> series) {
        for (Map.Entry<String, Series> s : series.entrySet()) {
            line(System.out, s.getKey(), s.getValue().sum(), s.getValue().intervals()[0]);
        }
    }

    static void line(PrintStream out, String tag, Histogram h, int intervals) {
        out.printf("{\"tag\":\"%s\",\"count\":%d,\"p99\":%d,\"max\":%d,\"intervals\":%d}%n", tag,
                h.getTotalCount(), h.getValueAtPercentile(99.0), h.getMaxValue(), intervals);
    }

    /**
     * Five one-second intervals of made-up latencies in ns. Tagged: a kvmprof series, a series
     * under a foreign tag, and untagged; untagged: only untagged histograms; double: see below.
     */
    static void write(String path, String mode) throws Exception {
        long startMs = 1_700_000_000_000L;
        try (PrintStream out = new PrintStream(path)) {
            HistogramLogWriter w = new HistogramLogWriter(out);
            w.outputComment("written by HistogramLogWriter for kvmprof's tests");
            w.outputLogFormatVersion();
            w.outputStartTime(startMs);
            w.setBaseTime(startMs);
            w.outputBaseTime(startMs);
            w.outputLegend();
            if (mode.equals("double")) {
                // Floating-point values (here: ms), which kvmprof must refuse.
                DoubleHistogram d = new DoubleHistogram(3);
                for (int v = 0; v < 100; v++) {
                    d.recordValue(0.5 + v * 0.01);
                }
                d.setStartTimeStamp(startMs);
                d.setEndTimeStamp(startMs + 1000);
                w.outputIntervalHistogram(d);
                return;
            }
            boolean tagged = mode.equals("tagged");
            String[] tags = tagged
                    ? new String[] {"p7/v0/svm:0x7b/cycle", "java-foreign", null}
                    : new String[] {null};
            for (int i = 0; i < 5; i++) {
                for (int t = 0; t < tags.length; t++) {
                    Histogram h = new Histogram(3);
                    for (int v = 0; v < 1000 + 100 * i; v++) {
                        h.recordValue(1000 + 37L * v * (t + 1) + (v % 97 == 0 ? 500_000 : 0));
                    }
                    h.setStartTimeStamp(startMs + 1000L * i);
                    h.setEndTimeStamp(startMs + 1000L * (i + 1));
                    h.setTag(tags[t]);
                    w.outputIntervalHistogram(h);
                }
            }
        }
    }

    static void decode(String path) throws Exception {
        List<String> lines = Files.readAllLines(new File(path).toPath());
        for (int i = 0; i < lines.size(); i++) {
            byte[] blob = Base64.getDecoder().decode(lines.get(i).trim());
            Histogram h = Histogram.decodeFromCompressedByteBuffer(ByteBuffer.wrap(blob), 0);
            line(System.out, Integer.toString(i + 1), h, 1);
        }
    }
}
