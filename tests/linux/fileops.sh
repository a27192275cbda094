#!/bin/sh
# cp, mv, rm, mkdir -p, rmdir, and the errors they report.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
mkdir -p x/y/z
echo data > x/y/z/file
cp x/y/z/file copy; cat copy
cp -r x xcopy; cat xcopy/y/z/file
mv copy moved; ls
mv moved x/; ls x
mv x/moved x/y/renamed; cat x/y/renamed
rm x/y/renamed; ls x/y
rm -r xcopy; ls
rmdir x/y/z; ls x/y
rmdir x 2>&1; echo "rmdir non-empty: $?"
rm -rf x; ls
rm nonexistent 2>&1; echo "rm missing: $?"
rm -f nonexistent; echo "rm -f missing: $?"
mkdir d; mkdir d 2>&1; echo "mkdir exists: $?"
mkdir -p d; echo "mkdir -p exists: $?"
echo a > f1; echo b > f2; mv f1 f2; cat f2; ls
cp f2 d; cp f2 d/f3; ls d
mkdir e; mv d e/; ls e e/d
