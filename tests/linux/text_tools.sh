#!/bin/sh
# Other text tools: rev, fold, nl, paste, tac, expand.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
echo hello | rev
echo "abcdefghijklmnopqrstuvwxyz" | fold -w 10
printf 'a\nb\n\nc\n' | nl
seq 1 3 > n; printf 'x\ny\nz\n' > l; paste n l; paste -s -d, n
printf 'a\nb\nc\n' > c1; printf 'b\nc\nd\n' > c2; sort c1 c2 | uniq -d | tr '\n' ' '; echo
seq 1 4 | tac | tr '\n' ' '; echo
printf 'a\tb\n' | expand -t 4 | od -c | head -n 1
printf 'one\ntwo\n' | sed = | paste - -
