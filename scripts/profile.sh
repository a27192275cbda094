#!/usr/bin/env bash
# Where the instructions of one guest operation go, function by function.
#
#   scripts/profile.sh [--native] [--top K] [--per OPS] [--extra WORDS] [--initrd FILE] TEST N1 N2
#   scripts/profile.sh --compare [--top K] [--extra WORDS] WORDS1 WORDS2
#
# TEST is the guest's test word with {N} where the count goes, e.g.
# "test=bench:yield={N}" or "test=null-hypercalls:{N}". The script boots
# Umbra (or, with --native, the guest kernel alone) twice under TCG with
# -icount shift=0, once with N1 and once with N2, and has QEMU log every
# translated block it executes (-d exec,nochain,in_asm). Each block's
# instructions are charged to the function its first instruction lies
# in, looked up in the image's symbols (the host, the switcher) or the
# guest kernel's (guest-symbols). The difference of the two runs,
# divided by (N2 - N1) and by --per (operations per unit of N: 2 for
# bench:yield, whose count is per process), is the cost of one operation
# with boot and start-up cancelled out.
#
# Blocks that fault half-way are charged whole, so figures are good to a
# few instructions. The log is read as QEMU writes it (through a pipe),
# never stored: a run of a few hundred operations logs gigabytes.
# --compare profiles two whole runs instead, the guest's words WORDS1
# and WORDS2 (no {N}), and prints what the second adds over the first,
# undivided: e.g. --compare "test=exit:0" "test=showcase" is everything
# the showcase costs beyond booting.
# --extra passes firmware words (Umbra only), e.g. "guest_mem=16M";
# --initrd a root filesystem, for a Linux program's loop: e.g.
# --initrd target/bench/getpid.cpio "init=/getpid {N}" 1000 2000.
set -euo pipefail
source "$(dirname "$0")/common.sh"

native=no top=40 per=1 extra="" initrd=() compare=no
usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --native) native=yes; shift ;;
        --compare) compare=yes; shift ;;
        --top) top=${2:?}; shift 2 ;;
        --per) per=${2:?}; shift 2 ;;
        --extra) extra=${2:?}; shift 2 ;;
        --initrd) initrd=(-initrd "${2:?}"); shift 2 ;;
        -h|--help) usage ;;
        -*) say "unknown option '$1'"; usage ;;
        *) break ;;
    esac
done
if [ "$compare" = yes ]; then
    [ $# -eq 2 ] || usage
    # The words are the runs; {N} stands for all of them.
    test_word="{N}" n1=$1 n2=$2
else
    [ $# -eq 3 ] || usage
    test_word=$1 n1=$2 n2=$3
fi

ensure_qemu
ensure_binutils
build_image >&2
(cd "$UMBRA_ROOT" && cargo build --release --target "$UMBRA_TARGET" -p guest) >&2 || exit 1
guest_elf="$UMBRA_ROOT/target/$UMBRA_TARGET/release/guest"
work=$(mktemp -d)
trap '[ -e "$work/keep" ] || rm -rf "$work"' EXIT

# Symbols as "ADDRESS NAME", 16 lowercase hex digits, sorted: fixed-width
# strings compare as the numbers do, which awk's doubles could not.
symbols() {
    nm -n -C --defined-only "$1" | awk '$2 ~ /^[tTwW]$/ {
        name = $3; for (i = 4; i <= NF; i++) name = name " " $i
        sub(/::h[0-9a-f]{16}$/, "", name)
        print tolower($1), name }'
}
symbols "$UMBRA_IMAGE" >"$work/host.syms"
symbols "$UMBRA_GUEST_SYMBOLS" >"$work/guest.syms"
switcher_start=$(awk '$2 == "switcher_start" { print $1 }' "$work/host.syms")

# count N: one boot; prints "PC FLAGS INSNS EXECS" per block executed.
count() {
    local n=$1 kernel=$UMBRA_IMAGE append
    append="$extra -- ${test_word//\{N\}/$n}"
    if [ "$native" = yes ]; then
        kernel=$guest_elf append=${test_word//\{N\}/$n}
    fi
    qemu_args tcg microvm 1 256M "file:$work/serial-$n.log"
    QEMU_ARGS[${#QEMU_ARGS[@]} - 1]=$kernel
    rm -f "$work/log"
    mkfifo "$work/log"
    timeout 900 qemu-system-x86_64 "${QEMU_ARGS[@]}" "${initrd[@]}" -icount shift=0 \
        -d exec,nochain,in_asm -D "$work/log" -append "$append" >/dev/null 2>&1 &
    local qemu=$!
    # A block is logged as IN: (its instructions, when translated), then
    # Trace lines each time it runs; a block is known by its address and
    # flags, since one address may be translated with different limits.
    awk '
        function hex(s) { s = tolower(s); sub(/^0x/, "", s); while (length(s) < 16) s = "0" s; return s }
        /^IN:/ { inblock = 1; n = 0; next }
        inblock && /^0x/ { if (n == 0) first = hex(substr($1, 1, length($1) - 1)); n++; next }
        inblock { if (n > 0) { pending = first; pending_n = n } inblock = 0; next }
        /^Trace/ {
            split($0, part, "[][/]")
            pc = hex(part[3]); key = pc " " part[4] part[5]
            if (pending == pc) { size[key] = pending_n; bypc[pc] = pending_n; pending = "" }
            execs[key]++
        }
        END { for (key in execs) { split(key, k, " "); n = (key in size) ? size[key] : bypc[k[1]]; print k[1], n, execs[key] } }
    ' <"$work/log"
    wait "$qemu" || true
    grep -q "benchmark: done\|exit status 0\|exited with status 0\|bench " "$work/serial-$n.log" || {
        : >"$work/keep"
        say "the run with $n did not end cleanly; see its serial log in $work (kept)"
    }
}

# by_function: "PC INSNS EXECS" lines in, "FUNCTION INSTRUCTIONS" out.
by_function() {
    awk -v switcher="$switcher_start" -v hostsyms="$work/host.syms" -v guestsyms="$work/guest.syms" '
        function load(file, a, n,   line, f) { n = 0; while ((getline line < file) > 0) { split(line, f, " "); n++; a[n] = f[1]; an[file, n] = substr(line, 18) } return n }
        function find(a, n, file, pc,   lo, hi, mid) {
            pc = "" pc; lo = 1; hi = n; if (n == 0 || pc < ("" a[1])) return "? " pc
            while (lo < hi) { mid = int((lo + hi + 1) / 2); if (("" a[mid]) <= pc) lo = mid; else hi = mid - 1 }
            return an[file, lo]
        }
        # 16-digit hex addition of a small offset (below 2^32) to a base.
        function add(base, off,   hi, lo, v, i, d, out, carry) {
            out = ""; carry = off
            for (i = 16; i >= 1; i--) {
                d = index("0123456789abcdef", substr(base, i, 1)) - 1 + carry
                carry = int(d / 16); out = substr("0123456789abcdef", d % 16 + 1, 1) out
            }
            return out
        }
        function low32(pc,   i, v) { v = 0; for (i = 9; i <= 16; i++) v = v * 16 + index("0123456789abcdef", substr(pc, i, 1)) - 1; return v }
        BEGIN { nh = load(hostsyms, host); ng = load(guestsyms, guest) }
        {
            pc = "" $1; insns = $2 * $3
            if (pc >= "ffffffffffc00000") {
                off = low32(pc) - low32("ffffffffffc00000")
                name = (off < 4096) ? "switcher: exit stub" : "switcher: " find(host, nh, hostsyms, add(switcher, off))
            } else if (substr(pc, 1, 8) == "ffff8000") {
                # The guest kernel at its high alias: KERNEL_BASE + link address.
                name = "guest: " find(guest, ng, guestsyms, "00000000" substr(pc, 9))
            } else if (pc >= "ffff800000000000") {
                name = "guest: kernel half"
            } else if (pc >= "0000008000000000") {
                name = "guest user program"
            } else if (pc >= "0000000000400000") {
                name = "linux user program"
            } else if (pc >= "0000000000200000") {
                name = "guest: " find(guest, ng, guestsyms, pc)
            } else if (pc >= "0000000000100000") {
                name = "host: " find(host, nh, hostsyms, pc)
            } else {
                name = "firmware/bios"
            }
            total[name] += insns
        }
        END { for (name in total) print total[name] "\t" name }
    '
}

say "profiling ${test_word//\{N\}/$n1} and ${test_word//\{N\}/$n2} ($([ "$native" = yes ] && echo natively || echo under Umbra))"
count "$n1" | by_function >"$work/a"
count "$n2" | by_function >"$work/b"
if [ "$compare" = yes ]; then difference=1; else difference=$((n2 - n1)); fi
awk -F'\t' -v d="$difference" -v per="$per" '
    NR == FNR { a[$2] = $1; next }
    { b[$2] = $1 }
    END {
        for (name in b) names[name] = 1
        for (name in a) names[name] = 1
        for (name in names) { v = (b[name] - a[name]) / d / per; sum += v; if (v >= 0.5 || v <= -0.5) printf "%10.1f\t%s\n", v, name }
        printf "%10.1f\t%s\n", sum, "TOTAL per operation"
    }' "$work/a" "$work/b" | sort -t$'\t' -k1,1 -g -r | head -n "$((top + 1))"
