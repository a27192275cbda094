#!/bin/bash
# bash only: case conversion, replacement, substrings, printf -v, here-strings.
s="Hello Umbra World"
echo "${s^^} ${s,,} ${s^}"
echo "${s// /_} ${s/o/0} ${s//[aeiou]/}"
echo "${s:6:5} ${s: -5}"
printf -v out '%05d' 42; echo "$out"
read -r a b <<< "here string"; echo "$b $a"
tr a-z A-Z <<< "lower"
x=abc; echo "${#x} ${x@Q}"
n=7; echo "$(( n ** 2 )) $(( 16#ff )) $(( 2#1010 ))"
