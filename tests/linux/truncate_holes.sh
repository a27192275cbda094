#!/bin/sh
# Sparse files: seek past the end, holes read as zeros, truncate up and down.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
dd if=/dev/zero of=sparse bs=1 count=1 seek=100000 2>/dev/null
wc -c < sparse
od -An -c sparse | sort -u
printf 'head' > h; truncate -s 8 h; od -c h
truncate -s 2 h; cat h; echo
printf 'XY' | dd of=h bs=1 seek=6 conv=notrunc 2>/dev/null; od -c h
: > h; wc -c < h
