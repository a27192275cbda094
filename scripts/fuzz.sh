#!/usr/bin/env bash
# A fuzzing campaign: the guest's hypercall fuzzer over many seeds, many
# guests to a boot.
#
#   scripts/fuzz.sh [--guests N] [--first S] [--per-boot G] [--count C]
#                   [--hostile H] [--mem SIZE] [--at-once A] [--timeout T]
#                   [--accel tcg|kvm] [--jobs J] [--smp N]
#
#   --guests N    fuzzing guests in all, with seeds S .. S+N-1 (default 1000)
#   --first S     the first seed (default 1)
#   --per-boot G  guests run one after another in one boot of Umbra (500)
#   --count C     requests each guest makes at most (default 20000)
#   --hostile H   one request in H is hostile, the others calm (default 50;
#                 1 is the plain fuzzer, every request edge-biased)
#   --mem SIZE    each guest's memory, guest_mem= (default 4M)
#   --at-once A   guests_at_once= (default 1: one guest at a time, so a
#                 host crash points at one seed)
#   --timeout T   guest_timeout= in seconds (default 10)
#   --accel       tcg (default) or kvm
#   --jobs J      boots run in parallel (default: the CPU count)
#   --smp N       CPUs in each boot (default 1); with --at-once N or more,
#                 the guests of a boot are fuzzed on all N CPUs at once
#   --seeds N     the old name of --guests
#
# Boot k runs guests=G with the guest command line
# `test=fuzz:BASE+{n}:C:H`, BASE = S-1+k*G: Umbra writes each guest's
# number for {n}, so guest n of boot k has seed BASE+n and prints it. The
# guest makes up to C requests (hypercalls biased to edge values,
# page-table writes, traps, shared-page garbage; see guest/src/probes/fuzz.rs)
# and most often ends killed with a reason. A boot passes when Umbra's
# totals line accounts for every guest, each one exited 0 or was killed,
# the free frames after equal those before (no memory leaked), and Umbra
# neither crashed nor hung. Hypercalls are Umbra's own counts, from that
# line. Failing boots keep their serial log (target/fuzz/boot-K.log) and
# name the seed to replay alone, exactly:
#   scripts/run.sh --accel tcg --append "guest_mem=4M -- test=fuzz:SEED:C:H"
set -euo pipefail
source "$(dirname "$0")/common.sh"

guests=1000 first=1 per_boot=500 count=20000 hostile=50 mem=4M at_once=1 timeout=10 accel=tcg smp=1
jobs=$(nproc 2>/dev/null || echo 2)
while [ $# -gt 0 ]; do
    case "$1" in
        --guests | --seeds) guests=${2:?}; shift 2 ;;
        --first) first=${2:?}; shift 2 ;;
        --per-boot) per_boot=${2:?}; shift 2 ;;
        --count) count=${2:?}; shift 2 ;;
        --hostile) hostile=${2:?}; shift 2 ;;
        --mem) mem=${2:?}; shift 2 ;;
        --at-once) at_once=${2:?}; shift 2 ;;
        --timeout) timeout=${2:?}; shift 2 ;;
        --accel) accel=${2:?}; shift 2 ;;
        --jobs) jobs=${2:?}; shift 2 ;;
        --smp) smp=${2:?}; shift 2 ;;
        *) say "unknown option '$1'"; sed -n '2,24p' "$0"; exit 2 ;;
    esac
done
ensure_qemu
build_image >&2
out="$UMBRA_ROOT/target/fuzz"
mkdir -p "$out"
rm -f "$out"/boot-*.log "$out/summary.txt"
boots=$(((guests + per_boot - 1) / per_boot))

# One boot: guests BASE+1 .. BASE+G. Prints one summary line.
one_boot() {
    local k=$1
    local base=$((first - 1 + k * per_boot))
    local g=$((guests - k * per_boot < per_boot ? guests - k * per_boot : per_boot))
    local log="$out/boot-$k.log" rc=0
    qemu_args "$accel" microvm "$smp" 512M
    # A generous bound: every guest could run into its watchdog.
    timeout $((120 + g * timeout)) qemu-system-x86_64 "${QEMU_ARGS[@]}" \
        -append "log=warn guest_timeout=$timeout guest_mem=$mem guests=$g guests_at_once=$at_once -- test=fuzz:$base+{n}:$count:$hostile" \
        >"$log" 2>&1 || rc=$?
    local status totals ended killed exited other calls async before after
    status=$(status_from_qemu "$rc")
    # The serial console ends its lines with \r\n.
    totals=$(grep -a '^guests: [0-9]* ended: ' "$log" | tr -d '\r' || true)
    read -r ended exited killed other calls async before after < <(
        echo "$totals" | sed -E 's/^guests: ([0-9]+) ended: ([0-9]+) exited 0, ([0-9]+) killed, ([0-9]+) other; hypercalls ([0-9]+) \(\+([0-9]+) async\).*free frames ([0-9]+) before, ([0-9]+) after$/\1 \2 \3 \4 \5 \6 \7 \8/'
    ) || true
    local why=""
    if [ "$rc" = 124 ]; then why="hung (no exit within the time limit)"
    elif grep -aq "umbra: crash" "$log"; then why="host crash"
    elif [ -z "$totals" ]; then why="no totals line (status $status)"
    elif [ "$ended" != "$g" ]; then why="$ended of $g guests accounted for"
    elif [ "$other" != 0 ]; then why="$other guests ended neither exited 0 nor killed"
    elif [ "$before" != "$after" ]; then why="free frames $before before, $after after: memory leaked"
    elif [ "$status" != 0 ] && [ "$status" != 100 ]; then why="status $status"
    fi
    if [ -n "$why" ]; then
        # The guest that ran last is the one to replay first.
        local last
        last=$(grep -ao '\] guest: fuzz seed [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
        echo "FAIL boot $k seeds $((base + 1))-$((base + g)): $why; last seed started $last; log $log"
    else
        echo "ok boot $k seeds $((base + 1))-$((base + g)) guests $g killed $killed exited $exited hypercalls $calls async $async"
    fi
}
export -f one_boot status_from_qemu qemu_args
export out first per_boot guests count hostile mem at_once timeout accel smp UMBRA_IMAGE

started=$(date +%s)
seq 0 $((boots - 1)) | xargs -P "$jobs" -I{} bash -c 'one_boot {}' | tee "$out/summary.txt"
elapsed=$(($(date +%s) - started))
failures=$(grep -c '^FAIL' "$out/summary.txt" || true)
read -r ran killed exited calls async < <(awk '/^ok/ {g += $7; k += $9; e += $11; h += $13; a += $15}
    END {print g + 0, k + 0, e + 0, h + 0, a + 0}' "$out/summary.txt")
echo
echo "fuzz: seeds $first-$((first + guests - 1)) under $accel in $boots boots of up to $per_boot guests" \
    "(guest_mem=$mem, at most $count requests each, 1 in $hostile hostile), $elapsed s"
echo "fuzz: $ran guests ended: $killed killed, $exited exited 0; hypercalls $calls (+$async async);" \
    "$failures failing boots"
echo "fuzz: replay a seed alone: scripts/run.sh --accel $accel --append" \
    "\"guest_timeout=$timeout guest_mem=$mem -- test=fuzz:SEED:$count:$hostile\""
echo "fuzz: most common endings:"
cat "$out"/boot-*.log | tr -d '\r' | grep -ao 'guest killed: .*\|guest exited with status .*' |
    sed 's/0x[0-9a-f]*/N/g; s/[0-9][0-9]*/N/g' | sort | uniq -c | sort -rn | head -12
[ "$failures" = 0 ]
