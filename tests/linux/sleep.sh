#!/bin/sh
# sleep: fractional and whole seconds, in the foreground and the background.
sleep 0.1; echo "slept 0.1"
sleep 0; echo "slept 0"
sleep 0.2 & pid=$!; wait $pid; echo "background sleep done: $?"
# The shell reports a killed background job on stderr whenever it notices;
# that report is not part of what is compared.
( sleep 10 & sleep 0.1; kill $!; wait $!; echo "killed sleep: $?" ) 2>/dev/null
sleep bogus 2>/dev/null; echo "bad argument: $?"
