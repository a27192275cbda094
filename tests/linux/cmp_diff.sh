#!/bin/sh
# cmp and diff on equal and different files; diff's normal format.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
printf 'a\nb\nc\nd\n' > one
printf 'a\nB\nc\nd\ne\n' > two
cp one same
cmp one same && echo "cmp equal"
cmp one two; echo "cmp status: $?"
cmp -s one two; echo "cmp -s status: $?"
diff one same && echo "diff equal"
diff one two; echo "diff status: $?"
diff -u one two | tail -n +3
