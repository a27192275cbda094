#!/usr/bin/env bash
# Build a root filesystem for the guest kernel's Linux layer: a cpio
# archive (newc) holding Debian's static busybox, a link for each of its
# applets, a tiny /init, and the shell-script cases of tests/linux/.
#
#   scripts/rootfs.sh [--bash] [--c-programs] [-o OUT]
#
# OUT defaults to target/rootfs.cpio. --bash adds Debian's bash-static as
# /bin/bash. --c-programs adds the C test programs of tests/linux-c/,
# built with musl-gcc -static: the Linux-ABI fuzzer as /bin/linux-fuzz
# and the XMM isolation check as /bin/xmm-isolation.
#
# The Debian packages are fetched once with `apt-get download` into
# target/rootfs-cache/ and reused from there; they are never committed.
# The archive is reproducible: sorted names, every owner root, every time
# the epoch, and inode numbers renumbered, so the same inputs give the
# same bytes.
set -euo pipefail
source "$(dirname "$0")/common.sh"

out="" with_bash=0 with_c=0
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --bash) with_bash=1; shift ;;
        --c-programs|--fuzz) with_c=1; shift ;;
        -o) out=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        *) say "unknown option '$1'"; usage ;;
    esac
done
[ -n "$out" ] || out="$UMBRA_ROOT/target/rootfs.cpio"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

ensure_from_debian cpio cpio
ensure_from_debian dpkg-deb dpkg

cache="$UMBRA_ROOT/target/rootfs-cache"
mkdir -p "$cache/debs"

# unpack_package PACKAGE: fetch PACKAGE's .deb into the cache unless it
# is there, unpack it under $cache/PACKAGE, and print that directory.
unpack_package() {
    local package=$1 deb
    deb=$(debian_deb "$package" "$cache/debs") || exit 1
    if [ ! -d "$cache/$package" ] || [ "$deb" -nt "$cache/$package" ]; then
        rm -rf "${cache:?}/${package:?}"
        dpkg-deb -x "$deb" "$cache/$package"
        touch "$cache/$package"
    fi
    echo "$cache/$package"
}

busybox_dir=$(unpack_package busybox-static)
busybox="$busybox_dir/bin/busybox"
[ -x "$busybox" ] || { say "no bin/busybox in busybox-static"; exit 1; }
if [ "$with_bash" = 1 ]; then
    bash_dir=$(unpack_package bash-static)
    [ -x "$bash_dir/bin/bash-static" ] || { say "no bin/bash-static in bash-static"; exit 1; }
fi

umask 022
tree="$cache/tree.$$"
trap 'rm -rf "$tree"' EXIT
rm -rf "$tree"
mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,tests,tmp,dev,root,etc}
chmod 1777 "$tree/tmp"
cp "$busybox" "$tree/bin/busybox"
chmod 755 "$tree/bin/busybox"

# Every applet gets a link. The filesystem must handle both kinds, so
# those in /bin are hard links to /bin/busybox and the others symbolic
# links to it.
while read -r applet; do
    case "$applet" in
        bin/busybox | "") continue ;;
        bin/*) ln -f "$tree/bin/busybox" "$tree/$applet" ;;
        *) mkdir -p "$tree/$(dirname "$applet")"; ln -sfn /bin/busybox "$tree/$applet" ;;
    esac
done < <("$busybox" --list-full | sort)
[ -e "$tree/bin/sh" ] || ln -f "$tree/bin/busybox" "$tree/bin/sh"

if [ "$with_bash" = 1 ]; then
    cp "$bash_dir/bin/bash-static" "$tree/bin/bash"
    chmod 755 "$tree/bin/bash"
fi

if [ "$with_c" = 1 ]; then
    ensure_from_debian musl-gcc musl-tools
    for program in linux-fuzz:fuzz.c xmm-isolation:xmm.c; do
        musl-gcc -static -O2 -Wall -Wextra -o "$tree/bin/${program%%:*}" "$UMBRA_ROOT/tests/linux-c/${program#*:}"
        chmod 755 "$tree/bin/${program%%:*}"
    done
fi

cat > "$tree/init" <<'EOF'
#!/bin/sh
echo "Umbra rootfs: busybox $(busybox | head -n 1 | cut -d' ' -f2)"
exec sh
EOF
chmod 755 "$tree/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$tree/etc/passwd"
printf 'root:x:0:\n' > "$tree/etc/group"
chmod 644 "$tree/etc/passwd" "$tree/etc/group"

for case_script in "$UMBRA_ROOT"/tests/linux/*.sh "$UMBRA_ROOT"/tests/linux/run-cases; do
    cp "$case_script" "$tree/tests/"
done
chmod 755 "$tree"/tests/*

# Fixed times (symbolic links too, with -h), sorted names, owner root,
# renumbered inodes: the same inputs make the same archive.
find "$tree" -exec touch -h -d @0 {} +
mkdir -p "$(dirname "$out")"
(cd "$tree" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible > "$out.tmp")
mv "$out.tmp" "$out"
echo "$out $(stat -c %s "$out") bytes"
