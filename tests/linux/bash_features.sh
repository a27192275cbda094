#!/bin/bash
# bash only: local -i, let, (( )), select-free loops, C-style for, PIPESTATUS, declare -f.
for ((i = 0; i < 5; i++)); do printf '%d ' $i; done; echo
let "x = 5 * 3"; echo $x
((y = x * 2)); echo $y
(( y > 20 )) && echo "bigger"
true | false | true; echo "${PIPESTATUS[@]}"
f() { local -i n=$1; n+=10; echo $n; }; f 5
declare -r ro=1; (ro=2) 2>/dev/null || echo "readonly kept"
set -o pipefail; true | false | true; echo "pipefail: $?"
type -t f; type -t echo
echo "$BASH_VERSION" | cut -d. -f1
