#!/bin/sh
# uniq: counts, duplicates only, unique only, case-insensitive, fields.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
printf 'a\na\nb\nc\nc\nc\na\nA\n' > in
uniq in | tr '\n' ' '; echo
uniq -c in
uniq -d in | tr '\n' ' '; echo
uniq -u in | tr '\n' ' '; echo
uniq -i in | tr '\n' ' '; echo
printf '1 x\n2 x\n3 y\n' | uniq -f 1
