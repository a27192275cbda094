#!/bin/sh
# Shell arithmetic: operators, precedence, bases, assignment forms.
a=7 b=3
echo "$((a + b)) $((a - b)) $((a * b)) $((a / b)) $((a % b))"
echo "$((a << 2)) $((a >> 1)) $((a & b)) $((a | b)) $((a ^ b)) $((~a))"
echo "$((a > b)) $((a < b)) $((a == 7)) $((a != 7)) $((!a)) $((a && 0)) $((a || 0))"
echo "$((2 + 3 * 4)) $(((2 + 3) * 4)) $((-a / 2)) $((-a % 3))"
echo "$((0x1f)) $((010)) $((1 ? 11 : 22)) $((0 ? 11 : 22))"
i=0; i=$((i + 1)); : $((i += 5)); : $((i *= 3)); echo "i=$i"
echo "$((9223372036854775807)) $((9223372036854775807 + 1))"
n=1; k=0; while [ $k -lt 20 ]; do n=$((n * 2)); k=$((k + 1)); done; echo "2^20=$n"
