#!/bin/sh
# Subshells: variables, cd and exit stay inside; grouping with braces does not.
v=outer
( v=inner; echo "in subshell: $v" ); echo "after: $v"
{ v=braced; }; echo "after braces: $v"
( cd /; pwd ); pwd >/dev/null
( exit 6 ); echo "subshell exit: $?"
x=$( (echo nested; exit 2) ); echo "$x $?"
( ( ( echo three deep ) ) )
( echo a; echo b ) | wc -l
( set -- p q r; echo "$#" ); echo "$#"
