#!/bin/sh
# A 4 MiB file written in pieces, then read whole, in part, and truncated.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
seq 100000 249999 | head -c 1048576 > chunk
for i in 1 2 3; do cat chunk >> big; done
dd if=chunk bs=64k 2>/dev/null >> big
wc -c < big
md5sum < big
tail -c 100 big | md5sum
dd if=big bs=4096 skip=700 count=3 2>/dev/null | md5sum
truncate -s 5000 big; wc -c < big; md5sum < big
truncate -s 10000 big; wc -c < big; tail -c 5000 big | od -An -c | sort -u
cp big big2; cmp big big2 && echo same
