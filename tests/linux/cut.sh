#!/bin/sh
# cut: fields, delimiters, ranges, characters, bytes, complement-free.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
printf 'a:b:c:d\n1:2:3:4\nno-delimiter\n' > f
cut -d: -f2 f
cut -d: -f1,3 f
cut -d: -f2- f
cut -d: -s -f4 f
echo abcdefgh | cut -c2-4
echo abcdefgh | cut -c-3,6-
echo abcdefgh | cut -b 1,8
printf 'x\ty\tz\n' | cut -f2
