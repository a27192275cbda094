#!/bin/sh
# ls -l on files with fixed times and modes, sorted listings, -a, -R, -1.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
export TZ=UTC0
umask 022
printf 'abc' > a; printf 'hello world\n' > b; mkdir c; touch c/inner
chmod 600 a; chmod 755 b
touch -d '2020-01-02 03:04:05' a b
touch -d @0 c/inner
ls -l a b | awk '{print $1, $5, $6, $7, $8, $NF}'
ls -l --full-time a 2>/dev/null | awk '{print $6, $7}'
ls -l c/inner | awk '{print $1, $5, $6, $7, $8, $NF}'
ls -1
ls -a | tr '\n' ' '; echo
ls -R | tr '\n' ' '; echo
ls -d c
ls -1t a c/inner 2>/dev/null | head -n 1
ls -S a b | head -n 1
ls -r | tr '\n' ' '; echo
ls -F | tr '\n' ' '; echo
ls nothing-here 2>&1; echo "ls missing: $?"
