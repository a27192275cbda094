#!/bin/sh
# head and tail: line and byte counts, from the end, follow-free, on stdin.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
seq 1 100 > n
head -n 3 n | tr '\n' ' '; echo
tail -n 3 n | tr '\n' ' '; echo
tail -n +98 n | tr '\n' ' '; echo
head -c 10 n | od -c | head -n 1
tail -c 7 n | tr '\n' ' '; echo
head -n -97 n | tail -n 1
seq 1 5 | head -n 1
seq 1 5 | tail -n 1
head -n 2 n n
