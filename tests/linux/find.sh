#!/bin/sh
# find: names, types, depth, size, newer-free predicates, -exec, -print0.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
mkdir -p a/b/c a/d
touch a/one.txt a/b/two.txt a/b/c/three.log a/d/four.txt
echo hello > a/d/five.txt
ln -s ../one.txt a/b/link
find a | sort
find a -name '*.txt' | sort
find a -type d | sort
find a -type l
find a -type f -size +0 | sort
find a -maxdepth 1 | sort
find a -mindepth 3 | sort
find a -name '*.log' -exec echo found {} \;
find a -type f -exec basename {} \; | sort | tr '\n' ' '; echo
find a -name '*.txt' -print0 | tr '\0' '\n' | sort | wc -l
find a -path '*b*' -prune -o -type f -print | sort
find a -empty | sort
