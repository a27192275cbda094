#!/bin/sh
# eval, quoting, word splitting, IFS, globbing off and on.
cmd='echo evaluated $((1 + 2))'; eval "$cmd"
var=name; eval "$var=value"; echo "$name"
s='a  b   c'; echo $s; echo "$s"
IFS=:; set -- $(echo "x:y:z"); echo "$# fields: $2"; unset IFS
echo 'single $quoted' "double \$escaped" back\ slash
echo "tab	inside"
q="it's"; echo "$q" 'say "hi"'
set -f; echo /*; set +f
echo "arg count: $(set -- "a b" c; echo $#)"
