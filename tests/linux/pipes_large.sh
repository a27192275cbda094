#!/bin/sh
# Large amounts of data through pipes: 4 MiB through cat, and a pipe reader that quits early.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
dd if=/dev/zero bs=64k count=64 2>/dev/null | cat | cat | wc -c
seq 1 100000 | md5sum
seq 1 100000 | cat | md5sum
seq 1 1000000 | head -n 2
yes | head -n 3
yes abc | head -c 4000 | wc -c
seq 1 50000 | tail -n 1
