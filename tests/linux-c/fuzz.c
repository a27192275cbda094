/*
 * A Linux-ABI fuzzer for the guest kernel's system-call layer.
 *
 * It makes COUNT system calls with numbers 0-450 and arguments drawn from
 * a table of edge values (0, -1, small numbers, huge ones, pointers into
 * its own buffers and to path names, NULL, kernel-half, non-canonical and
 * unmapped addresses), all from a seeded generator, so a run that breaks
 * the kernel is replayed by its seed. A kernel must answer every call
 * with a result or an error and never panic, hang, or corrupt another
 * process; the fuzzer's only verdict is that it reaches its last line.
 *
 *   linux-fuzz [-g] [-v] [SEED [COUNT]]    (defaults: seed 1, 10000 calls)
 *
 * It is meant for a throwaway guest: even defused, random calls as root
 * can damage a real machine's files (chmod of "/", unlink of a path it
 * knows). So without -g ("in a guest") it only prints the calls it would
 * make, and makes none. -v prints every call (and, with -g, its result).
 *
 * Calls that would legitimately end it (exit, signals to itself, seccomp,
 * unmapping its own code), block for ever (pause, sleeps, waits without a
 * timeout, reads of the console), or reach outside it (reboot, clock
 * setting, kill, ptrace, modules, mounts) are skipped or have the
 * dangerous argument replaced: every fd it creates is non-blocking,
 * timeouts are zero, memory calls aim at a scratch mapping of its own,
 * and its console (fds 1 and 2) is never passed to a call; fd 0 is
 * /dev/null. SIGPIPE is ignored: a write to a pipe whose reader it closed
 * is an EPIPE for it, not its end. Which calls it makes is not the seed's
 * alone but the clock's too (under QEMU's -icount at shifts 0 to 7, seed
 * 2 made from 18,293 to 19,951 of its 20,000 calls), so such a write may
 * come in one run and not the next.
 *
 * Build: musl-gcc -static -O2 -o linux-fuzz fuzz.c
 */
#include <stdint.h>

typedef unsigned long u64;

static long raw_syscall(long nr, long a, long b, long c, long d, long e, long f)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

/* Output, without stdio: the fuzzed calls may break what stdio relies on. */
static void out(const char *s)
{
	long n = 0;
	while (s[n])
		n++;
	raw_syscall(1 /* write */, 1, (long)s, n, 0, 0, 0);
}

static void out_num(long v)
{
	char buf[24];
	int i = 23;
	int neg = v < 0;
	unsigned long u = neg ? -(unsigned long)v : (unsigned long)v;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (neg)
		buf[--i] = '-';
	out(buf + i);
}

static void out_hex(unsigned long v)
{
	char buf[20];
	int i = 19;
	buf[i] = 0;
	do {
		buf[--i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	buf[--i] = 'x';
	buf[--i] = '0';
	out(buf + i);
}

static u64 rng_state;

static u64 next_random(void)
{
	/* xorshift64*: small, fast, and the same everywhere. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1DULL;
}

#define BUF_SIZE 8192
static unsigned char buffers[4][BUF_SIZE] __attribute__((aligned(4096)));
static const long zero_time[2];
static const char *const paths[] = {
	"/tmp/fz", "/tmp/fz/a", "/tmp/fz/link", "/", ".", "..", "/dev/null",
	"/tmp", "", "/nonexistent/x", "/tests", "/bin/busybox",
};
static unsigned char *scratch;
#define SCRATCH_SIZE (64 * 4096)

/* One argument: an edge value, a pointer, or plain random bits. */
static long pick_argument(void)
{
	static const long edges[] = {
		0, 1, 2, 3, 4, 7, 8, 16, 64, 255, 256, 4095, 4096, 4097, 65536,
		-1, -2, -4095, -4096, 0x7fffffffL, 0x80000000L, 0xffffffffL,
		0x100000000L, 0x7fffffffffffffffL, (long)0x8000000000000000UL,
		(long)0xffff800000000000UL, (long)0xffffffffff600000UL,
		0x0000800000000000L, 0x00007ffffffff000L, 0x1000L, 0x4000dead0000L,
		0x400000L, (long)0xdeadbeefdeadbeefUL,
	};
	u64 r = next_random();
	switch (r % 8) {
	case 0:
	case 1:
	case 2:
		return edges[(r >> 8) % (sizeof(edges) / sizeof(edges[0]))];
	case 3:
	case 4: {
		unsigned char *buf = buffers[(r >> 8) % 4];
		u64 where = (r >> 16) % 4;
		return (long)(where == 0 ? buf : where == 1 ? buf + BUF_SIZE / 2 : where == 2 ? buf + BUF_SIZE - 1 : buf + BUF_SIZE);
	}
	case 5:
		return (long)paths[(r >> 8) % (sizeof(paths) / sizeof(paths[0]))];
	case 6:
		return (long)((r >> 8) & 0xffff);
	default:
		return (long)next_random();
	}
}

enum { SKIP = -1 };

#define O_NONBLOCK 04000
#define MAP_FIXED 0x10
#define MAP_POPULATE 0x8000
#define MAP_LOCKED 0x2000

/* Is `fd` the console the fuzzer reports on? */
static long defuse_fd(long fd)
{
	return (fd == 1 || fd == 2) ? 0 : fd;
}

/* An address and length inside the scratch mapping. */
static void aim_at_scratch(long *addr, long *len)
{
	u64 r = next_random();
	*addr = (long)(scratch + ((r % 64) * 4096));
	unsigned long room = SCRATCH_SIZE - (unsigned long)((unsigned char *)*addr - scratch);
	if ((unsigned long)*len > room)
		*len = (long)room;
}

/*
 * Skip a call (SKIP) or rewrite its arguments so it cannot end the
 * fuzzer, block it, or reach outside it. Returns the call number to make.
 */
static long defuse(long nr, long a[6])
{
	switch (nr) {
	/* Would end it, or jump to garbage. */
	case 60: case 231: /* exit, exit_group */
	case 15: /* rt_sigreturn */
	case 56: case 57: case 58: case 435: /* clone, fork, vfork, clone3 */
	case 59: case 322: /* execve, execveat */
	case 317: /* seccomp */
	case 158: /* arch_prctl: its thread pointer */
	case 323: /* userfaultfd: faults on its own memory would wait */
	case 216: /* remap_file_pages */
	case 154: /* modify_ldt */
	case 160: /* setrlimit: CPU and file-size limits kill */
	case 37: case 38: case 223: /* alarm, setitimer, timer_settime: SIGALRM kills */
	case 153: /* vhangup: its console */
	case 436: /* close_range: its console */
		return SKIP;
	/* Would block for ever. */
	case 34: case 130: /* pause, rt_sigsuspend */
	case 35: case 230: /* nanosleep, clock_nanosleep */
	case 65: /* semop */
	case 425: case 426: case 427: /* io_uring */
	case 437: /* openat2 (flags in a struct) */
	case 85: /* creat: of a FIFO, it would wait for a reader */
		return SKIP;
	/* Reach outside the process or the machine. */
	case 62: case 200: case 234: case 129: case 297: case 424: /* signals to others */
	case 101: case 310: case 311: /* ptrace, process_vm_readv/writev */
	case 169: case 246: case 320: /* reboot, kexec */
	case 175: case 176: case 313: /* modules */
	case 165: case 166: case 155: case 161: /* mount, umount2, pivot_root, chroot */
	case 428: case 429: case 430: case 431: case 432: case 433: case 442: /* new mount API */
	case 164: case 227: case 159: case 305: /* clock setting */
	case 170: case 171: case 163: case 103: /* host names, acct, syslog */
	case 172: case 173: /* iopl, ioperm */
	case 298: case 321: /* perf_event_open, bpf */
	case 167: case 168: /* swapon, swapoff */
	case 141: case 251: /* setpriority, ioprio_set: whole users or groups */
	case 256: case 279: case 440: /* migrate_pages, move_pages, process_madvise */
	case 151: /* mlockall */
		return SKIP;

	/* Memory: only its scratch mapping, never its own pages. */
	case 9: /* mmap */
		a[3] &= ~(long)(MAP_FIXED | MAP_POPULATE | MAP_LOCKED);
		return nr;
	case 10: case 11: case 26: case 28: case 149: case 150: /* mprotect, munmap, msync, madvise, mlock, munlock */
		aim_at_scratch(&a[0], &a[1]);
		return nr;
	case 25: /* mremap: no fixed target */
		aim_at_scratch(&a[0], &a[1]);
		a[3] &= ~6L;
		return nr;
	case 30: /* shmat: never over a mapping */
		a[2] &= ~040000L;
		return nr;

	/* Whatever it creates does not block. */
	case 2: /* open */
		a[1] |= O_NONBLOCK;
		return nr;
	case 257: /* openat */
		a[2] |= O_NONBLOCK;
		return nr;
	case 22: /* pipe: pipe2 with O_NONBLOCK */
		a[1] = O_NONBLOCK;
		return 293;
	case 293: case 290: case 283: case 294: case 289: /* pipe2, eventfd2, timerfd_create, inotify_init1, signalfd4 */
		a[nr == 289 ? 3 : 1] |= O_NONBLOCK;
		return nr;
	case 284: /* eventfd: eventfd2 with EFD_NONBLOCK */
		a[1] = O_NONBLOCK;
		return 290;
	case 253: /* inotify_init */
		a[0] = O_NONBLOCK;
		return 294;
	case 282: /* signalfd: signalfd4 */
		a[3] = O_NONBLOCK;
		return 289;
	case 41: case 53: /* socket, socketpair */
		a[1] |= O_NONBLOCK;
		return nr;
	case 288: /* accept4 */
		a[0] = defuse_fd(a[0]);
		a[3] |= O_NONBLOCK;
		return nr;
	case 72: /* fcntl: no waiting locks, no clearing O_NONBLOCK */
		a[0] = defuse_fd(a[0]);
		if (a[1] == 7) a[1] = 6;     /* F_SETLKW -> F_SETLK */
		if (a[1] == 38) a[1] = 37;   /* F_OFD_SETLKW -> F_OFD_SETLK */
		if (a[1] == 4) a[2] |= O_NONBLOCK; /* F_SETFL */
		return nr;
	case 73: /* flock: never wait */
		a[0] = defuse_fd(a[0]);
		a[1] |= 4; /* LOCK_NB */
		return nr;
	case 16: /* ioctl: FIONBIO may clear non-blocking */
		a[0] = defuse_fd(a[0]);
		return a[1] == 0x5421 ? SKIP : nr;

	/* Timeouts are zero. */
	case 202: /* futex */
		a[3] = (long)zero_time;
		return nr;
	case 7: /* poll */
		a[2] = 0;
		return nr;
	case 23: /* select */
		a[4] = (long)zero_time;
		return nr;
	case 270: /* pselect6 */
		a[4] = (long)zero_time;
		return nr;
	case 271: /* ppoll */
		a[2] = (long)zero_time;
		return nr;
	case 232: case 281: /* epoll_wait, epoll_pwait */
		a[3] = 0;
		return nr;
	case 441: /* epoll_pwait2 */
		a[3] = (long)zero_time;
		return nr;
	case 128: /* rt_sigtimedwait */
		a[2] = (long)zero_time;
		return nr;
	case 220: /* semtimedop */
		a[3] = (long)zero_time;
		return nr;
	case 208: /* io_getevents */
		a[4] = (long)zero_time;
		return nr;
	case 333: /* io_pgetevents */
		a[4] = (long)zero_time;
		return nr;
	case 69: case 70: /* msgsnd, msgrcv: IPC_NOWAIT */
		a[nr == 69 ? 3 : 4] |= 04000;
		return nr;
	case 61: case 247: /* wait4, waitid: it has no children, but be sure */
		a[nr == 61 ? 2 : 3] |= 1; /* WNOHANG */
		return nr;

	/* Its own handlers and limits stay as they are. */
	case 13: /* rt_sigaction: look, do not touch */
		a[1] = 0;
		return nr;
	case 302: /* prlimit64: look, do not touch */
		a[0] = 0;
		a[2] = 0;
		return nr;
	case 157: /* prctl: no seccomp, no memory map changes */
		return (a[0] == 22 || a[0] == 35) ? SKIP : nr;
	case 142: case 144: case 203: case 314: /* scheduling: itself only */
		a[0] = 0;
		return nr;

	/* The console is not its to read, write, close or replace. */
	case 0: case 1: case 3: case 5: case 8: case 17: case 18: case 19: case 20:
	case 32: case 74: case 75: case 77: case 78: case 81: case 91: case 93:
	case 138: case 187: case 217: case 221: case 277: case 278: case 285:
	case 295: case 296: case 306: case 327: case 328: case 44: case 45:
	case 46: case 47: case 43:
		a[0] = defuse_fd(a[0]);
		return nr;
	case 33: case 292: case 40: case 276: /* dup2, dup3, sendfile, tee */
		a[0] = defuse_fd(a[0]);
		a[1] = defuse_fd(a[1]);
		return nr;
	case 275: case 326: /* splice, copy_file_range */
		a[0] = defuse_fd(a[0]);
		a[2] = defuse_fd(a[2]);
		return nr;
	default:
		return nr;
	}
}

static int parse_number(const char *s, u64 *value)
{
	u64 v = 0;
	if (!*s)
		return 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return 0;
		v = v * 10 + (u64)(*s - '0');
	}
	*value = v;
	return 1;
}

int main(int argc, char **argv)
{
	u64 seed = 1, count = 10000, numbers[2];
	int verbose = 0, dry = 1, given = 0;
	for (int i = 1; i < argc; i++) {
		if (argv[i][0] == '-' && argv[i][1] == 'v' && !argv[i][2])
			verbose = 1;
		else if (argv[i][0] == '-' && argv[i][1] == 'g' && !argv[i][2])
			dry = 0;
		else if (given < 2 && parse_number(argv[i], &numbers[given]))
			given++;
		else {
			out("usage: linux-fuzz [-g] [-v] [SEED [COUNT]]\n");
			return 2;
		}
	}
	if (given > 0)
		seed = numbers[0];
	if (given > 1)
		count = numbers[1];
	rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;

	out("linux-fuzz: seed ");
	out_num((long)seed);
	out(", ");
	out_num((long)count);
	out(dry ? " calls (a dry run: without -g it makes none)\n" : " calls\n");
	if (dry)
		verbose = 1;

	if (!dry) {
		/* fd 0 becomes /dev/null, so no read waits for the console. */
		long null_fd = raw_syscall(2 /* open */, (long)"/dev/null", 2 /* O_RDWR */, 0, 0, 0, 0);
		if (null_fd >= 0 && null_fd != 0) {
			raw_syscall(33 /* dup2 */, null_fd, 0, 0, 0, 0, 0);
			raw_syscall(3 /* close */, null_fd, 0, 0, 0, 0, 0);
		} else if (null_fd < 0) {
			raw_syscall(3 /* close */, 0, 0, 0, 0, 0, 0);
		}
		/* SIGPIPE ignored: struct k_sigaction { handler, flags, restorer, mask }. */
		const u64 ignore_sigpipe[4] = { 1 /* SIG_IGN */, 0, 0, 0 };
		if (raw_syscall(13 /* rt_sigaction */, 13 /* SIGPIPE */, (long)ignore_sigpipe, 0, 8, 0, 0) != 0)
			out("linux-fuzz: could not ignore SIGPIPE\n");
		raw_syscall(83 /* mkdir */, (long)"/tmp/fz", 0755, 0, 0, 0, 0);
		long mapped = raw_syscall(9 /* mmap */, 0, SCRATCH_SIZE, 3, 0x22, -1, 0);
		scratch = (mapped < 0 && mapped > -4096) ? buffers[0] : (unsigned char *)mapped;
	} else {
		scratch = buffers[0];
	}

	u64 made = 0, skipped = 0;
	for (u64 i = 0; i < count; i++) {
		for (int b = 0; b < 4; b++) {
			u64 r = next_random();
			buffers[b][r % BUF_SIZE] = (unsigned char)(r >> 32);
		}
		long nr = (long)(next_random() % 451);
		long a[6];
		for (int k = 0; k < 6; k++)
			a[k] = pick_argument();
		long call = defuse(nr, a);
		if (call == SKIP) {
			skipped++;
			continue;
		}
		/* The call is printed before it is made, so a kernel that dies
		 * in it has named it. */
		if (verbose) {
			out("#");
			out_num((long)i);
			out(" ");
			out_num(call);
			out("(");
			for (int k = 0; k < 6; k++) {
				out_hex((unsigned long)a[k]);
				out(k < 5 ? ", " : ")");
			}
		}
		long ret = dry ? 0 : raw_syscall(call, a[0], a[1], a[2], a[3], a[4], a[5]);
		made++;
		if (verbose) {
			if (!dry) {
				out(" = ");
				out_num(ret);
			}
			out("\n");
		}
	}
	out("linux-fuzz: seed ");
	out_num((long)seed);
	out(": ");
	out_num((long)made);
	out(" calls made, ");
	out_num((long)skipped);
	out(" skipped, done\n");
	return 0;
}
