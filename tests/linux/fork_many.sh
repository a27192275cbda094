#!/bin/sh
# Fifty background children at once, each writing a file, all waited for; then a bounded fork chain.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
i=0
while [ $i -lt 50 ]; do
    i=$((i + 1))
    (echo "child $i" > "out.$i") &
done
wait
ls | wc -l
cat out.* | sort -t' ' -k2 -n | tail -n 3
cat out.* | wc -l
chain() { if [ "$1" -gt 0 ]; then sh -c "echo depth $1" & wait; chain $(($1 - 1)); fi; }
chain 5
n=0; for j in $(seq 1 10); do sh -c 'exit 0' && n=$((n + 1)); done; echo "$n short-lived shells"
