#!/bin/sh
# md5sum, sha1sum, sha256sum, sha512sum: of data, of files, and -c verification.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
printf '' | md5sum
echo "the quick brown fox" | md5sum
echo "the quick brown fox" | sha1sum
echo "the quick brown fox" | sha256sum
echo "the quick brown fox" | sha512sum | cut -c1-64
seq 1 10000 > s
md5sum s; sha256sum s
md5sum s > sums; md5sum -c sums
echo changed >> s; md5sum -c sums 2>/dev/null; echo "check after change: $?"
