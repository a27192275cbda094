#!/bin/bash
# bash only: brace expansion, sequences, nesting.
echo {a,b,c}
echo x{1..5}y
echo {10..0..3}
echo {a..e}
echo pre{A,B{1,2}}post
echo {1..3}{x,y}
