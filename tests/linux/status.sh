#!/bin/sh
# $? after success, failure, a missing command, and processes killed by signals.
true; echo "true: $?"
false; echo "false: $?"
sh -c 'exit 7'; echo "exit 7: $?"
sh -c 'exit 255'; echo "exit 255: $?"
sh -c 'exit 256'; echo "exit 256: $?"
no-such-command-here 2>/dev/null; echo "missing: $?"
sh -c 'kill -SEGV $$' 2>/dev/null; echo "segv: $?"
sh -c 'kill -TERM $$' 2>/dev/null; echo "term: $?"
sh -c 'kill -KILL $$' 2>/dev/null; echo "kill: $?"
sh -c 'kill -USR1 $$' 2>/dev/null; echo "usr1: $?"
if false; then :; else echo "else branch: $?"; fi
