#!/bin/sh
# File descriptors: exec redirections, duplicating, read-write opens, closing.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
exec 5>file5; echo one >&5; echo two >&5; exec 5>&-; cat file5
exec 6<file5; read -r l1 <&6; read -r l2 <&6; exec 6<&-; echo "$l2 $l1"
exec 7<>rw; echo rw-data >&7; exec 7>&-; cat rw
{ echo out; echo err >&2; } 2>err.txt >out.txt; cat out.txt err.txt
( echo moved >&3 ) 3>three; cat three
echo x 2>&1 >/dev/null | wc -c
cat <&- 2>/dev/null; echo "closed stdin cat: $?"
