#!/usr/bin/env bash
# Build Umbra and boot it in QEMU; exit with Umbra's exit status.
#
#   scripts/run.sh [--accel tcg|kvm] [--machine pc|q35|microvm]
#                  [--smp N] [--mem M] [--append "..."] [--guest FILE]
#                  [--rootfs FILE]
#
# Without --accel it uses KVM when /dev/kvm opens, TCG otherwise; the
# default machine is microvm, the fastest to boot. --guest passes a guest
# kernel ELF as PVH module 0 (QEMU's -initrd) instead of the built-in one;
# --rootfs passes a cpio archive (newc) the same way, a root filesystem
# for the built-in guest, whose Linux layer runs its programs. QEMU takes
# one -initrd, so the two do not go together. Words after "--" in
# --append are the guest's command line.
set -euo pipefail
source "$(dirname "$0")/common.sh"

accel="" machine=microvm smp=2 mem=256M append="" initrd="" rootfs=""
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --accel) accel=${2:?}; shift 2 ;;
        --machine) machine=${2:?}; shift 2 ;;
        --smp) smp=${2:?}; shift 2 ;;
        --mem) mem=${2:?}; shift 2 ;;
        --append) append=${2-}; shift 2 ;;
        --guest|--initrd) initrd=${2:?}; shift 2 ;;
        --rootfs) rootfs=${2:?}; shift 2 ;;
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
if [ -n "$initrd" ] && [ ! -r "$initrd" ]; then say "cannot read the guest '$initrd'"; exit 2; fi
if [ -n "$rootfs" ] && [ ! -r "$rootfs" ]; then say "cannot read the root filesystem '$rootfs'"; exit 2; fi
if [ -n "$initrd" ] && [ -n "$rootfs" ]; then say "--guest and --rootfs both need QEMU's one -initrd; pass one"; exit 2; fi
qemu_args "$accel" "$machine" "$smp" "$mem"
[ -n "$append" ] && QEMU_ARGS+=(-append "$append")
[ -n "$initrd" ] && QEMU_ARGS+=(-initrd "$initrd")
[ -n "$rootfs" ] && QEMU_ARGS+=(-initrd "$rootfs")
say "booting on $machine under $accel (smp $smp, $mem)"
set +e
qemu-system-x86_64 "${QEMU_ARGS[@]}"
rc=$?
set -e
exit "$(status_from_qemu "$rc")"
