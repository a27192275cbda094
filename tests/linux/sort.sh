#!/bin/sh
# sort: lexical, numeric, reverse, keys, separators, unique, stable, merge.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
printf '%s\n' banana apple Cherry date 10 9 100 apple > w
LC_ALL=C sort w | tr '\n' ' '; echo
sort -n w | tr '\n' ' '; echo
sort -r w | tr '\n' ' '; echo
sort -u w | tr '\n' ' '; echo
sort -f w | tr '\n' ' '; echo
printf 'b 2\na 10\nc 1\na 2\n' > kv
sort -k2,2n kv | tr '\n' ';'; echo
sort -k1,1 -k2,2nr kv | tr '\n' ';'; echo
printf 'x:3\ny:1\nz:2\n' | sort -t: -k2 -n | tr '\n' ' '; echo
seq 1 3 > a; seq 2 4 > b; sort -m a b | tr '\n' ' '; echo
seq 1 2000 | sort -r | head -n 3 | tr '\n' ' '; echo
sort -c w 2>/dev/null; echo "sorted check: $?"
