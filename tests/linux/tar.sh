#!/bin/sh
# tar: create, list and extract an archive of a small tree, plain and gzipped.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
mkdir -p src/sub
seq 1 500 > src/numbers
echo hi > src/sub/hello
ln -s numbers src/link
tar cf a.tar src
tar tf a.tar | sort
mkdir out; tar xf a.tar -C out
cat out/src/sub/hello; readlink out/src/link; md5sum < out/src/numbers; md5sum < src/numbers
tar czf a.tgz src; mkdir z; tar xzf a.tgz -C z; cmp z/src/numbers src/numbers && echo "gzipped tar ok"
