#!/bin/sh
# A script whose status is its last command's (grep finding nothing: 1).
echo "before"
echo abc | grep -q xyz
