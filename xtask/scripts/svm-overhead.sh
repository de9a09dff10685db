#!/bin/sh
# What recording costs the recorded VMM, kvmprof against `perf kvm stat record`, in the SVM VM:
#
#   cargo xtask vmtest --shell-cmd 'sh xtask/scripts/svm-overhead.sh'
#
# ROUNDS alternating rounds of the same test-VMM workload, each round run alone, under
# `kvmprof record` (MODES, below) and under `perf kvm stat record`. The figure is the VMM's
# own exits per second (its exits over the time from its first KVM_RUN to its last return,
# so the tools' start-up and tear-down are left out). Prints per mode the median and its
# ratio to the median alone, and checks every recording's io count against the VMM's:
# kvmprof's report (and 0 lost) and `perf kvm stat report`. Under QEMU TCG every instruction
# is emulated, the tools' too: only ratios mean anything. Run with `vmtest --icount` the
# guest clock counts instructions (1 a ns), so the rates are instruction counts, repeatable
# and load-independent, and a few rounds suffice; without it they are TCG's wall time, which
# varied threefold between rounds of the same mode.
set -e
ROUNDS=${ROUNDS:-5}
ARGS=${ARGS:-"--vcpus 1 --pio-user 1000 --pio-kernel 4000"}
# MODES: which to alternate, of alone, auto (`--hooks auto`, the default), fentry, kprobe
# (`--hooks fentry|kprobe`), detail (the default with `--detail`), func (the default with
# `--func x86_decode_emulated_instruction`, the emulator's entry: MMIO exits call it), before
# and perf. BEFORE: an earlier kvmprof binary (in the
# repository, which the VM sees), whose default `record` is mode `before`: before and after
# in one alternating run (it then takes the kprobe mode's turn unless MODES says otherwise).
if [ -n "$BEFORE" ]; then
    MODES=${MODES:-"alone auto before perf"}
else
    MODES=${MODES:-"alone auto kprobe perf"}
fi
# A nested vCPU occasionally stalls for minutes under TCG on a loaded host (see vmtest.rs):
# fail the run rather than hang the VM.
T="timeout 120"
D=/run/svm-overhead
rm -rf $D
mkdir -p $D
# One unmeasured run first: the first VMM run in a fresh VM was a third slower (TCG translating
# the code for the first time), which would be charged to whichever mode came first.
$T "$TESTVMM" $ARGS > /dev/null
r=1
while [ $r -le "$ROUNDS" ]; do
    for mode in $MODES; do
        f=$D/$mode.$r
        case $mode in
        alone) $T "$TESTVMM" $ARGS > $f.vmm.json ;;
        auto | fentry | kprobe | detail | func | before)
            case $mode in
            before) hooks=auto ;;
            detail) hooks="auto --detail" ;;
            func) hooks="auto --func x86_decode_emulated_instruction" ;;
            *) hooks=$mode ;;
            esac
            [ $mode = before ] && bin=$BEFORE || bin=$KVMPROF
            $T "$bin" record --hooks $hooks -o $f.data -- "$TESTVMM" $ARGS > $f.vmm.json 2> $f.err \
                || { cat $f.err $f.vmm.json >&2; exit 1; }
            "$bin" report -i $f.data --format json > $f.report.json
            ;;
        perf)
            $T perf kvm -o $f.data stat record -- "$TESTVMM" $ARGS > $f.vmm.json 2> $f.err \
                || { cat $f.err $f.vmm.json >&2; exit 1; }
            # The table goes to stderr; its `io` row holds the sample count.
            perf kvm -i $f.data stat report > $f.report.txt 2>&1
            ;;
        esac
        echo "round $r $mode: $(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["exits_per_sec"]))' < $f.vmm.json) exits/s" >&2
    done
    r=$((r + 1))
done
# The table goes to stderr, which the VM runner passes on.
python3 - $D "$ROUNDS" "$ARGS" "$MODES" <<'PY' >&2
import json, re, statistics, sys
d, rounds, args = sys.argv[1], int(sys.argv[2]), sys.argv[3]
labels = {
    "alone": "test VMM alone",
    "auto": "kvmprof record --hooks auto",
    "fentry": "kvmprof record --hooks fentry",
    "detail": "kvmprof record --detail",
    "func": "kvmprof record --func x86_decode_emulated_instruction",
    "kprobe": "kvmprof record --hooks kprobe",
    "before": "kvmprof record --hooks auto, $BEFORE",
    "perf": "perf kvm stat record",
}
modes = {m: labels[m] for m in sys.argv[4].split()}
bad = []

def vmm(mode, r):
    return json.load(open(f"{d}/{mode}.{r}.vmm.json"))

def recorded_io(mode, r):
    """The io exits the tool counted, and what else it says (hook modes, lost)."""
    if mode == "perf":
        for line in open(f"{d}/perf.{r}.report.txt"):
            f = line.split()
            if len(f) > 1 and f[0] == "io":
                return int(f[1]), ""
        return None, ""
    rep = json.load(open(f"{d}/{mode}.{r}.report.json"))
    io = next((g["count"] for g in rep["groups"] if g["label"] == "io"), None)
    if rep["lost"]:
        bad.append(f"{mode} round {r}: {rep['lost']} lost")
    hooks = sorted({h["mode"] for h in rep["header"]["hooks"] if h["mode"] != "unavailable"})
    return io, ", ".join(hooks)

print(f"workload: {args}; {rounds} alternating rounds; median of the VMM's exits/s")
print(f"| mode | exits/s (median) | ratio to alone | io exits counted / caused |")
print(f"|---|---|---|---|")
base = None
for mode, label in modes.items():
    rates = [vmm(mode, r)["exits_per_sec"] for r in range(1, rounds + 1)]
    med = statistics.median(rates)
    base = base or med
    counted = "—"
    if mode != "alone":
        seen, hooks = set(), set()
        for r in range(1, rounds + 1):
            t = vmm(mode, r)["total"]
            want = t["pio_user"] + t["pio_kernel"] + t["pio_in"]
            got, h = recorded_io(mode, r)
            seen.add(f"{got} / {want}")
            if h:
                hooks.add(h)
            if got != want:
                bad.append(f"{mode} round {r}: {got} io exits counted, the VMM caused {want}")
        counted = "; ".join(sorted(seen))
        if hooks:
            label += f" ({'; '.join(sorted(hooks))})"
    print(f"| {label} | {med:.0f} | {med / base:.2f} | {counted} |")
print("per round: " + "; ".join(
    f"{m} " + " ".join(f"{vmm(m, r)['exits_per_sec']:.0f}" for r in range(1, rounds + 1))
    for m in modes))
if bad:
    print("COUNT MISMATCH: " + "; ".join(bad))
    sys.exit(1)
PY
