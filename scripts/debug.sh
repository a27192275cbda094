#!/usr/bin/env bash
# Boot Umbra halted under QEMU's gdb stub and attach gdb to the image.
#
#   scripts/debug.sh [--accel tcg|kvm] [--machine pc|q35|microvm]
#                    [--break SYMBOL] [--append "..."] [--port N]
#
# gdb stops at SYMBOL (default umbra_main). Under KVM every breakpoint is
# a hardware one (hbreak): a software breakpoint crashes this kind of
# nested KVM. The 32-bit entry stub is best read offline:
#   objdump -d -m i386 target/x86_64-unknown-none/release/umbra
set -euo pipefail
source "$(dirname "$0")/common.sh"

accel=tcg machine=microvm symbol=umbra_main append="" port=1234
while [ $# -gt 0 ]; do
    case "$1" in
        --accel) accel=${2:?}; shift 2 ;;
        --machine) machine=${2:?}; shift 2 ;;
        --break) symbol=${2:?}; shift 2 ;;
        --append) append=${2-}; shift 2 ;;
        --port) port=${2:?}; shift 2 ;;
        *) say "unknown option '$1'"; sed -n '2,6p' "$0"; exit 2 ;;
    esac
done
command -v gdb >/dev/null || { say "gdb is missing; install it with: sudo apt-get install gdb"; exit 1; }
ensure_qemu
build_image >&2
# The console goes to a file so it does not fight gdb for the terminal.
serial_log="$UMBRA_ROOT/target/debug-serial.log"
qemu_args "$accel" "$machine" 2 256M "file:$serial_log"
say "serial console: $serial_log"
[ -n "$append" ] && QEMU_ARGS+=(-append "$append")
qemu-system-x86_64 "${QEMU_ARGS[@]}" -gdb "tcp::$port" -S &
qemu_pid=$!
trap 'kill $qemu_pid 2>/dev/null || true' EXIT
# Hardware breakpoints work everywhere; under KVM they are the only kind.
gdb -q "$UMBRA_IMAGE" \
    -ex "target remote :$port" \
    -ex "hbreak $symbol" \
    -ex "continue"
