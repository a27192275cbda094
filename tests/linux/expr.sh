#!/bin/sh
# expr: arithmetic, comparison, string length, match, substr, index, and its status.
expr 3 + 4
expr 10 - 20
expr 6 \* 7
expr 17 / 5
expr 17 % 5
expr 3 \< 10
expr abc = abc
expr length "hello world"
expr substr umbrella 1 5
expr index abcdef d
expr match "abc123" '[a-z]*'
expr "abc123" : '[a-z]*\([0-9]*\)'
expr 0; echo "zero status: $?"
expr 1 / 0 2>/dev/null; echo "divide by zero: $?"
