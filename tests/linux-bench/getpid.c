/*
 * getpid in a loop, as a Linux program: the benchmark of the direct
 * system-call path (scripts/bench.sh's linux-getpid row).
 *
 *   /getpid COUNT
 *
 * makes COUNT getpid calls with the `syscall` instruction, timed with
 * clock_gettime(CLOCK_MONOTONIC) around the loop, then prints
 *
 *   bench linux-getpid: COUNT ops, NS ns
 *
 * and exits 0. It is freestanding (no C library: `gcc -static -nostdlib`),
 * so that each operation is exactly one `syscall` and the loop around it,
 * and nothing else runs before or after.
 */

typedef unsigned long u64;

static u64 sys(u64 number, u64 a, u64 b, u64 c) {
    u64 result;
    __asm__ volatile("syscall"
                     : "=a"(result)
                     : "a"(number), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return result;
}

enum { SYS_WRITE = 1, SYS_GETPID = 39, SYS_CLOCK_GETTIME = 228, SYS_EXIT_GROUP = 231 };
enum { CLOCK_MONOTONIC = 1 };

static u64 now_ns(void) {
    u64 ts[2];
    sys(SYS_CLOCK_GETTIME, CLOCK_MONOTONIC, (u64)ts, 0);
    return ts[0] * 1000000000ul + ts[1];
}

/* Decimal digits of `n` at the end of `buf`; returns where they start. */
static char *digits(char *end, u64 n) {
    do {
        *--end = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    return end;
}

static char *append(char *at, const char *text) {
    while (*text)
        *at++ = *text++;
    return at;
}

void getpid_main(u64 *stack) {
    u64 argc = stack[0];
    char **argv = (char **)(stack + 1);
    u64 count = 1000;
    if (argc > 1) {
        count = 0;
        for (const char *p = argv[1]; *p >= '0' && *p <= '9'; p++)
            count = count * 10 + (u64)(*p - '0');
    }
    u64 start = now_ns();
    for (u64 i = 0; i < count; i++)
        sys(SYS_GETPID, 0, 0, 0);
    u64 ns = now_ns() - start;

    char line[96], number[24], *at = line;
    at = append(at, "bench linux-getpid: ");
    number[23] = 0;
    at = append(at, digits(number + 23, count));
    at = append(at, " ops, ");
    at = append(at, digits(number + 23, ns));
    at = append(at, " ns\n");
    sys(SYS_WRITE, 1, (u64)line, (u64)(at - line));
    sys(SYS_EXIT_GROUP, 0, 0, 0);
    for (;;) {
    }
}

/* The kernel starts us with the stack pointer at argc. */
__asm__(".global _start\n"
        "_start:\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call getpid_main\n");
