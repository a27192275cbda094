#!/bin/sh
# dd: block sizes, counts, skip, seek, conversion, and the records it reports.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
dd if=/dev/zero of=z bs=512 count=8 2>/dev/null; wc -c < z
seq 1 1000 > s
dd if=s bs=10 skip=2 count=1 2>/dev/null; echo
dd if=s of=part bs=1 count=20 2>&1 | head -n 2
wc -c < part
printf 'abcdef' > t; dd if=/dev/zero of=t bs=1 seek=10 count=2 conv=notrunc 2>/dev/null; wc -c < t; od -c t | head -n 2
echo lower | dd conv=ucase 2>/dev/null
dd if=/dev/zero bs=1M count=4 2>/dev/null | wc -c
dd if=s bs=4096 2>/dev/null | md5sum
md5sum < s
