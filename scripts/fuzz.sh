#!/usr/bin/env bash
# A fuzzing campaign: the guest's hypercall fuzzer over many seeds.
#
#   scripts/fuzz.sh [--seeds N] [--first S] [--count C] [--accel tcg|kvm] [--jobs J]
#
# Each seed boots Umbra with `-- test=fuzz:SEED:COUNT`: the guest makes
# COUNT random requests (hypercalls biased to edge values, page-table
# writes, traps, shared-page garbage). A run passes when it ends with the
# guest exiting 0 or killed with a reason (status 0 or 100); it fails on a
# crash, a hang, or any other status. Failing seeds are listed with their
# serial logs (target/fuzz/SEED.log) and replay exactly:
#   scripts/run.sh --accel tcg --append "-- test=fuzz:SEED:COUNT"
set -euo pipefail
source "$(dirname "$0")/common.sh"

seeds=100 first=1 count=5000 accel=tcg jobs=2
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds=${2:?}; shift 2 ;;
        --first) first=${2:?}; shift 2 ;;
        --count) count=${2:?}; shift 2 ;;
        --accel) accel=${2:?}; shift 2 ;;
        --jobs) jobs=${2:?}; shift 2 ;;
        *) say "unknown option '$1'"; sed -n '2,4p' "$0"; exit 2 ;;
    esac
done
ensure_qemu
build_image >&2
out="$UMBRA_ROOT/target/fuzz"
mkdir -p "$out"

one_seed() {
    local seed=$1 log="$out/$1.log" rc=0
    qemu_args "$accel" microvm 1 256M
    timeout 120 qemu-system-x86_64 "${QEMU_ARGS[@]}" \
        -append "guest_timeout=60 -- test=fuzz:$seed:$count" >"$log" 2>&1 || rc=$?
    local status
    status=$(status_from_qemu "$rc")
    if grep -q "umbra: crash" "$log" || [ "$rc" = 124 ] || { [ "$status" != 0 ] && [ "$status" != 100 ]; }; then
        echo "FAIL seed $seed (status $status, log $log)"
    else
        local calls
        calls=$(grep -o 'stats: hypercalls [0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
        local ending
        ending=$(grep -E '^guest killed: |^guest: fuzz: ' "$log" | head -1 | cut -c1-90)
        echo "ok seed $seed calls $calls: $ending"
    fi
}
export -f one_seed status_from_qemu qemu_args
export out count accel UMBRA_IMAGE

seq "$first" $((first + seeds - 1)) | xargs -P "$jobs" -I{} bash -c 'one_seed {}' | tee "$out/summary.txt"
failures=$(grep -c '^FAIL' "$out/summary.txt" || true)
calls=$(awk '/^ok/ {sum += $5} END {print sum + 0}' "$out/summary.txt")
echo
echo "fuzz: $seeds seeds from $first under $accel, $count operations each: $calls hypercalls; $failures failures"
echo "fuzz: most common endings:"
sed 's/^ok seed [0-9]* calls [0-9]*: //' "$out/summary.txt" | grep -v '^FAIL' |
    sed 's/0x[0-9a-f]*/N/g; s/[0-9][0-9]*/N/g' | sort | uniq -c | sort -rn | head -8
[ "$failures" = 0 ]
