#!/bin/sh
# grep: -E alternation and groups, -c, -v, -n, -i, -o, -w, -l, -q, -x, -F, several files.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
printf 'apple pie\nbanana split\ncherry tart\nApple juice\nplum\n' > f
grep -E 'pie|tart' f
grep -E '^(ba|pl)' f
grep -c an f
grep -v a f
grep -n cherry f
grep -i apple f
grep -o -E '[a-z]+ [a-z]+$' f
grep -w plum f
grep -x 'plum' f
grep -F 'e j' f
grep -E 'a{2}|n{1}a' f
cp f g; grep -l tart f g
grep -q banana f && echo "found quietly"
grep nomatch f; echo "no match: $?"
grep pattern missing-file 2>/dev/null; echo "missing file: $?"
grep -h plum f g
grep -E -e 'x{' f 2>/dev/null; echo "regex status: $?"
