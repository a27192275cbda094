#!/bin/sh
# test and [: strings, numbers, files, negation, and/or.
t() { if "$@"; then echo "yes: $*"; else echo "no:  $*"; fi; }
t test abc = abc
t [ abc != abd ]
t [ -z "" ]
t [ -n "x" ]
t [ 5 -gt 3 ]
t [ 5 -le 3 ]
t [ -2 -lt -1 ]
t [ ! 1 -eq 2 ]
t [ 1 -eq 1 -a 2 -eq 2 ]
t [ 1 -eq 2 -o 2 -eq 2 ]
t [ -d / ]
t [ -f / ]
t [ -e /nonexistent-path ]
t [ -x /bin/sh ]
t [ abc \< abd ]
d=$(mktemp -d) && cd "$d" || exit 99
touch f; mkdir g
t [ -f f ]; t [ -s f ]; t [ -d g ]; t [ -r f ]; t [ -e missing ]
echo x > f; t [ -s f ]; t [ f -nt missing ]
cd / && rm -rf "$d"
[ 1 -eq ] 2>/dev/null; echo "malformed: $?"
