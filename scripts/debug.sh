#!/usr/bin/env bash
# Boot Umbra halted under QEMU's gdb stub and attach gdb to the image and
# to the default guest kernel.
#
#   scripts/debug.sh [--accel tcg|kvm] [--machine pc|q35|microvm] [--mem M]
#                    [--break SYMBOL]... [--guest-break SYMBOL]...
#                    [--append "..."] [--port N] [--serial FILE]
#                    [--batch FILE [--timeout SECONDS]]
#
# gdb stops at the first breakpoint reached: --break in the firmware,
# --guest-break in the guest kernel (umbra_main when neither is given).
# Both are hardware breakpoints (hbreak). Under KVM every breakpoint gdb
# sets, its own too (finish, next, until), is made a hardware one, since
# a software breakpoint crashes this kind of nested KVM; only four fit,
# and a guest breakpoint takes two (one per address the kernel runs at).
# --batch runs gdb's commands from FILE instead of a prompt, then waits
# for the boot to end (at most --timeout seconds, 300 by default) and
# exits with Umbra's exit status.
set -euo pipefail
source "$(dirname "$0")/common.sh"

accel=tcg machine=microvm mem=256M append="" port=1234
serial_log="$UMBRA_ROOT/target/debug-serial.log" batch="" limit=300
breaks=() guest_breaks=()
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --accel) accel=${2:?}; shift 2 ;;
        --machine) machine=${2:?}; shift 2 ;;
        --mem) mem=${2:?}; shift 2 ;;
        --break) breaks+=("${2:?}"); shift 2 ;;
        --guest-break) guest_breaks+=("${2:?}"); shift 2 ;;
        --append) append=${2-}; shift 2 ;;
        --port) port=${2:?}; shift 2 ;;
        --serial) serial_log=${2:?}; shift 2 ;;
        --batch) batch=${2:?}; shift 2 ;;
        --timeout) limit=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        *) say "unknown option '$1'"; usage ;;
    esac
done
case "$accel" in
    tcg) ;;
    kvm) kvm_opens || { say "/dev/kvm does not open here; use --accel tcg"; exit 2; } ;;
    *) say "--accel must be tcg or kvm"; exit 2 ;;
esac
if [ ${#breaks[@]} = 0 ] && [ ${#guest_breaks[@]} = 0 ]; then breaks=(umbra_main); fi
if [ -n "$batch" ] && [ ! -r "$batch" ]; then say "cannot read the gdb commands '$batch'"; exit 2; fi
ensure_gdb
ensure_qemu
build_image >&2

# The guest kernel is linked at its guest-physical addresses, where Umbra
# loads it and where it starts, in linear mode; once its own page tables
# are in, it runs at the same code plus KERNEL_BASE (guest/src/kernel/mem.rs).
# So its symbols are loaded twice, and a guest breakpoint has two
# locations: the low one for early boot, the high one for the rest.
guest_kernel_base=0xffff800000000000
gdb_args=(-q -ex "set confirm off")
if [ "$accel" = kvm ]; then
    # gdb uses a hardware breakpoint wherever memory is read-only, so all
    # of memory is declared read-only to it (which also means gdb cannot
    # write memory: "delete mem" undoes it).
    gdb_args+=(-ex "mem 0 0 ro" -ex "set breakpoint auto-hw on"
        -ex "set remote hardware-breakpoint-limit 4")
fi
gdb_args+=(-ex "add-symbol-file $UMBRA_GUEST_SYMBOLS"
    -ex "add-symbol-file $UMBRA_GUEST_SYMBOLS -o $guest_kernel_base")
[ -z "$batch" ] && gdb_args+=(-ex "set confirm on")
gdb_args+=(-ex "target remote 127.0.0.1:$port")
for symbol in "${breaks[@]}" "${guest_breaks[@]}"; do
    gdb_args+=(-ex "hbreak $symbol")
done
gdb_args+=(-ex "continue")

# The console goes to a file so it does not fight gdb for the terminal.
mkdir -p "$(dirname "$serial_log")"
qemu_args "$accel" "$machine" 2 "$mem" "file:$serial_log"
say "serial console: $serial_log"
[ -n "$append" ] && QEMU_ARGS+=(-append "$append")
# The stub listens on this machine only: it can read and write all of
# the VM's memory.
QEMU_ARGS+=(-gdb "tcp:127.0.0.1:$port" -S)

if [ -z "$batch" ]; then
    qemu-system-x86_64 "${QEMU_ARGS[@]}" &
    qemu_pid=$!
    trap 'kill $qemu_pid 2>/dev/null || true' EXIT
    wait_for_listener "$port" 60 "$qemu_pid" || { say "QEMU's gdb stub did not listen on port $port"; exit 125; }
    gdb "${gdb_args[@]}" "$UMBRA_IMAGE"
    exit 0
fi

# Batch: nothing may outlive the timeout, not even if this script is killed.
timeout "$limit" qemu-system-x86_64 "${QEMU_ARGS[@]}" &
qemu_pid=$!
trap 'kill $qemu_pid 2>/dev/null || true' EXIT
# gdb gives up at once if the stub is not listening yet, and on a busy
# machine QEMU can take a while to get there.
if ! wait_for_listener "$port" 60 "$qemu_pid"; then
    say "QEMU's gdb stub did not listen on port $port within 60 seconds"
    wait "$qemu_pid" || true
    exit 125
fi
timeout "$limit" gdb -nx -batch "${gdb_args[@]}" -x "$batch" "$UMBRA_IMAGE" </dev/null || true
set +e
wait "$qemu_pid"
rc=$?
set -e
[ "$rc" = 124 ] && { say "QEMU still ran after $limit seconds; stopped it"; exit 124; }
exit "$(status_from_qemu "$rc")"
