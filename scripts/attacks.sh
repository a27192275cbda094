#!/usr/bin/env bash
# The attack suite: guests that try to break out of Umbra.
#
#   scripts/attacks.sh list          print the catalogue: name, group, outcome
#   scripts/attacks.sh run [NAME...] boot every attack (or the named ones)
#                                    under TCG, and under KVM if /dev/kvm opens
#
# Each attack is one guest scenario (test=attack:NAME); tests/attacks.rs
# holds the catalogue and checks every outcome. docs/security.md lists
# them. The exit status is the test run's: 0 when every attack ended as
# it must.
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
command=$1
shift
cd "$UMBRA_ROOT"
case "$command" in
    list)
        [ $# -eq 0 ] || usage
        cargo test -q -p boot-tests --test attacks -- --list-attacks
        ;;
    run)
        ensure_rust_target
        ensure_qemu
        # --attack=NAME picks attacks by their exact name (a plain word
        # would also pick every attack whose name contains it).
        names=()
        for name in "$@"; do names+=("--attack=$name"); done
        cargo test -p boot-tests --test attacks -- ${names[@]+"${names[@]}"}
        ;;
    -h|--help) usage ;;
    *) say "unknown command '$command'"; usage ;;
esac
