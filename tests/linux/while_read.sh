#!/bin/sh
# while read over files and pipes, with counters, IFS and the last unterminated line.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
printf 'alpha 1\nbeta 2\ngamma 3\n' > f
while read -r name num; do echo "$num:$name"; done < f
n=0; while read -r line; do n=$((n + 1)); done < f; echo "count=$n"
seq 1 5 | while read -r v; do printf '%s ' $((v * v)); done; echo
printf 'no newline' | { while read -r l; do echo "loop: $l"; done; echo "left: $l"; }
printf 'a,b\nc,d\n' | while IFS=, read -r l r; do echo "$r$l"; done
exec 3< f; read -r first <&3; read -r second <&3; exec 3<&-; echo "$first / $second"
