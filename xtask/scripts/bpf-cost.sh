#!/bin/sh
# BPF cost per VM exit of kvmprof's programs, per hook mode, from the kernel's own BPF run-time
# statistics (run_time_ns / run_cnt per program), inside the SVM VM:
#
#   cargo xtask vmtest --shell-cmd 'sh xtask/scripts/bpf-cost.sh'
#
# For each mode: record a test VMM, snapshot the stats once the hooks are attached (the VMM
# is still waiting), snapshot again when its workload is done (hooks still attached), stop.
# Prints, per mode, the summed run time of kvmprof's programs over the exits kvmprof recorded,
# and the fentry/kprobe ratio. Absolute times under TCG mean little; the ratio does.
set -e
ARGS=${ARGS:-"--vcpus 1 --pio-user 1000 --pio-kernel 4000 --mmio 100 --pio-in 100"}
D=/run/bpf-cost
mkdir -p $D
sysctl -qw kernel.bpf_stats_enabled=1
# Sum of run_time_ns and run_cnt over kvmprof's programs (all have a known name prefix).
snap() {
    bpftool prog show -j | python3 -c '
import json, sys
progs = [p for p in json.load(sys.stdin) if p.get("name", "").split("_")[0] in
         ("kp", "krp", "fe", "fx", "tpb", "kvm", "cycle") or p.get("name", "") in
         ("kvm_run_enter", "kvm_userspace_exit", "kvm_pio", "kvm_mmio", "kvm_exit", "kvm_entry")]
print(sum(p.get("run_time_ns", 0) for p in progs), sum(p.get("run_cnt", 0) for p in progs))'
}
for mode in kprobe fentry; do
    # The workload VMM waits until the hooks are attached; a second, idle one keeps the
    # recording (and its programs) alive after the workload ends, for the second snapshot.
    "$TESTVMM" $ARGS --start-delay 10s > $D/$mode.vmm.json &
    vmm=$!
    "$TESTVMM" --start-delay 3600s > /dev/null &
    idle=$!
    "$KVMPROF" record --hooks $mode --pid $vmm --pid $idle -o $D/$mode.data 2> $D/$mode.err &
    rec=$!
    n=0
    until grep -q recording $D/$mode.err; do
        n=$((n + 1))
        if [ $n -gt 100 ]; then cat $D/$mode.err >&2; exit 1; fi
        sleep 0.2
    done
    set -- $(snap)
    t0=$1; c0=$2
    bpftool prog show > $D/$mode.progs
    bpftool link show > $D/$mode.links
    wait $vmm
    set -- $(snap)
    t1=$1; c1=$2
    kill -INT $rec; wait $rec || true
    kill $idle; wait $idle || true
    exits=$("$KVMPROF" report -i $D/$mode.data --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_exits"])')
    echo "$mode: $exits exits, $((c1 - c0)) program runs, $((t1 - t0)) ns in programs, $(( (t1 - t0) / exits )) ns/exit"
    echo "$mode $exits $((t1 - t0))" >> $D/summary
done
sysctl -qw kernel.bpf_stats_enabled=0
python3 - $D/summary <<'PY'
import sys
rows = {m: (int(e), int(t)) for m, e, t in (l.split() for l in open(sys.argv[1]))}
per = {m: t / e for m, (e, t) in rows.items()}
print(f"fentry/kprobe cost per exit: {per['fentry']:.0f} / {per['kprobe']:.0f} ns = {per['fentry'] / per['kprobe']:.2f}")
PY
echo "--- fentry programs and links (kernel's view)"
grep -A2 -E "name (fe|fx|tpb)_" $D/fentry.progs || true
grep -B1 -A3 -E "tracing" $D/fentry.links || true
