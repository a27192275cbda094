#!/bin/sh
# seq: ranges, steps, widths, separators, negatives, decimals.
seq 5 | tr '\n' ' '; echo
seq 3 7 | tr '\n' ' '; echo
seq 1 3 10 | tr '\n' ' '; echo
seq 10 -2 1 | tr '\n' ' '; echo
seq -w 8 11 | tr '\n' ' '; echo
seq -s , 1 5
seq 2 -1 -2 | tr '\n' ' '; echo
seq 0.5 0.5 2 | tr '\n' ' '; echo
seq 5 1 | wc -l
seq 100000 | tail -n 1
