#!/bin/bash
# bash only: [[ ]] tests, =~ with BASH_REMATCH, pattern matching.
s="version 5.2.15 release"
if [[ $s =~ ([0-9]+)\.([0-9]+)\.([0-9]+) ]]; then echo "${BASH_REMATCH[0]} major=${BASH_REMATCH[1]} patch=${BASH_REMATCH[3]}"; fi
[[ abc == a* ]] && echo "glob match"
[[ abc == "a*" ]] || echo "quoted: no glob"
[[ -n $s && ! -z $s ]] && echo "and/not"
[[ 10 -gt 9 || 1 -eq 2 ]] && echo "or"
[[ apple < banana ]] && echo "string order"
shopt -s extglob; f=file.tar.gz; echo "${f%%.@(tar|gz)*}"
