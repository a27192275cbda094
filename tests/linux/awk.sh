#!/bin/sh
# awk: fields, patterns, arrays, printf, functions, BEGIN/END, -F and -v.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
printf 'alice 30 paris\nbob 25 rome\ncarol 35 paris\ndave 40 oslo\n' > p
awk '{print $1}' p | tr '\n' ' '; echo
awk '$2 > 28 {print $1, $2}' p
awk '{age += $2} END {printf "avg %.2f over %d\n", age / NR, NR}' p
awk '{count[$3]++} END {for (c in count) print c, count[c]}' p | sort
awk -v prefix=">" '{print prefix $NF}' p | head -n 2
echo "a,b,,d" | awk -F, '{print NF; print $4}'
awk 'function sq(x) { return x * x } BEGIN { print sq(12), length("hello"), substr("umbra", 2, 3), index("abc", "c") }'
awk 'BEGIN { s = "a-b-c"; n = split(s, parts, "-"); print n, parts[1] parts[3]; gsub(/-/, "+", s); print s; print toupper("x") tolower("Y") }'
awk 'BEGIN { printf "%5s|%-5s|%05d|%x|%o|%e\n", "r", "l", 42, 255, 8, 1234.5 }'
seq 1 10 | awk 'NR % 3 == 0' | tr '\n' ' '; echo
awk 'BEGIN { x = 2 * 512; print x, int(7 / 2), 7 % 3, -7 % 3, 1e3 + 0.5 }'
awk 'BEGIN { while ((getline line < "p") > 0) n++; print n " lines" }'
