#!/bin/sh
# case: literal, glob, alternative and fall-through default patterns.
classify() {
    case "$1" in
        "") echo "empty" ;;
        [0-9]*) echo "$1: starts with a digit" ;;
        *.txt | *.md) echo "$1: text" ;;
        ?) echo "$1: one char" ;;
        [!a-z]*) echo "$1: not lower" ;;
        *) echo "$1: other" ;;
    esac
}
for w in "" 42abc notes.txt README.md x Upper lower; do classify "$w"; done
case abc in a*c) echo glob-match ;; esac
case "a*c" in 'a*c') echo quoted-literal ;; esac
case x in y) echo no ;; esac; echo "status after no match: $?"
