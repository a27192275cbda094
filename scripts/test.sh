#!/usr/bin/env bash
# Everything CI checks: formatting, lints, host tests and boot tests
# (among them tests/linux.rs, which runs busybox three ways).
# Installs what it needs first (the Rust target; QEMU and gdb when run as
# root).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$UMBRA_ROOT"

ensure_rust_target
ensure_qemu
ensure_gdb
ensure_binutils
# cpio and dpkg-deb, for scripts/rootfs.sh: the Linux suite (tests/linux.rs)
# builds its root filesystems with it.
ensure_from_debian cpio cpio
ensure_from_debian dpkg-deb dpkg
for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" ||
        rustup component add "$component" || { say "run: rustup component add $component"; exit 1; }
done

step() { echo; echo "== $*"; }

step "format"
cargo fmt --all -- --check

step "shell scripts (shellcheck)"
ensure_shellcheck
shellcheck -x -P SCRIPTDIR scripts/*.sh .ci/run tests/linux/run-cases

step "lints (host crates)"
cargo clippy --all-targets -- -D warnings
step "lints (firmware and guest, $UMBRA_TARGET)"
cargo clippy --release --target "$UMBRA_TARGET" -p umbra-firmware -p guest -- -D warnings
step "the guest without its probes ($UMBRA_TARGET, --no-default-features)"
no_probes=(--release --target "$UMBRA_TARGET" -p guest --no-default-features --target-dir target/guest-no-probes)
cargo clippy "${no_probes[@]}" -- -D warnings
cargo build "${no_probes[@]}"

step "build the image"
build_image

step "host tests and boot tests"
if kvm_opens; then
    say "/dev/kvm opens: boot tests run under TCG and KVM"
else
    say "/dev/kvm does not open: KVM boot cases will be skipped by name"
fi
cargo test

echo
echo "== all checks passed"
