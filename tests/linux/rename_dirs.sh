#!/bin/sh
# Renaming directories over empty ones, into themselves, and files across directories.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
mkdir -p a/inner b empty
echo in > a/inner/f
mv a c; ls
mv c empty; ls; ls empty
mkdir full; touch full/x
mv empty/c full 2>/dev/null; ls full
mkdir target; mv empty/c target 2>/dev/null; ls target
mv target target/sub 2>/dev/null; echo "into itself: $?"
echo data > file; mkdir -p deep/er; mv file deep/er/; cat deep/er/file
mv deep/er/file deep/er/file2; ls deep/er
