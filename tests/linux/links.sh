#!/bin/sh
# ln -s and ln: symbolic and hard links, readlink, dangling links, link counts.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
umask 022
echo target-data > target
ln -s target sym
ln target hard
cat sym hard
readlink sym
ls -l sym | awk '{print $1, $(NF-2), $(NF-1), $NF}'
stat -c '%h %s' target
echo more >> hard; cat target
rm target; cat hard; cat sym 2>/dev/null || echo "dangling: $?"
readlink sym
stat -c '%h' hard
mkdir dir; ln -s dir dlink; touch dlink/inside; ls dir
ln -s /nonexistent/abs abs; readlink abs
ln -s sym2 sym1; ln -s sym1 sym2; cat sym1 2>/dev/null; echo "loop: $?"
readlink -f dlink/inside | sed "s|^$d|SCRATCH|"
ln hard hard2; stat -c '%h' hard
test -L sym && echo "sym is a link"; test -h hard || echo "hard is not"
