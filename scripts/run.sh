#!/usr/bin/env bash
# Build Umbra and boot it in QEMU; exit with Umbra's exit status.
#
#   scripts/run.sh [--accel tcg|kvm] [--machine pc|q35|microvm]
#                  [--smp N] [--mem M] [--append "..."] [--guest FILE]
#                  [--rootfs FILE] [--shell]
#
# Without --accel it uses KVM when /dev/kvm opens, TCG otherwise; the
# default machine is microvm, the fastest to boot. --guest passes a guest
# kernel ELF as PVH module 0 (QEMU's -initrd) instead of the built-in one;
# --rootfs passes a cpio archive (newc) the same way, a root filesystem
# for the built-in guest, whose Linux layer runs its programs. QEMU takes
# one -initrd, so the two do not go together. Words after "--" in
# --append are the guest's command line.
#
# --shell: an interactive busybox shell in the guest, on this terminal:
# the root filesystem (--rootfs, default target/rootfs.cpio, built with
# scripts/rootfs.sh if missing) with init=/bin/sh, TERM from here (vt100
# if unset), HOME=/root and PS1='\w \$ '. --append then gives Umbra's
# own words. Ctrl-A x quits QEMU (Ctrl-A Ctrl-A sends a Ctrl-A); exit
# or ^D ends the shell, and the script exits with the shell's status.
set -euo pipefail
source "$(dirname "$0")/common.sh"

accel="" machine=microvm smp=2 mem=256M append="" initrd="" rootfs="" shell=0
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --accel) accel=${2:?}; shift 2 ;;
        --machine) machine=${2:?}; shift 2 ;;
        --smp) smp=${2:?}; shift 2 ;;
        --mem) mem=${2:?}; shift 2 ;;
        --append) append=${2-}; shift 2 ;;
        --guest|--initrd) initrd=${2:?}; shift 2 ;;
        --rootfs) rootfs=${2:?}; shift 2 ;;
        --shell) shell=1; shift ;;
        -h|--help) usage ;;
        *) say "unknown option '$1'"; usage ;;
    esac
done
case "$machine" in pc|q35|microvm) ;; *) say "--machine must be pc, q35 or microvm"; exit 2 ;; esac
if [ -z "$accel" ]; then
    if kvm_opens; then accel=kvm; else accel=tcg; fi
fi
case "$accel" in
    tcg) ;;
    kvm) kvm_opens || { say "/dev/kvm does not open here; use --accel tcg"; exit 2; } ;;
    *) say "--accel must be tcg or kvm"; exit 2 ;;
esac

ensure_qemu
build_image >&2
serial=stdio
if [ "$shell" = 1 ]; then
    [ -z "$initrd" ] || { say "--shell runs the built-in guest kernel; drop --guest"; exit 2; }
    case "$append" in *--*) say "with --shell, --append takes Umbra's words only (no '--')"; exit 2 ;; esac
    if [ -z "$rootfs" ]; then
        rootfs="$UMBRA_ROOT/target/rootfs.cpio"
        [ -r "$rootfs" ] || bash "$UMBRA_ROOT/scripts/rootfs.sh" -o "$rootfs" >&2
    fi
    # The guest's programs write escape sequences for this terminal: tell
    # them which it is, if its name is a plain one.
    term=${TERM:-vt100}
    case "$term" in "" | dumb | *[!A-Za-z0-9._+-]*) term=vt100 ;; esac
    ps1='\w \$ '
    append="${append:+$append }-- TERM=$term HOME=/root PS1='$ps1' init=/bin/sh"
    # QEMU's multiplexer on stdio: Ctrl-A x quits, and Ctrl-C goes to the
    # guest instead of ending QEMU.
    serial=mon:stdio
fi
if [ -n "$initrd" ] && [ ! -r "$initrd" ]; then say "cannot read the guest '$initrd'"; exit 2; fi
if [ -n "$rootfs" ] && [ ! -r "$rootfs" ]; then say "cannot read the root filesystem '$rootfs'"; exit 2; fi
if [ -n "$initrd" ] && [ -n "$rootfs" ]; then say "--guest and --rootfs both need QEMU's one -initrd; pass one"; exit 2; fi
qemu_args "$accel" "$machine" "$smp" "$mem" "$serial"
[ -n "$append" ] && QEMU_ARGS+=(-append "$append")
[ -n "$initrd" ] && QEMU_ARGS+=(-initrd "$initrd")
[ -n "$rootfs" ] && QEMU_ARGS+=(-initrd "$rootfs")
say "booting on $machine under $accel (smp $smp, $mem)"
set +e
qemu-system-x86_64 "${QEMU_ARGS[@]}"
rc=$?
set -e
exit "$(status_from_qemu "$rc")"
