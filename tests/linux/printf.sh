#!/bin/sh
# printf: formats, widths, precision, escapes, reuse of the format.
printf '%s|%5s|%-5s|%.2s\n' abc abc abc abc
printf '%d|%5d|%-5d|%05d|%+d\n' 42 42 42 42 42
printf '%x|%X|%o|%#x|%#o\n' 255 255 8 255 8
printf '%c%c%c\n' A B C
printf '%.3f|%10.2f|%e\n' 3.14159 2.5 12345.678
printf 'tab\there\\n stays, newline follows\n'
printf '%s\n' one two three
printf '%s=%s\n' a 1 b 2 c
printf '\101\102\103\n'
printf '%%literal percent\n'
printf '%b\n' 'escape\tin\targ'
printf '%d\n' 0x10 010
printf 'no newline at end'
