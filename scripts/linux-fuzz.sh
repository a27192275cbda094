#!/usr/bin/env bash
# A campaign of the Linux-ABI fuzzer: random system calls with edge-value
# arguments, from a static program (tests/linux-c/fuzz.c), against the
# guest kernel's Linux layer, one seed to a boot.
#
#   scripts/linux-fuzz.sh [--seeds N] [--first S] [--count C]
#                         [--accel tcg|kvm] [--native] [--jobs J]
#
#   --seeds N   seeds S .. S+N-1, one boot each (default 10)
#   --first S   the first seed (default 1)
#   --count C   calls each seed draws (default 100000; a few are skipped
#               by the fuzzer itself, it says how many)
#   --accel     tcg (default) or kvm
#   --native    boot the guest kernel directly instead of under Umbra
#   --jobs J    boots run in parallel (default: the CPU count)
#
# A boot passes when the fuzzer prints its last line ("seed S: M calls
# made, K skipped, done") and the machine exits with status 0: the guest
# kernel answered every call, never panicked or hung, and Umbra neither
# crashed nor killed the guest. Logs are kept in target/linux-fuzz/;
# replay one seed with every call printed:
#   scripts/run.sh --rootfs target/linux-fuzz/rootfs.cpio \
#       --append "-- init=/bin/linux-fuzz -g -v SEED COUNT"
set -euo pipefail
source "$(dirname "$0")/common.sh"

seeds=10 first=1 count=100000 accel=tcg native=0
jobs=$(nproc 2>/dev/null || echo 2)
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds=${2:?}; shift 2 ;;
        --first) first=${2:?}; shift 2 ;;
        --count) count=${2:?}; shift 2 ;;
        --accel) accel=${2:?}; shift 2 ;;
        --native) native=1; shift ;;
        --jobs) jobs=${2:?}; shift 2 ;;
        *) say "unknown option '$1'"; sed -n '2,16p' "$0"; exit 2 ;;
    esac
done
ensure_qemu
build_image >&2
out="$UMBRA_ROOT/target/linux-fuzz"
mkdir -p "$out"
rm -f "$out"/seed-*.log "$out/summary.txt"
"$UMBRA_ROOT/scripts/rootfs.sh" --c-programs -o "$out/rootfs.cpio" >&2
if [ "$native" = 1 ]; then
    (cd "$UMBRA_ROOT" && cargo build --release --target "$UMBRA_TARGET" -p guest) >&2
    UMBRA_IMAGE="$UMBRA_ROOT/target/$UMBRA_TARGET/release/guest"
    how=natively
else
    how="under Umbra"
fi

# One boot: one seed. Prints one summary line.
one_seed() {
    local seed=$1
    local log="$out/seed-$seed.log" rc=0 append
    qemu_args "$accel" microvm 1 512M
    append="init=/bin/linux-fuzz -g $seed $count"
    [ "$native" = 1 ] || append="-- $append"
    # Generous: a boot takes seconds; the bound only catches a hang.
    timeout 900 qemu-system-x86_64 "${QEMU_ARGS[@]}" -initrd "$out/rootfs.cpio" -append "$append" \
        >"$log" 2>&1 || rc=$?
    local status done_line
    status=$(status_from_qemu "$rc")
    done_line=$(tr -d '\r' <"$log" | grep -a "^linux-fuzz: seed $seed: .* done$" || true)
    if [ "$rc" = 124 ]; then echo "FAIL seed $seed: hung (no exit within the time limit); log $log"
    elif [ -z "$done_line" ]; then echo "FAIL seed $seed: the fuzzer did not finish (status $status); log $log"
    elif [ "$status" != 0 ]; then echo "FAIL seed $seed: status $status; log $log"
    else echo "ok seed $seed: ${done_line#linux-fuzz: seed "$seed": }"
    fi
}
export -f one_seed status_from_qemu qemu_args
export out count accel native UMBRA_IMAGE

started=$(date +%s)
seq "$first" $((first + seeds - 1)) | xargs -P "$jobs" -I{} bash -c 'one_seed {}' | tee "$out/summary.txt"
elapsed=$(($(date +%s) - started))
failures=$(grep -c '^FAIL' "$out/summary.txt" || true)
read -r made skipped < <(awk '/^ok/ {m += $4; s += $7} END {print m + 0, s + 0}' "$out/summary.txt")
echo
echo "linux-fuzz: seeds $first-$((first + seeds - 1)) $how under $accel, $count calls drawn each, $elapsed s"
echo "linux-fuzz: $made calls made, $skipped skipped by the fuzzer; $failures failing seeds"
[ "$failures" = 0 ]
