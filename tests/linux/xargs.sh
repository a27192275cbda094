#!/bin/sh
# xargs: batching with -n, placeholders with -I, null separators, exit statuses.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
seq 1 7 | xargs echo
seq 1 7 | xargs -n 3 echo
printf 'a b\nc\n' | xargs -I{} echo "[{}]"
printf 'one\0two words\0' | xargs -0 -n 1 echo
touch f1 f2 f3; echo f1 f2 f3 | xargs rm; ls | wc -l
echo | xargs echo empty-input
seq 1 3 | xargs sh -c 'echo "$# args: $*"' sh
echo x | xargs false; echo "status $?"
