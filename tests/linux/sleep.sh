#!/bin/sh
# sleep: fractional and whole seconds, in the foreground and the background.
sleep 0.1; echo "slept 0.1"
sleep 0; echo "slept 0"
sleep 0.2 & pid=$!; wait $pid; echo "background sleep done: $?"
sleep 10 & sleep 0.1; kill $! 2>/dev/null; wait $!; echo "killed sleep: $?"
sleep bogus 2>/dev/null; echo "bad argument: $?"
