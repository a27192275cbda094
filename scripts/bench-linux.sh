#!/usr/bin/env bash
# The same shell workloads on Linux, on the guest kernel and under Umbra.
#
#   scripts/bench-linux.sh [--modes "tcg icount kvm"] [--only NAMES]
#                          [--machine microvm|pc|q35] [--kvm-timeout SECONDS]
#
# What a user would pick instead of Umbra is Linux in a VM, so this
# boots three kernels with one busybox root filesystem, one after the
# other, in the same QEMU configuration (microvm, one CPU, 512 MiB):
#
#   linux   Debian's own kernel (the package linux-image-amd64 depends
#           on, fetched once with `apt-get download` into
#           target/linux-bench-cache/, never committed), `rdinit=`;
#           under TCG it is told the TSC's rate (`tsc_early_khz=`: the
#           host's, or 1 GHz under icount) since microvm has nothing
#           it can calibrate the TSC against, and without it it hangs;
#   native  the guest kernel booted directly as a PVH kernel, `init=`;
#   umbra   the Umbra image running that guest kernel, `-- init=`
#           (with guest_mem=256M, as the default 64 MiB is too small
#           for the workloads' files).
#
# The workloads (shell scripts in the archive, under /bench/): procs (a
# shell loop starting 1,000 processes), gzip (4 MiB of `seq` text), sort
# (1 MiB of random numbers), find (over 2,000 files in 20 folders),
# sha256 (sha256sum of 16 MiB) and pipeline (cat | tr | grep | wc over
# 4 MiB). Each script first makes its input, untimed, then times only
# the workload with busybox's `time -p`, which reads the guest's
# monotonic clock (in hundredths of a second). All six run in one boot
# per kernel. Under KVM each of the guest kernel's runs in a boot of its
# own, and Linux runs all six in one, each boot with a timeout
# (--kvm-timeout, default 60 s): where KVM emulates a guest kernel's
# every instruction (this machine's does) a boot may not get far, and a
# cell that timed out says so.
#
# Modes: tcg (seconds), icount (TCG with -icount shift=0: one virtual
# nanosecond per instruction, so its "seconds" are billions of
# instructions) and kvm (when /dev/kvm opens). The table gives per
# workload the three times and the ratios umbra/native and umbra/linux.
# These are measurements, not tests. Serial logs go to target/bench/linux/.
set -euo pipefail
source "$(dirname "$0")/common.sh"

modes="tcg icount kvm" workloads="procs gzip sort find sha256 pipeline" kvm_timeout=60 machine=microvm
# A whole TCG boot of all six on one kernel takes well under a minute;
# this catches hangs only.
tcg_timeout=600
usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --modes) modes=${2:?}; shift 2 ;;
        --only) workloads=${2:?}; shift 2 ;;
        --kvm-timeout) kvm_timeout=${2:?}; shift 2 ;;
        --machine) machine=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        *) say "unknown option '$1'"; usage ;;
    esac
done

ensure_qemu
ensure_from_debian cpio cpio
ensure_from_debian dpkg-deb dpkg
build_image >&2
(cd "$UMBRA_ROOT" && cargo build --release --target "$UMBRA_TARGET" -p guest) >&2 || exit 1
guest_elf="$UMBRA_ROOT/target/$UMBRA_TARGET/release/guest"
out="$UMBRA_ROOT/target/bench/linux"
cache="$UMBRA_ROOT/target/linux-bench-cache"
mkdir -p "$out" "$cache/debs"

# Debian's kernel: linux-image-amd64 is a meta package; the real one is
# the linux-image-VERSION-amd64 it depends on. Only its vmlinuz is kept.
debian_kernel() {
    local package deb
    package=$(apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)
    [ -n "$package" ] || { say "apt-cache does not know linux-image-amd64 (is apt configured?)"; exit 1; }
    deb=$(debian_deb "$package" "$cache/debs") || exit 1
    if ! find "$cache/boot" -name "vmlinuz-${package#linux-image-}" 2>/dev/null | grep -q .; then
        (cd "$cache" && dpkg-deb --fsys-tarfile "$deb" | tar -x --wildcards './boot/vmlinuz-*')
    fi
    echo "$cache/boot/vmlinuz-${package#linux-image-}"
}
vmlinuz=$(debian_kernel)
[ -f "$vmlinuz" ] || { say "no $vmlinuz in the package"; exit 1; }

# The archive: scripts/rootfs.sh's, unpacked, with /bench/ added.
"$UMBRA_ROOT/scripts/rootfs.sh" -o "$out/rootfs.cpio" >&2
tree="$out/tree.$$"
trap 'rm -rf "$tree"' EXIT
rm -rf "$tree"
mkdir -p "$tree"
(cd "$tree" && cpio --quiet -id < "$out/rootfs.cpio")
mkdir -p "$tree/bench"

# workload NAME SETUP TIMED: /bench/NAME.sh makes its input with SETUP,
# runs TIMED under `time -p` and prints "bench-linux: NAME SECONDS".
workload() {
    cat > "$tree/bench/$1.sh" <<EOF
#!/bin/sh
# Workload $1: its input first, untimed; then only the workload, timed.
set -e
rm -rf /tmp/w && mkdir -p /tmp/w && cd /tmp/w
$2
time -p -o /tmp/w/time sh -c '$3'
echo "bench-linux: $1 \$(sed -n 's/^real //p' /tmp/w/time)"
cd / && rm -rf /tmp/w
EOF
}
# The workloads are the guest's shell code, expanded there, not here.
# shellcheck disable=SC2016
workload procs ":" 'i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i + 1)); done'
workload gzip "seq 1 1000000 | head -c 4194304 > in" 'gzip -c in > in.gz'
workload sort "awk 'BEGIN { srand(1); for (i = 0; i < 110000; i++) print int(rand() * 1000000000) }' | head -c 1048576 > in" \
    'sort in > sorted'
# shellcheck disable=SC2016
workload find 'for d in $(seq 1 20); do mkdir d$d; for f in $(seq 1 100); do : > d$d/f$f.txt; done; done' \
    'find /tmp/w -name "*.txt" | wc -l > count'
workload sha256 'seq 1 1000000 | head -c 4194304 > part; cat part part part part > in; rm part' 'sha256sum in > sum'
workload pipeline "seq 1 1000000 | head -c 4194304 > in" 'cat in | tr 0-9 a-j | grep -v bb | wc -l > count'
# procs at any size, for a per-process profile:
#   scripts/profile.sh --initrd target/bench/linux/bench.cpio "init=/bin/sh /bench/true-loop.sh {N}" 20 40
cat > "$tree/bench/true-loop.sh" <<'EOF'
#!/bin/sh
# /bin/true, $1 times.
i=0
while [ "$i" -lt "$1" ]; do /bin/true; i=$((i + 1)); done
EOF
cat > "$tree/bench/run.sh" <<'EOF'
#!/bin/sh
# Run the workloads named in the arguments, one after the other.
for name in "$@"; do
    sh "/bench/$name.sh" || echo "bench-linux: $name failed"
done
echo "bench-linux: done"
EOF
# Linux starts it as rdinit=, with the names after `--`, and has no
# init to return to: it powers off.
cat > "$tree/bench/linux-init" <<'EOF'
#!/bin/sh
sh /bench/run.sh "$@"
poweroff -f
EOF
chmod 755 "$tree"/bench/*
find "$tree" -exec touch -h -d @0 {} +
(cd "$tree" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible > "$out/bench.cpio")
rm -rf "$tree"

# tsc_rate MODE: Debian's kernel's word for the TSC's rate. Under TCG
# the guest reads the host's TSC, under icount one tick a nanosecond;
# KVM gives it a clock of its own. The clock watchdog's reference on
# microvm is the jiffy, which would call the TSC unstable.
tsc_rate() {
    case "$1" in
        tcg) awk '/^cpu MHz/ { printf "tsc_early_khz=%d tsc=reliable", $4 * 1000; exit }' /proc/cpuinfo ;;
        icount) echo "tsc_early_khz=1000000 tsc=reliable" ;;
    esac
}

# boot MODE KERNEL NAMES LOG TIMEOUT: one boot of KERNEL (linux, native
# or umbra) running the workloads NAMES; its serial log is kept.
boot() {
    local mode=$1 kernel=$2 names=$3 log=$4 limit=$5 accel=tcg extra=() image append rc=0
    case "$mode" in
        icount) extra=(-icount shift=0) ;;
        kvm) accel=kvm ;;
    esac
    case "$kernel" in
        linux) image=$vmlinuz append="console=ttyS0 quiet $(tsc_rate "$mode") rdinit=/bench/linux-init -- $names" ;;
        native) image=$guest_elf append="init=/bin/sh /bench/run.sh $names" ;;
        umbra) image=$UMBRA_IMAGE append="guest_mem=256M -- init=/bin/sh /bench/run.sh $names" ;;
    esac
    qemu_args "$accel" "$machine" 1 512M
    QEMU_ARGS[${#QEMU_ARGS[@]} - 1]=$image
    timeout "$limit" qemu-system-x86_64 "${QEMU_ARGS[@]}" "${extra[@]}" \
        -initrd "$out/bench.cpio" -append "$append" >"$log" 2>&1 || rc=$?
    [ "$rc" != 124 ] || echo "bench-linux: timeout after $limit s" >>"$log"
}

# result LOG NAME: the workload's seconds, or why there are none.
result() {
    local seconds
    seconds=$(sed -n "s/^bench-linux: $2 \([0-9.]*\)\r\{0,1\}$/\1/p" "$1" | tail -n 1)
    if [ -n "$seconds" ]; then echo "$seconds"
    elif grep -q "^bench-linux: timeout after" "$1"; then
        echo "skipped ($(sed -n 's/^bench-linux: \(timeout after [0-9]* s\).*/\1/p' "$1" | tail -n 1))"
    elif grep -q "^bench-linux: $2 failed" "$1"; then echo "failed"
    else echo "missing"
    fi
}

# ratio A B: A / B when both are numbers, else a dash.
ratio() {
    if [[ "$1" =~ ^[0-9.]+$ && "$2" =~ ^[0-9.]+$ ]] && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
    else
        echo "-"
    fi
}

# table MODE: the mode's table, printed as soon as its runs are done.
table() {
    local mode=$1 unit=seconds name l n u
    [ "$mode" = icount ] && unit="10^9 insns"
    echo
    echo "### $mode ($machine, 1 CPU, 512 MiB; $unit per workload)"
    echo
    echo "| workload | linux | native | umbra | umbra/native | umbra/linux |"
    echo "|---|---:|---:|---:|---:|---:|"
    for name in $workloads; do
        l=${seconds[$mode.linux.$name]} n=${seconds[$mode.native.$name]} u=${seconds[$mode.umbra.$name]}
        echo "| $name | $l | $n | $u | $(ratio "$u" "$n") | $(ratio "$u" "$l") |"
    done
}

echo "# Linux, the guest kernel and Umbra ($(date -u +%Y-%m-%d), QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), $(basename "$vmlinuz"))"
echo
echo "Host: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)."
declare -A seconds
for mode in $modes; do
    if [ "$mode" = kvm ] && ! kvm_opens; then
        say "skipping kvm: /dev/kvm does not open here"
        continue
    fi
    for kernel in linux native umbra; do
        if [ "$mode" = kvm ] && [ "$kernel" != linux ]; then
            for name in $workloads; do
                say "$mode: $kernel, $name"
                boot "$mode" "$kernel" "$name" "$out/$mode-$kernel-$name.log" "$kvm_timeout"
                seconds[$mode.$kernel.$name]=$(result "$out/$mode-$kernel-$name.log" "$name")
            done
        else
            say "$mode: $kernel, all workloads"
            limit=$tcg_timeout
            [ "$mode" = kvm ] && limit=$kvm_timeout
            boot "$mode" "$kernel" "$workloads" "$out/$mode-$kernel.log" "$limit"
            for name in $workloads; do
                seconds[$mode.$kernel.$name]=$(result "$out/$mode-$kernel.log" "$name")
            done
        fi
    done
    table "$mode"
done
echo
echo "Times from inside each guest (busybox time -p: its monotonic clock, 10 ms steps); logs in target/bench/linux/."
