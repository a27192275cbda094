/*
 * XMM isolation between the processes of one guest.
 *
 * Two processes, parent and child, each load all sixteen XMM registers
 * and MXCSR with values of their own, give the CPU away (sched_yield, and
 * the clock's preemption), and check that every register still holds
 * what they put there. A kernel that does not save and restore each
 * process's SSE state when it switches lets one see the other's values.
 * The loads, the yield and the stores are one asm block, so the compiler
 * cannot keep anything of its own in the registers in between.
 *
 *   xmm-isolation [ROUNDS]    (default 2000)
 *
 * It prints one line and exits 0 when nothing leaked, 1 otherwise.
 * Build: musl-gcc -static -O2 -o xmm-isolation xmm.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static const uint32_t default_mxcsr = 0x1f80;

/* Sets xmm0-15 and MXCSR from `in`, yields, and stores them to `out`. */
static void round_trip(const uint64_t in[32], uint32_t mxcsr_in, uint64_t out[32], uint32_t *mxcsr_out)
{
	__asm__ volatile(
		"ldmxcsr (%[m_in])\n"
		"movdqu 0x00(%[in]), %%xmm0\n"
		"movdqu 0x10(%[in]), %%xmm1\n"
		"movdqu 0x20(%[in]), %%xmm2\n"
		"movdqu 0x30(%[in]), %%xmm3\n"
		"movdqu 0x40(%[in]), %%xmm4\n"
		"movdqu 0x50(%[in]), %%xmm5\n"
		"movdqu 0x60(%[in]), %%xmm6\n"
		"movdqu 0x70(%[in]), %%xmm7\n"
		"movdqu 0x80(%[in]), %%xmm8\n"
		"movdqu 0x90(%[in]), %%xmm9\n"
		"movdqu 0xa0(%[in]), %%xmm10\n"
		"movdqu 0xb0(%[in]), %%xmm11\n"
		"movdqu 0xc0(%[in]), %%xmm12\n"
		"movdqu 0xd0(%[in]), %%xmm13\n"
		"movdqu 0xe0(%[in]), %%xmm14\n"
		"movdqu 0xf0(%[in]), %%xmm15\n"
		"mov $24, %%eax\n" /* sched_yield */
		"syscall\n"
		"movdqu %%xmm0, 0x00(%[out])\n"
		"movdqu %%xmm1, 0x10(%[out])\n"
		"movdqu %%xmm2, 0x20(%[out])\n"
		"movdqu %%xmm3, 0x30(%[out])\n"
		"movdqu %%xmm4, 0x40(%[out])\n"
		"movdqu %%xmm5, 0x50(%[out])\n"
		"movdqu %%xmm6, 0x60(%[out])\n"
		"movdqu %%xmm7, 0x70(%[out])\n"
		"movdqu %%xmm8, 0x80(%[out])\n"
		"movdqu %%xmm9, 0x90(%[out])\n"
		"movdqu %%xmm10, 0xa0(%[out])\n"
		"movdqu %%xmm11, 0xb0(%[out])\n"
		"movdqu %%xmm12, 0xc0(%[out])\n"
		"movdqu %%xmm13, 0xd0(%[out])\n"
		"movdqu %%xmm14, 0xe0(%[out])\n"
		"movdqu %%xmm15, 0xf0(%[out])\n"
		"stmxcsr (%[m_out])\n"
		"ldmxcsr (%[m_default])\n" /* back to the default for the C code */
		:
		: [in] "r"(in), [out] "r"(out), [m_in] "r"(&mxcsr_in), [m_out] "r"(mxcsr_out),
		  [m_default] "r"(&default_mxcsr)
		: "rax", "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
		  "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

/* Every round's values differ per process, per round and per register. */
static int check(const char *who, uint64_t tag, int rounds)
{
	for (int r = 0; r < rounds; r++) {
		uint64_t in[32], out[32];
		for (int k = 0; k < 32; k++)
			in[k] = tag * 0x9e3779b97f4a7c15ull ^ ((uint64_t)r << 16) ^ (uint64_t)k;
		/* Rounding control and the exception masks vary too. */
		uint32_t mxcsr_in = 0x1f80 | (uint32_t)(((tag + r) & 3) << 13), mxcsr_out = 0;
		round_trip(in, mxcsr_in, out, &mxcsr_out);
		for (int k = 0; k < 32; k++) {
			if (out[k] != in[k]) {
				printf("xmm: %s, round %d: xmm%d's %s half is %#llx, not %#llx\n", who, r, k / 2,
				       k % 2 ? "high" : "low", (unsigned long long)out[k], (unsigned long long)in[k]);
				return 1;
			}
		}
		if (mxcsr_out != mxcsr_in) {
			printf("xmm: %s, round %d: MXCSR is %#x, not %#x\n", who, r, mxcsr_out, mxcsr_in);
			return 1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 2000;
	fflush(stdout);
	pid_t child = fork();
	if (child < 0) {
		printf("xmm: fork failed\n");
		return 1;
	}
	if (child == 0)
		_exit(check("child", 2, rounds));
	int parent_failed = check("parent", 1, rounds);
	int status = 0;
	if (waitpid(child, &status, 0) != child) {
		printf("xmm: waitpid failed\n");
		return 1;
	}
	int child_failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
	if (parent_failed || child_failed) {
		printf("xmm: registers leaked between processes\n");
		return 1;
	}
	printf("xmm: %d rounds in each of 2 processes, every XMM register and MXCSR kept\n", rounds);
	return 0;
}
