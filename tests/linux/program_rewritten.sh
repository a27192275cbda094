#!/bin/sh
# A program file rewritten between runs: every run sees the file's bytes
# as they are now, not as an earlier run found them (the guest kernel
# keeps the pages of programs between runs).
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
# A 155-byte static x86-64 program that writes one letter and a newline;
# the letter, in octal, is its next-to-last byte (offset 153).
head='\177\105\114\106\2\1\1\0\0\0\0\0\0\0\0\0\2\0\76\0\1\0\0\0\170\0\100\0\0\0\0\0\100\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\100\0\70\0\1\0\0\0\0\0\0\0\1\0\0\0\5\0\0\0\0\0\0\0\0\0\0\0\0\0\100\0\0\0\0\0\0\0\100\0\0\0\0\0\233\0\0\0\0\0\0\0\233\0\0\0\0\0\0\0\0\20\0\0\0\0\0\0\270\1\0\0\0\277\1\0\0\0\110\215\65\20\0\0\0\272\2\0\0\0\17\5\270\74\0\0\0\61\377\17\5'
program() { printf "${head}\\${1}\\12"; }
program 101 > prog && chmod +x prog
./prog; ./prog
printf 'B' | dd of=prog bs=1 seek=153 conv=notrunc 2>/dev/null
./prog
program 103 > prog
./prog
cp prog copy && ./copy
wc -c < prog
