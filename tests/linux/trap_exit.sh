#!/bin/sh
# trap on EXIT, in the shell and in a subshell, with the exit status kept.
sh -c 'trap "echo cleanup ran" EXIT; echo body; exit 5'; echo "status $?"
sh -c 'trap "echo trap in child" EXIT; true'; echo "status $?"
( trap 'echo subshell trap' EXIT; echo in subshell )
sh -c 'trap "echo never" EXIT; trap - EXIT; echo trap removed'
sh -c 'trap "echo got TERM; exit 9" TERM; kill -TERM $$; echo not reached'; echo "status $?"
trap 'echo final trap, status $?' EXIT
echo end of script
