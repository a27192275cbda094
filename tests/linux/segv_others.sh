#!/bin/sh
# A child killed by SIGSEGV while its siblings go on and finish.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
# The shell reports a crashed background job on stderr whenever it notices;
# that report is not part of what is compared.
(
    ( sleep 0.2; echo "sibling one done" > one ) &
    p1=$!
    sh -c 'kill -SEGV $$' &
    bad=$!
    ( sleep 0.3; echo "sibling two done" > two ) &
    p2=$!
    wait $bad; echo "crashed child: $?"
    wait $p1; echo "sibling one: $?"
    wait $p2; echo "sibling two: $?"
) 2>/dev/null
cat one two
sh -c 'kill -SEGV $$' 2>/dev/null; echo "foreground crash: $?"
echo "the shell goes on"
