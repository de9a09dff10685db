"""Python's HdrHistogram (PyPI `hdrhistogram`, module `hdrh`) as a witness for kvmprof's files.

    python3 hdr_check.py read LOG        every series of an interval log
    python3 hdr_check.py write LOG MODE  writes a log (MODE: tagged or untagged), prints it as read
    python3 hdr_check.py decode FILE     one base64 compressed histogram per line
    python3 hdr_check.py csv FILE        kvmprof's CSV export: one object per row
    python3 hdr_check.py hgrm FILE UNIT  a .hgrm: total count, values either side of 99% (UNIT: ns per unit)

Output: one JSON object per series, {"tag", "count", "p99", "max", "intervals"}, the tag ""
for untagged histograms (decode: the line number instead), as HdrCheck.java prints.
"""
import csv
import io
import json
import sys

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader, HistogramLogWriter

# Values up to an hour in ns at 3 digits, like kvmprof's histograms.
LOWEST, HIGHEST, DIGITS = 1, 3_600_000_000_000, 3


def line(tag, h, intervals):
    print(json.dumps({
        "tag": tag,
        "count": h.get_total_count(),
        "p99": h.get_value_at_percentile(99.0),
        "max": h.get_max_value(),
        "intervals": intervals,
    }))


def read(path):
    series = {}
    reader = HistogramLogReader(path, HdrHistogram(LOWEST, HIGHEST, DIGITS))
    while True:
        h = reader.get_next_interval_histogram()
        if h is None:
            break
        tag = h.get_tag() or ""
        total, n = series.setdefault(tag, (HdrHistogram(LOWEST, HIGHEST, DIGITS), [0]))
        total.add(h)
        n[0] += 1
    reader.close()
    for tag in sorted(series):
        total, n = series[tag]
        line(tag, total, n[0])


def write(path, tagged):
    """Five one-second intervals of made-up latencies in ns, as HdrCheck.java writes."""
    start_ms = 1_700_000_000_000
    tags = ["p7/v1/svm:0x78/vendor_run", "python-foreign", None] if tagged else [None]
    with open(path, "w") as f:
        w = HistogramLogWriter(f)
        w.output_comment("written by hdrh for kvmprof's tests")
        w.output_log_format_version()
        # hdrh's output_start_time fails (it takes ms for s and calls a missing method), so
        # the line it means to write is written as a comment.
        w.output_comment("[StartTime: %.3f (seconds since epoch)]" % (start_ms / 1000))
        w.output_base_time(start_ms)
        w.output_legend()
        for i in range(5):
            for t, tag in enumerate(tags):
                h = HdrHistogram(LOWEST, HIGHEST, DIGITS)
                for v in range(800 + 50 * i):
                    h.record_value(2000 + 41 * v * (t + 1) + (300_000 if v % 89 == 0 else 0))
                # hdrh's writer drops tags: it writes to a buffer and the tag goes in front.
                buf = io.StringIO()
                # Timestamps relative to the base time, in seconds.
                HistogramLogWriter(buf).output_interval_histogram(h, float(i), float(i + 1))
                f.write(("Tag=%s," % tag if tag else "") + buf.getvalue())


def decode(path):
    with open(path) as f:
        for n, b64 in enumerate(f, 1):
            line(str(n), HdrHistogram.decode(b64.strip()), 1)


def read_csv(path):
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            print(json.dumps({k: row[k] for k in ("group", "stage", "samples", "p99_ns")}))


def read_hgrm(path, unit):
    """A .hgrm's total count and the values (in ns) of the lines either side of 99%."""
    count, below, above = None, None, None
    with open(path) as f:
        for text in f:
            fields = text.split()
            if len(fields) < 3 or text.startswith("#") or fields[0] == "Value":
                continue
            value, percentile, total = float(fields[0]) * unit, float(fields[1]), int(fields[2])
            if percentile <= 0.99:
                below = round(value)
            if above is None and percentile >= 0.99:
                above = round(value)
            count = total
    print(json.dumps({"count": count, "p99_below": below, "p99_above": above}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "read":
        read(sys.argv[2])
    elif mode == "write":
        write(sys.argv[2], sys.argv[3] == "tagged")
        read(sys.argv[2])
    elif mode == "decode":
        decode(sys.argv[2])
    elif mode == "csv":
        read_csv(sys.argv[2])
    elif mode == "hgrm":
        read_hgrm(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit("mode: read, write or decode")
