#!/bin/bash
# bash only: indexed and associative arrays, slices, lengths, appends.
a=(zero one "two words" three)
echo "${#a[@]} ${a[2]} ${a[-1]}"
a+=(four); echo "${a[@]:3}"
for x in "${a[@]}"; do printf '<%s>' "$x"; done; echo
unset 'a[1]'; echo "${!a[@]}"
declare -A m=([apple]=red [banana]=yellow)
m[cherry]=dark; for k in $(printf '%s\n' "${!m[@]}" | sort); do echo "$k=${m[$k]}"; done
echo "${#m[@]} keys"
mapfile -t lines <<< $'l1\nl2'
echo "${lines[1]}"
