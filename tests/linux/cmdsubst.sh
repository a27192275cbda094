#!/bin/sh
# Command substitution: $(...), backquotes, nesting, trailing newlines, status.
a=$(echo hello)
b=`echo world`
echo "$a $b"
echo "nested: $(echo "$(echo "$(echo deep)")")"
c=$(printf 'x\n\n\n'); echo "[$c]"
n=$(seq 1 5 | wc -l); echo "lines=$n"
words=$(echo one two three); set -- $words; echo "$# words, second=$2"
out=$(sh -c 'echo inside; exit 3'); echo "status=$? out=$out"
echo "arith in subst: $(( $(echo 6) * $(echo 7) ))"
echo "$(cat <<END
from a heredoc
END
)"
