#!/bin/sh
# Signals between processes: kill of a background child, trap of USR1 and INT, kill -0.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
sh -c 'trap "echo got USR1" USR1; kill -USR1 $$; echo after USR1'
sh -c 'trap "echo got INT" INT; kill -INT $$; echo after INT'
# The shell reports a killed background job on stderr whenever it notices;
# that report is not part of what is compared.
(
    sleep 5 & pid=$!
    kill -0 $pid && echo "child alive"
    kill $pid; wait $pid; echo "child killed: $?"
    kill -0 $pid 2>/dev/null; echo "after wait: $?"
) 2>/dev/null
sh -c 'trap "" TERM; kill -TERM $$; echo ignored TERM'
kill -l 9; kill -l 15
sh -c 'kill -9 $$; echo never'; echo "self kill -9: $?"
