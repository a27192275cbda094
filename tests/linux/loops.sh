#!/bin/sh
# for, while and until loops, with break and continue, nested.
for w in alpha beta gamma; do printf '%s ' "$w"; done; echo
i=0; while [ $i -lt 5 ]; do i=$((i + 1)); [ $i -eq 3 ] && continue; printf '%d ' $i; done; echo
j=10; until [ $j -le 6 ]; do printf '%d ' $j; j=$((j - 1)); done; echo
for x in 1 2 3; do for y in a b c; do [ "$y" = c ] && break; [ "$x" = 3 ] && break 2; printf '%s%s ' $x $y; done; done; echo
set -- one "two words" three
for arg; do echo "[$arg]"; done
for f in; do echo never; done; echo "empty list ok"
total=0; for n in $(seq 1 100); do total=$((total + n)); done; echo "sum=$total"
