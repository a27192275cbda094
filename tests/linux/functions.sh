#!/bin/sh
# Functions: arguments, return statuses, recursion, local variables, nesting.
greet() { echo "hello, $1 ($# args)"; }
greet world extra
fact() { if [ "$1" -le 1 ]; then echo 1; else echo $(( $1 * $(fact $(( $1 - 1 ))) )); fi; }
echo "10! = $(fact 10)"
fib() { local n=$1; if [ $n -lt 2 ]; then echo $n; return; fi; echo $(( $(fib $((n - 1))) + $(fib $((n - 2))) )); }
echo "fib 15 = $(fib 15)"
setv() { local v=inner; echo "in: $v"; }
v=outer; setv; echo "out: $v"
fails() { return 42; }
fails; echo "status $?"
all() { for a in "$@"; do printf '<%s>' "$a"; done; echo; }
all "a b" c "" d
outer() { inner() { echo "inner defined"; }; inner; }
outer; inner
