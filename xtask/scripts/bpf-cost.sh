#!/bin/sh
# BPF cost per VM exit of kvmprof's programs, kprobe mode against fentry mode, from the
# kernel's own BPF run-time statistics (run_time_ns / run_cnt per program), in the SVM VM:
#
#   cargo xtask vmtest --shell-cmd 'sh xtask/scripts/bpf-cost.sh'
#
# For each mode kvmprof records the test VMM it starts (`-- CMD`, held until every hook is
# attached) plus an idle VMM that keeps the recording, and so the programs, alive after the
# workload. The started command snapshots the statistics and then execs the test VMM (same
# pid, so the programs do their full work for it); the second snapshot is taken once the VMM
# has printed its counts. Prints per program runs and ns per run, the summed ns per exit
# kvmprof recorded, and the fentry/kprobe ratio (absolute times under TCG mean little);
# then the VMM's wall time per exit without kvmprof and with each mode.
set -e
ARGS=${ARGS:-"--vcpus 1 --pio-user 1000 --pio-kernel 4000 --mmio 100 --pio-in 100"}
D=/run/bpf-cost
mkdir -p $D
sysctl -qw kernel.bpf_stats_enabled=1
for mode in kprobe fentry; do
    "$TESTVMM" --start-delay 3600s > /dev/null &
    idle=$!
    "$KVMPROF" record --hooks $mode --pid $idle -o $D/$mode.data -- sh -c \
        "bpftool prog show -j > $D/$mode.t0.json; exec \"\$TESTVMM\" $ARGS" \
        > $D/$mode.vmm.json 2> $D/$mode.err &
    rec=$!
    n=0
    until grep -q '"total"' $D/$mode.vmm.json 2>/dev/null; do
        n=$((n + 1))
        if [ $n -gt 600 ]; then cat $D/$mode.err >&2; exit 1; fi
        sleep 0.5
    done
    bpftool prog show -j > $D/$mode.t1.json
    bpftool link show > $D/$mode.links
    kill -INT $rec; wait $rec || true
    kill $idle; wait $idle || true
    "$KVMPROF" report -i $D/$mode.data --format json > $D/$mode.report.json
done
sysctl -qw kernel.bpf_stats_enabled=0
# The same workload without kvmprof: the VMM's own wall time per exit is the baseline of the
# second figure below (which includes what the statistics leave out: the kprobe trap, the
# trampoline, the classic tracepoint's record copy; noisy under TCG and on a loaded host).
"$TESTVMM" $ARGS > $D/none.vmm.json
python3 - $D <<'PY'
import json, sys
d = sys.argv[1]
per_exit = {}
for mode in ("kprobe", "fentry"):
    t0 = {p["id"]: p for p in json.load(open(f"{d}/{mode}.t0.json"))}
    t1 = json.load(open(f"{d}/{mode}.t1.json"))
    exits = json.load(open(f"{d}/{mode}.report.json"))["total_exits"]
    total = 0
    print(f"{mode}: {exits} exits recorded")
    for p in t1:
        if p["id"] not in t0:
            continue
        runs = p.get("run_cnt", 0) - t0[p["id"]].get("run_cnt", 0)
        ns = p.get("run_time_ns", 0) - t0[p["id"]].get("run_time_ns", 0)
        if runs:
            total += ns
            print(f"  {p['type']:<11} {p.get('name', '?'):<16} {runs:>7} runs {ns / runs:>9.0f} ns/run")
    per_exit[mode] = total / exits
    print(f"  total {total} ns = {per_exit[mode]:.0f} ns per exit")
def wall(mode):
    v = json.load(open(f"{d}/{mode}.vmm.json"))
    n = sum(x for k, x in v["total"].items() if isinstance(x, int))
    return v["wall_ns"] / n
base = wall("none")
print(f"VMM wall time per exit: none {base:.0f} ns, kprobe {wall('kprobe'):.0f} ns, fentry {wall('fentry'):.0f} ns;"
      f" added by kvmprof: kprobe {wall('kprobe') - base:.0f} ns, fentry {wall('fentry') - base:.0f} ns")
print(f"fentry/kprobe BPF run time per exit: {per_exit['fentry']:.0f} / {per_exit['kprobe']:.0f} ns"
      f" = {per_exit['fentry'] / per_exit['kprobe']:.2f}")
PY
echo "--- fentry mode: links (kernel's view)"
cat $D/fentry.links
