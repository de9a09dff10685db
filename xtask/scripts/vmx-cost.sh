#!/bin/sh
# What recording costs per exit on Intel VMX, run inside the Bochs guest by `cargo xtask bench
# --vmx` (busybox sh; the files it needs are in /payload). With Bochs' `clock: sync=none` the
# guest clock counts emulated instructions exactly (IPS a guest second), and the guest has one
# CPU: the test VMM's own time from its first KVM_RUN to its last return, times IPS, is every
# instruction the CPU ran meanwhile — the vCPU thread, the profiler's threads, interrupts.
#
# ROUNDS alternating rounds of each workload in each of MODES: alone, under `kvmprof record`
# (`default`, `stages` = `--stages`, `kprobe` = `--hooks kprobe`, `tracepoint` = `--hooks
# tracepoint`), under `perf kvm stat record`
# and, when /payload/kvmprof-before exists, under that build's default `record` (`before`: the
# code before a change, in the same boot). With STATS=1, one `--bpf-stats on` recording per
# workload (the programs that ran per exit). Then kvmprof's cost while the VM makes no exit (its
# threads' schedstat over IDLE_S guest seconds).
# Output lines start with `@@` for xtask to pick up; a count that disagrees fails the run.
set -u
IPS=${IPS:?}
ROUNDS=${ROUNDS:-3}
EXITS=${EXITS:-20000}
IDLE_S=${IDLE_S:-10}
P=/payload
D=/tmp/cost
mkdir -p $D
STATS=${STATS:-1}
if [ -z "${MODES:-}" ]; then
    MODES="alone default stages kprobe perf"
    [ -x $P/kvmprof-before ] && MODES="$MODES before"
fi
WORKLOADS="user kernel"
bad=0

args() { case $1 in user) echo "--pio-user $EXITS" ;; kernel) echo "--pio-kernel $EXITS" ;; esac; }
field() { grep -o "\"$1\":[0-9.e+]*" "$2" | tail -1 | cut -d: -f2; }
# The VMM's exits (hlt included) and instructions per exit from its JSON.
summary() {
    awk -v ips="$IPS" -v w="$(field wall_ns "$1")" -v r="$(field exits_per_sec "$1")" \
        'BEGIN { printf "%d %.0f", r * w / 1e9 + 0.5, ips / r }'
}

run() { # mode workload tag
    f=$D/$1.$2.$3
    case $1 in
    alone) $P/kvmprof-testvmm $(args $2) > $f.json ;;
    default | stages | kprobe | tracepoint | before)
        kp=$P/kvmprof; h="--hooks auto"
        [ $1 = stages ] && h="--stages"
        [ $1 = kprobe ] && h="--hooks kprobe"
        [ $1 = tracepoint ] && h="--hooks tracepoint"
        [ $1 = before ] && kp=$P/kvmprof-before
        $kp record $h -o $f.data -- $P/kvmprof-testvmm $(args $2) > $f.json 2> $f.err \
            || { echo "@@FAIL $1 $2: $(tail -1 $f.err)"; bad=1; return; }
        $kp report -i $f.data > $f.report 2>&1
        got=$(sed -n 's/^exits: \([0-9]*\) .*lost events: \([0-9]*\).*/\1 \2/p' $f.report)
        # kvmprof's own account: its CPU (the reader) and, in the sampled second, BPF's.
        echo "@@COST $1 $2 $3 $(grep "own cost" $f.report)"
        ;;
    perf)
        $P/perf kvm -o $f.data stat record -- $P/kvmprof-testvmm $(args $2) > $f.json 2> $f.err \
            || { echo "@@FAIL $1 $2: $(tail -1 $f.err)"; bad=1; return; }
        $P/perf kvm -i $f.data stat report > $f.report 2>&1
        # The row is named after the vendor's exit reason: `io` on SVM, `IO_INSTRUCTION` on VMX.
        got="$(awk '$1 == "io" || $1 == "IO_INSTRUCTION" { print $2 }' $f.report) 0"
        ;;
    esac
    set -- "$1" "$2" "$3" $(summary $f.json)
    [ "$1" = alone ] && got=""
    if [ "$1" != alone ]; then
        # kvmprof counts every exit, the host's interrupts too (at least the VMM's, none lost);
        # perf's `io` row counts the PIO exits.
        set -- "$@" $got
        if [ "$1" = perf ]; then ok=$([ "${6:-}" = "$EXITS" ] && echo 1)
        else ok=$([ "${6:-0}" -ge "$4" ] && [ "${7:-}" = 0 ] && echo 1); fi
        [ -n "$ok" ] || { echo "@@FAIL $1 $2 round $3: counted '$got' (exits, lost), the VMM made $4"; bad=1; }
    fi
    echo "@@RUN $1 $2 $3 exits=$4 instr_per_exit=$5 counted=${6:--}"
}

$P/kvmprof-testvmm $(args user) > /dev/null # warm the page cache; unmeasured
r=1
while [ $r -le "$ROUNDS" ]; do
    for w in $WORKLOADS; do for m in $MODES; do run $m $w $r; done; done
    r=$((r + 1))
done

# The programs that ran per exit and their run time (ns on the guest clock = instructions/(IPS/1e9)).
[ "$STATS" = 1 ] && for w in $WORKLOADS; do
    $P/kvmprof record --bpf-stats on -o $D/stats.$w.data -- $P/kvmprof-testvmm $(args $w) > /dev/null 2>&1
    echo "@@STATS $w $($P/kvmprof report -i $D/stats.$w.data 2>&1 | grep "own cost")"
done

# Idle: a VM whose vCPU never runs, recorded for IDLE_S guest seconds once attached.
schedstat() { cat /proc/$1/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }
uptime_ns() { awk '{ printf "%.0f", $1 * 1e9 }' /proc/uptime; }
for kp in kvmprof kvmprof-before; do
    [ -x $P/$kp ] || continue
    $P/kvmprof-testvmm --pio-user 1 --start-delay 3600000 > /dev/null &
    vmm=$!
    sleep 1
    $P/$kp record --pid $vmm -o $D/idle.data > /dev/null 2> $D/idle.err &
    k=$!
    # kvmprof says "kvmprof: recording …; Ctrl-C to stop" once every hook is attached.
    while ! grep -q "Ctrl-C to stop" $D/idle.err; do
        kill -0 $k 2>/dev/null || { echo "@@FAIL idle $kp: $(tail -1 $D/idle.err)"; bad=1; break; }
        sleep 1
    done
    sleep 2
    c0=$(schedstat $k); t0=$(uptime_ns)
    sleep "$IDLE_S"
    c1=$(schedstat $k); t1=$(uptime_ns)
    kill -INT $k; wait $k
    kill $vmm; wait $vmm 2>/dev/null
    echo "@@IDLE $kp cpu_ns=$((c1 - c0)) over_ns=$((t1 - t0))"
done
echo "@@DONE bad=$bad"
