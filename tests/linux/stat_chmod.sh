#!/bin/sh
# stat and chmod: sizes, octal modes, types, symbolic chmod.
d=$(mktemp -d) && cd "$d" || exit 99
trap 'cd / && rm -rf "$d"' EXIT
umask 022
printf '12345' > f; mkdir d; ln -s f l
stat -c '%s %a %F' f
stat -c '%a %F' d
stat -c '%F %N' l
chmod 640 f; stat -c '%a' f
chmod u+x,g-r,o+w f; stat -c '%a %A' f
chmod -R 700 d; stat -c '%a' d
chmod 4755 f; stat -c '%a' f
touch -d @1000000000 f; TZ=UTC0 stat -c '%Y' f
umask 077; touch private; stat -c '%a' private
umask
