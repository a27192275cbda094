#!/bin/sh
# sed: substitution, addresses, ranges, deletion, in-place, hold space, scripts.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
printf 'one\ntwo\nthree\nfour\nfive\n' > f
sed 's/o/0/' f | tr '\n' ' '; echo
sed 's/o/0/g' f | tr '\n' ' '; echo
sed -n '2,4p' f | tr '\n' ' '; echo
sed '/t/d' f | tr '\n' ' '; echo
sed -n '/two/,/four/{=;p}' f | tr '\n' ' '; echo
sed -e '1i\
header' -e '$a\
footer' f | tr '\n' ' '; echo
sed -E 's/(.)(.*)/\2\1/' f | tr '\n' ' '; echo
sed -n '$=' f
sed '1!G;h;$!d' f | tr '\n' ' '; echo
cp f g; sed -i 's/five/FIVE/' g; tail -n 1 g
echo "path/to/file" | sed 's|/|\\|g'
echo "aaa" | sed 's/a/b/2'
printf 's/one/uno/\ny/tw/TW/\n' > script; sed -f script f | head -n 2 | tr '\n' ' '; echo
