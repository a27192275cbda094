#!/bin/sh
# Pipelines of three and more stages, and their exit status.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
seq 1 20 | grep -v 5 | sort -rn | head -n 5
printf 'b\na\nc\nb\na\n' | sort | uniq -c | sort -rn | awk '{print $2 "=" $1}' | tr '\n' ' '; echo
seq 1 1000 | awk '{s += $1} END {print s}' | sed 's/^/total: /' | cat | cat
echo "a:b:c" | cut -d: -f2 | tr b B | xargs echo got
true | false | true; echo "last true: $?"
true | true | false; echo "last false: $?"
! false | true; echo "negated: $?"
seq 1 100000 | head -n 3 | wc -l
