# shellcheck shell=bash
# Shared by the scripts in this folder: where things are, what is
# installed, and whether KVM opens. Source it; do not run it.
# The variables it sets are read by the scripts that source it:
# shellcheck disable=SC2034

UMBRA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UMBRA_TARGET=x86_64-unknown-none
UMBRA_IMAGE="$UMBRA_ROOT/target/$UMBRA_TARGET/release/umbra"
# The default guest kernel with its symbols and debug info, for gdb: the
# image embeds it without them (firmware/build.rs writes both).
UMBRA_GUEST_SYMBOLS="$UMBRA_ROOT/target/$UMBRA_TARGET/release/guest-symbols"

say() { echo "umbra-scripts: $*" >&2; }

# The freestanding target for the firmware (rustup installs it).
ensure_rust_target() {
    if rustup target list --installed 2>/dev/null | grep -qx "$UMBRA_TARGET"; then
        return 0
    fi
    say "installing the Rust target $UMBRA_TARGET"
    rustup target add "$UMBRA_TARGET" || {
        say "could not install it; run: rustup target add $UMBRA_TARGET"
        exit 1
    }
}

# debian_deb PACKAGE DIR: the path of PACKAGE's .deb in DIR (a cache),
# downloaded there with `apt-get download` unless one is there already.
debian_deb() {
    local package=$1 dir=$2 deb
    deb=$(find "$dir" -maxdepth 1 -name "${package}_*.deb" | sort | tail -n 1)
    if [ -z "$deb" ]; then
        say "downloading Debian's $package"
        # apt-get download writes into the current directory. The cache
        # is ours (possibly root's), so apt's sandbox user may not write
        # there; it falls back to downloading as us and says so.
        (cd "$dir" && apt-get download -q "$package" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) || true
        deb=$(find "$dir" -maxdepth 1 -name "${package}_*.deb" | sort | tail -n 1)
        [ -n "$deb" ] || { say "could not download $package (is apt configured?)"; exit 1; }
    fi
    echo "$deb"
}

# Debian's PACKAGE, for the command COMMAND, when we are root and it is
# missing; otherwise say how to install it and stop.
ensure_from_debian() {
    local command=$1 package=$2
    command -v "$command" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian's $package"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "$package" >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null && apt-get install -y -q "$package" >/dev/null; } || true
    fi
    command -v "$command" >/dev/null || {
        say "$command is missing; install it with: sudo apt-get install $package"
        exit 1
    }
}

ensure_qemu() { ensure_from_debian qemu-system-x86_64 qemu-system-x86; }

# gdb, for scripts/debug.sh and the gdb test (tests/gdb.rs).
ensure_gdb() { ensure_from_debian gdb gdb; }

# ShellCheck, which scripts/test.sh runs over every script.
ensure_shellcheck() { ensure_from_debian shellcheck shellcheck; }

# objdump and strip, for the boot tests that read the image itself.
ensure_binutils() { ensure_from_debian objdump binutils; }

# Does /dev/kvm open for reading and writing?
kvm_opens() {
    [ -e /dev/kvm ] && (exec 3<>/dev/kvm) 2>/dev/null
}

# Wait until something listens on TCP port $1 of this machine, for at most
# $2 seconds, and while process $3 lives. It reads the kernel's socket table rather than connecting,
# so the listener (QEMU's gdb stub) never sees a stray client.
wait_for_listener() {
    local port_hex tries
    port_hex=$(printf '%04X' "$1")
    for ((tries = 0; tries < $2 * 10; tries++)); do
        # Column 2 is local address:port in hex, column 4 the state (0A = LISTEN).
        if awk -v port=":$port_hex" '$2 ~ port"$" && $4 == "0A" { found = 1 } END { exit !found }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
            return 0
        fi
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

build_image() {
    ensure_rust_target
    (cd "$UMBRA_ROOT" && cargo build --release --target "$UMBRA_TARGET" -p umbra-firmware) || exit 1
}

# QEMU's arguments for one boot of the image.
#   qemu_args ACCEL MACHINE SMP MEM [SERIAL]
# SERIAL is QEMU's -serial destination, stdio unless given.
# The CPU model: this machine's KVM rejects -cpu host (MSR 0x10a), so
# under KVM the default model is used; TCG uses the default too.
qemu_args() {
    local accel=$1 machine=$2 smp=$3 mem=$4 serial=${5:-stdio}
    # The commas belong to QEMU's option syntax, not to the array.
    # shellcheck disable=SC2054
    QEMU_ARGS=(-machine "$machine" -accel "$accel" -smp "$smp" -m "$mem"
        -display none -monitor none -serial "$serial" -nic none -no-reboot
        -device isa-debug-exit,iobase=0xf4,iosize=0x04
        -kernel "$UMBRA_IMAGE")
}

# QEMU's exit code to Umbra's status: isa-debug-exit gives (N << 1) | 1,
# an ACPI power-off gives 0; anything else is QEMU's own failure.
status_from_qemu() {
    local rc=$1
    if [ "$rc" = 0 ]; then echo 0
    elif [ $((rc & 1)) = 1 ]; then echo $((rc >> 1))
    else echo "$rc"
    fi
}
