#!/bin/sh
# set -e: the script stops at the first failing command, except in conditions.
sh -c 'set -e; echo one; false; echo never'; echo "stopped: $?"
sh -c 'set -e; if false; then :; fi; false || true; ! true; echo survived conditions'; echo "status: $?"
sh -c 'set -e; (exit 4); echo never'; echo "subshell failure: $?"
sh -c 'set -e; x=$(false); echo "assignment of a failed substitution: never"'; echo "status: $?"
sh -c 'set -eu; echo $undefined_variable' 2>/dev/null; echo "set -u: $?"
sh -c 'set -e; false | true; echo "pipeline status is the last"'; echo "status: $?"
