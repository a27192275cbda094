#!/bin/sh
# A script that ends with exit 3.
echo "about to exit 3"
exit 3
echo "not reached"
