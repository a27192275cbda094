#!/bin/sh
# wc: lines, words, bytes, characters, several files, stdin.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
printf 'one two\nthree\n\nfour five six\n' > t
wc < t
wc -l < t; wc -w < t; wc -c < t; wc -m < t
wc -l t
printf 'no newline' | wc -l
seq 1 10000 > s; wc s t | awk '{print $1, $2, $3, $4}'
printf '' | wc
