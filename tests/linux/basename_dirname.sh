#!/bin/sh
# basename and dirname on paths, with and without suffixes and slashes.
basename /usr/lib/libc.so.6
basename /usr/lib/libc.so.6 .6
basename /usr/lib/
basename file.tar.gz .gz
basename /
dirname /usr/lib/libc.so.6
dirname /usr/lib/
dirname file
dirname /
dirname a/b
dirname //x
