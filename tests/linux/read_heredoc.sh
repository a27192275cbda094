#!/bin/sh
# read from a here-document: fields, IFS, -r, leftover words, end of input.
read -r a b rest <<END
first second third fourth
END
echo "a=$a b=$b rest=$rest"
IFS=: read -r x y z <<END
1:2:3:4
END
echo "x=$x y=$y z=$z"
read -r raw <<'END'
back\slash kept
END
echo "$raw"
read cooked <<'END'
back\slash gone
END
echo "$cooked"
read -r empty <<END

END
echo "empty=[$empty]"
read -r none < /dev/null; echo "eof status: $?"
