#!/bin/sh
# tr: ranges, classes, delete, squeeze, complement, octal escapes.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
echo "Hello, World" | tr a-z A-Z
echo "Hello, World" | tr -d lo
echo "aaabbbccc   dd" | tr -s 'a-c '
echo "abc123def" | tr -cd '0-9'; echo
echo "one two three" | tr ' ' '\n'
echo "tabs	here" | tr '\t' '_'
echo "MiXeD" | tr '[:upper:][:lower:]' '[:lower:][:upper:]'
echo "rot13 test" | tr 'a-zA-Z' 'n-za-mN-ZA-M'
printf 'a\0b\n' | tr '\000' '-'
