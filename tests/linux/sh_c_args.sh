#!/bin/sh
# sh -c with $0 and positional parameters; $@ and $* quoting; shift.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
sh -c 'echo "0=$0 1=$1 2=$2 #=$#"' zero one two
sh -c 'for a in "$@"; do echo "[$a]"; done' name "x y" z
sh -c 'echo "$*"' name a b c
sh -c 'IFS=,; echo "$*"' name a b c
sh -c 'shift 2; echo "$@"' name a b c d
sh -c 'echo ${10:-none} ${2}' n 1 2 3 4 5 6 7 8 9 10
echo 'echo from a script file: $1' > s.sh; sh s.sh arg
chmod +x s.sh; ./s.sh direct 2>/dev/null || echo "no shebang: ran by sh anyway"
printf '#!/bin/sh\necho shebang ran: $0\n' > t.sh; chmod +x t.sh; ./t.sh | sed 's|/.*/|.../|'
