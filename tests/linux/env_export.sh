#!/bin/sh
# env and export: the environment children see, env -i, env VAR=value, unset.
export EXPORTED=yes
NOT_EXPORTED=no
sh -c 'echo "child sees EXPORTED=$EXPORTED NOT_EXPORTED=$NOT_EXPORTED"'
ONLY_HERE=temporary sh -c 'echo "one command: $ONLY_HERE"'
echo "after: [${ONLY_HERE-}]"
env | grep '^EXPORTED='
env -i A=1 B=2 env | sort
env -i /bin/sh -c 'echo "empty env: [${EXPORTED-}]"' 2>/dev/null || env -i sh -c 'echo "empty env: [${EXPORTED-}]"'
env -u EXPORTED sh -c 'echo "unset by env: [${EXPORTED-}]"'
unset EXPORTED; sh -c 'echo "after unset: [${EXPORTED-}]"'
export A=1 B=2; export -p | grep -E '^export (A|B)='
env X=y sh -c 'echo "X=$X"'
