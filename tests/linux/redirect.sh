#!/bin/sh
# Redirections: >, >>, 2>&1, <, >&-, numbered descriptors, noclobber.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
echo first > f; echo second >> f; cat f
echo replaced > f; cat f
ls missing-file > out 2>&1; echo "ls status $?"; cat out
{ echo to-out; echo to-err >&2; } > both 2>&1; sort both
{ echo to-out; echo to-err >&2; } 2>/dev/null
wc -l < f
cat < f > g; cat g
exec 3> fd3; echo via-fd3 >&3; exec 3>&-; cat fd3
exec 4< fd3; read -r line <&4; exec 4<&-; echo "read: $line"
set -C; (echo clobber > f) 2>/dev/null || echo "noclobber refused"; set +C
echo ok >| f; cat f
: > empty; wc -c < empty
echo x 1>/dev/null; echo "null ok"
