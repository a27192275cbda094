#!/bin/sh
# cd and pwd: relative, absolute, .., -, CDPATH-free, missing directories, symlinked ones.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
top=$(pwd)
mkdir -p a/b/c
cd a/b/c; pwd | sed "s|^$top|TOP|"
cd ..; pwd | sed "s|^$top|TOP|"
cd ../..; pwd | sed "s|^$top|TOP|"
cd /; pwd
cd "$top/a"; cd - >/dev/null; pwd
cd /nonexistent 2>/dev/null; echo "cd missing: $?"
cd "$top"; ln -s a/b linked; cd linked; pwd | sed "s|^$top|TOP|"; pwd -P | sed "s|^$top|TOP|"
cd "$top"; touch file; cd file 2>/dev/null; echo "cd file: $?"
