#!/bin/sh
# gzip and gunzip round trips on a 1 MiB generated file, checksummed before and after.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
seq 100000 249999 | head -c 1048576 > big
wc -c < big
md5sum < big
gzip -c big > big.gz
gzip -t big.gz && echo "gzip -t ok"
gunzip -c big.gz | md5sum
rm big.gz; gzip -9 big; ls
gunzip big.gz; ls
md5sum < big
gzip -1 -c big | gunzip | wc -c
zcat missing.gz 2>/dev/null; echo "zcat of a missing file: $?"
printf 'small text\n' | gzip | gunzip
