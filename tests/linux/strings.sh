#!/bin/sh
# Parameter expansion: ${x#}, ${x##}, ${x%}, ${x%%}, ${#x}, defaults, alternatives, substrings.
p=/usr/local/lib/libfoo.so.1.2
echo "${p#*/}"
echo "${p##*/}"
echo "${p%/*}"
echo "${p%%.*}"
echo "${#p}"
unset u; e=""
echo "[${u:-default}] [${e:-empty-default}] [${e-set-but-empty}]"
echo "[${u:+alt}] [${p:+alt}]"
echo "[${u:=assigned}] u=$u"
( : "${unset_here:?message}" ) 2>/dev/null || echo "?: failed as it should"
s=hello-world
echo "${s#hello-}" "${s%-world}" "${s#nomatch}"
echo "${s:0:5} ${s:6}"
echo "${s/o/0} ${s//o/0}"
n=12345; echo "${#n} digits"
set -- a b c; echo "$# $* ${#}"
