#!/bin/sh
# Here-documents: expanded, quoted, tab-stripped, into a loop and a file.
name=Umbra
cat <<END
Hello $name, 2+2=$((2 + 2)), $(echo sub)
  indented line
END
cat <<'END'
No $expansion here: $(echo not) `nor this`
END
cat <<-END
	leading tabs stripped
		both of them
	END
tr a-z A-Z <<END
shout $name
END
while read -r k v; do echo "$k => $v"; done <<END
one 1
two 2
END
