#!/bin/sh
# date at fixed epochs only (never now): -d @N, -u, formats.
export TZ=UTC0
date -d @0 -u
date -u -d @1234567890
date -u -d @1700000000 '+%Y-%m-%d %H:%M:%S %a %j'
date -u -d @86399 +%T
date -u -d @0 +%s
date -u -d '2001-09-09 01:46:40' +%s
