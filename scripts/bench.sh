#!/usr/bin/env bash
# Umbra's overhead against native, measured side by side in one run.
#
#   scripts/bench.sh [--modes "tcg icount kvm"] [--machine microvm|pc|q35]
#                    [--tcg-counts SPEC] [--kvm-counts SPEC]
#                    [--no-scaling | --only-scaling] [--no-boot | --only-boot]
#                    [--no-linux | --only-linux]
#
# The guest kernel boots twice per mode, from the same ELF: natively (QEMU
# runs it as a PVH kernel at ring 0) and nested (Umbra runs it at ring 1),
# with the same machine, memory and CPUs. Both run the same workloads
# (`test=bench:NAME=COUNT,...`): compute, syscall, yield, touch, fork and
# mixed (see guest/user/bench.rs). Each workload times itself with the
# guest's TSC clock and counts the exits it caused to Umbra.
#
# One more row, linux-getpid, is a Linux program (tests/linux-bench/
# getpid.c, built here with gcc into a one-file root filesystem): getpid
# with the `syscall` instruction in a loop, which under Umbra takes the
# direct path into the guest kernel, and natively the guest kernel's #UD.
# It cannot count its exits; the row's are Umbra's whole run's, over its
# operations (an upper bound). Without gcc the row is left out.
#
# Modes: tcg (QEMU's translator), icount (TCG with -icount shift=0, where
# a nanosecond of guest time is one instruction, so its figures are
# instruction counts and reproducible anywhere) and kvm (when /dev/kvm
# opens). A table per mode gives, per operation, native and nested cost,
# their ratio and Umbra's exits.
#
# Then, per mode but icount (which runs one CPU at a time), the scaling
# table: N identical guests, compute-bound or mixed, run by Umbra on one
# CPU (`cpus=1`) and then on N, in the same VM of N CPUs, for N = 2 and 4.
# Throughput is all the guests' operations over the longest guest's
# time; the speed-up is N CPUs' throughput over one CPU's. It can only
# reach N where the host gives QEMU N real cores.
#
# Then the boot table, per mode but icount: whole-process wall times, the
# median of three, of a bare PVH boot (the guest kernel natively:
# `test=exit:0` makes it say hello and stop), Umbra with `test=exit:0`,
# and Umbra with its default guest (the showcase); and when the guest's
# first line ("hello from ring ...") appeared.
#
# Last, the linux table: Debian's kernel, the guest kernel natively and
# Umbra running the same shell workloads (scripts/bench-linux.sh, which
# --only-linux runs alone, in the given modes).
#
# These are measurements, not tests: no run fails for being slow. Serial
# logs go to target/bench/.
set -euo pipefail
source "$(dirname "$0")/common.sh"

modes="tcg icount kvm" machine=microvm scaling=yes boots=yes linux=yes only=""
tcg_counts="compute=2000000,syscall=20000,yield=5000,touch=4096,fork=200,mixed=50"
# This machine's nested KVM is slow at every kernel entry (see
# docs/performance.md), natively too, so it gets smaller counts.
kvm_counts="compute=2000000,syscall=200,yield=100,touch=128,fork=10,mixed=4"
# linux-getpid's calls, per mode.
tcg_getpid=20000 kvm_getpid=200
# The scaling table's work per guest.
scaling_tcg="compute=200000000 mixed=100"
scaling_kvm="compute=200000000 mixed=8"
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --modes) modes=${2:?}; shift 2 ;;
        --machine) machine=${2:?}; shift 2 ;;
        --tcg-counts) tcg_counts=${2:?}; shift 2 ;;
        --kvm-counts) kvm_counts=${2:?}; shift 2 ;;
        --no-scaling) scaling=no; shift ;;
        --only-scaling) only=scaling; shift ;;
        --no-boot) boots=no; shift ;;
        --only-boot) only=boot; shift ;;
        --no-linux) linux=no; shift ;;
        --only-linux) only=linux; shift ;;
        -h|--help) usage ;;
        *) say "unknown option '$1'"; usage ;;
    esac
done

if [ "$only" = linux ]; then
    exec "$(dirname "$0")/bench-linux.sh" --modes "$modes"
fi
ensure_qemu
build_image >&2
(cd "$UMBRA_ROOT" && cargo build --release --target "$UMBRA_TARGET" -p guest) >&2 || exit 1
guest_elf="$UMBRA_ROOT/target/$UMBRA_TARGET/release/guest"
out="$UMBRA_ROOT/target/bench"
mkdir -p "$out"

# qemu_in_mode MODE KERNEL APPEND LOG [QEMU ARGS...]: one QEMU in MODE
# (tcg, icount or kvm), with a timeout that only catches hangs; the
# serial log is kept. Sets rc to QEMU's exit code.
qemu_in_mode() {
    local mode=$1 kernel=$2 append=$3 log=$4 accel=tcg extra=()
    shift 4
    case "$mode" in
        icount) extra=(-icount shift=0) ;;
        kvm) accel=kvm ;;
    esac
    qemu_args "$accel" "$machine" 2 256M
    QEMU_ARGS[${#QEMU_ARGS[@]} - 1]=$kernel
    rc=0
    timeout 900 qemu-system-x86_64 "${QEMU_ARGS[@]}" "${extra[@]}" "$@" -append "$append" >"$log" 2>&1 || rc=$?
}

# boot MODE KERNEL APPEND LOG: one boot of the built-in benchmark.
boot() {
    local mode=$1 kernel=$2 log=$4 rc
    qemu_in_mode "$@"
    if ! grep -q "guest: benchmark: done" "$log"; then
        say "the $mode run of $kernel did not finish (exit code $rc); see $log"
        return 1
    fi
}

# "NAME OPS NS EXITS" per workload, from a log.
results() {
    sed -n 's/.*bench \([a-z]*\): \([0-9]*\) ops, \([0-9]*\) ns, \([0-9]*\) exits.*/\1 \2 \3 \4/p' "$1"
}

# The linux-getpid program in a root filesystem of its own, when gcc is
# here: target/bench/getpid.cpio.
getpid_cpio=""
if command -v gcc >/dev/null && command -v cpio >/dev/null; then
    mkdir -p "$out/getpid-root"
    if gcc -static -nostdlib -O2 -fno-stack-protector -fno-pie -no-pie \
        -o "$out/getpid-root/getpid" "$UMBRA_ROOT/tests/linux-bench/getpid.c" &&
        (cd "$out/getpid-root" && echo getpid | cpio --quiet -o -H newc >"$out/getpid.cpio"); then
        getpid_cpio="$out/getpid.cpio"
    fi
fi
[ -n "$getpid_cpio" ] || say "no gcc or cpio: the linux-getpid row is left out"

# linux_getpid MODE KERNEL APPEND LOG: one boot of the Linux getpid
# loop; prints "linux-getpid OPS NS EXITS" (EXITS: all of Umbra's, 0
# natively).
linux_getpid() {
    local mode=$1 kernel=$2 log=$4 rc
    qemu_in_mode "$@" -initrd "$getpid_cpio"
    local line exits
    line=$(tr -d '\r' <"$log" | sed -n 's/.*bench linux-getpid: \([0-9]*\) ops, \([0-9]*\) ns.*/\1 \2/p')
    if [ -z "$line" ]; then
        say "the $mode linux-getpid run of $kernel did not finish (exit code $rc); see $log"
        return 1
    fi
    exits=$(tr -d '\r' <"$log" | sed -n 's/^stats: exits \([0-9]*\).*/\1/p' | head -n 1)
    echo "linux-getpid $line ${exits:-0}"
}

declare -A native nested
for mode in $modes; do
    if [ "$mode" = kvm ] && ! kvm_opens; then
        say "skipping kvm: /dev/kvm does not open here"
        continue
    fi
    [ -n "$only" ] && continue
    counts=$tcg_counts
    [ "$mode" = kvm ] && counts=$kvm_counts
    say "$mode: native run"
    boot "$mode" "$guest_elf" "test=bench:$counts" "$out/$mode-native.log" || exit 1
    say "$mode: nested run"
    boot "$mode" "$UMBRA_IMAGE" "-- test=bench:$counts" "$out/$mode-nested.log" || exit 1
    native[$mode]=$(results "$out/$mode-native.log")
    nested[$mode]=$(results "$out/$mode-nested.log")
    if [ -n "$getpid_cpio" ]; then
        calls=$tcg_getpid
        [ "$mode" = kvm ] && calls=$kvm_getpid
        say "$mode: linux-getpid, native and nested"
        native[$mode]+=$'\n'$(linux_getpid "$mode" "$guest_elf" "init=/getpid $calls" "$out/$mode-getpid-native.log") || exit 1
        nested[$mode]+=$'\n'$(linux_getpid "$mode" "$UMBRA_IMAGE" "-- init=/getpid $calls" "$out/$mode-getpid-nested.log") || exit 1
    fi
done

# scaled MODE CPUS SMP GUESTS WORK LOG: Umbra runs GUESTS guests of the
# bench WORK on CPUS of the VM's SMP CPUs; prints "OPS NS", all the
# guests' operations and the longest guest's time.
scaled() {
    local mode=$1 cpus=$2 smp=$3 guests=$4 work=$5 log=$6 accel=tcg rc=0
    [ "$mode" = kvm ] && accel=kvm
    qemu_args "$accel" "$machine" "$smp" 512M
    timeout 900 qemu-system-x86_64 "${QEMU_ARGS[@]}" \
        -append "log=warn cpus=$cpus guests=$guests guest_mem=8M -- test=bench:$work" >"$log" 2>&1 || rc=$?
    if ! grep -q "^umbra: exit status 0" "$log"; then
        say "the $mode scaling run ($guests guests on $cpus CPUs) failed (exit code $rc); see $log"
        return 1
    fi
    sed -n 's/.*bench [a-z]*: \([0-9]*\) ops, \([0-9]*\) ns.*/\1 \2/p' "$log" |
        awk '{ ops += $1; if ($2 > ns) ns = $2 } END { print ops, ns }'
}

declare -a scaling_rows=()
for mode in $modes; do
    if [ "$scaling" = no ] || [ "$only" = boot ] || [ "$mode" = icount ]; then continue; fi
    if [ "$mode" = kvm ] && ! kvm_opens; then continue; fi
    works=$scaling_tcg
    [ "$mode" = kvm ] && works=$scaling_kvm
    for n in 2 4; do
        for work in $works; do
            say "$mode: scaling, $n guests of $work"
            one=$(scaled "$mode" 1 "$n" "$n" "$work" "$out/$mode-scaling-$n-${work%%=*}-1cpu.log") || exit 1
            all=$(scaled "$mode" "$n" "$n" "$n" "$work" "$out/$mode-scaling-$n-${work%%=*}-${n}cpus.log") || exit 1
            scaling_rows+=("$(echo "$mode ${work%%=*} $n $one $all" | awk '{
                t1 = $4 / $5 * 1e9; tn = $6 / $7 * 1e9
                printf "| %s | %s | %d | %.0f | %.0f | %.2f | %.2f |", $1, $2, $3, t1, tn, tn / t1, tn / t1 / $3 }')")
        done
    done
done

# timed MODE KERNEL APPEND LOG: one boot, timed; prints "WHOLE FIRST",
# the process's seconds and those until the guest's first line.
timed() {
    local mode=$1 kernel=$2 append=$3 log=$4 accel=tcg start first=""
    [ "$mode" = kvm ] && accel=kvm
    qemu_args "$accel" "$machine" 2 256M
    QEMU_ARGS[${#QEMU_ARGS[@]} - 1]=$kernel
    start=$EPOCHREALTIME
    while IFS= read -r line; do
        if [ -z "$first" ] && [[ "$line" == "guest: hello from ring"* ]]; then
            first=$EPOCHREALTIME
        fi
        printf '%s\n' "$line"
    done < <(timeout 900 qemu-system-x86_64 "${QEMU_ARGS[@]}" -append "$append" 2>&1) >"$log"
    echo "$start $EPOCHREALTIME ${first:-$EPOCHREALTIME}" | awk '{ printf "%.2f %.2f\n", $2 - $1, $3 - $1 }'
}

# median3 "WHOLE FIRST"...: the median of each column of three runs.
median3() {
    local whole first
    whole=$(printf '%s\n' "$@" | awk '{ print $1 }' | sort -n | sed -n 2p)
    first=$(printf '%s\n' "$@" | awk '{ print $2 }' | sort -n | sed -n 2p)
    echo "$whole | $first"
}

declare -a boot_rows=()
for mode in $modes; do
    if [ "$boots" = no ] || [ "$only" = scaling ] || [ "$mode" = icount ]; then continue; fi
    if [ "$mode" = kvm ] && ! kvm_opens; then continue; fi
    for what in bare exit showcase; do
        case "$what" in
            bare) kernel=$guest_elf append="test=exit:0" ;;
            exit) kernel=$UMBRA_IMAGE append="-- test=exit:0" ;;
            showcase) kernel=$UMBRA_IMAGE append="" ;;
        esac
        say "$mode: boot, $what"
        runs=()
        for run in 1 2 3; do
            runs+=("$(timed "$mode" "$kernel" "$append" "$out/$mode-boot-$what-$run.log")")
        done
        boot_rows+=("| $mode | $what | $(median3 "${runs[@]}") |")
    done
done

# table MODE UNIT: one row per workload.
table() {
    local mode=$1 unit=$2
    echo
    echo "### $mode ($machine, 2 CPUs, 256 MiB; per operation)"
    echo
    echo "| workload | ops | native $unit | nested $unit | nested/native | exits |"
    echo "|---|---:|---:|---:|---:|---:|"
    local name
    for name in compute syscall yield touch fork mixed linux-getpid; do
        join <(echo "${native[$mode]}" | grep "^$name ") <(echo "${nested[$mode]}" | grep "^$name ") || true
    done | awk '{ n = $3 / $2; v = $6 / $5
        printf "| %s | %d | %.0f | %.0f | %.2f | %.2f |\n", $1, $2, n, v, v / n, $7 / $5 }'
}

echo "# Umbra overhead: native vs nested ($(date -u +%Y-%m-%d), QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'))"
for mode in $modes; do
    [ -n "${native[$mode]:-}" ] || continue
    case "$mode" in
        icount) table icount "insns" ;;
        *) table "$mode" "ns" ;;
    esac
done
if [ ${#scaling_rows[@]} -gt 0 ]; then
    echo
    echo "### scaling ($machine, N CPUs, 512 MiB; N guests, 8 MiB each; operations per second)"
    echo
    echo "| mode | workload | N | 1 CPU | N CPUs | speed-up | speed-up / N |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${scaling_rows[@]}"
fi
if [ ${#boot_rows[@]} -gt 0 ]; then
    echo
    echo "### boot ($machine, 2 CPUs, 256 MiB; whole process, median of 3)"
    echo
    echo "| mode | what | seconds | first guest line at |"
    echo "|---|---|---:|---:|"
    printf '%s\n' "${boot_rows[@]}"
    echo
    echo "bare: the guest kernel booted natively with test=exit:0; exit: Umbra with -- test=exit:0; showcase: Umbra's default guest."
fi
echo
echo "Counts: tcg and icount $tcg_counts, linux-getpid $tcg_getpid; kvm $kvm_counts, linux-getpid $kvm_getpid;"
echo "scaling, per guest, tcg $scaling_tcg, kvm $scaling_kvm. linux-getpid's exits are Umbra's whole run's."
echo "Logs in target/bench/."
if [ "$linux" = yes ] && [ -z "$only" ]; then
    echo
    "$(dirname "$0")/bench-linux.sh" --modes "$modes"
fi
