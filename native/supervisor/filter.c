/*
 * The filter: which system calls wait for the supervisor (SECCOMP_RET_USER_NOTIF).
 *
 * Narrow, so programs pay nothing on their common path: ioctls whose type byte
 * is 0xBA (terminal ioctls such as TCGETS pass untouched), reboot,
 * kexec_load/kexec_file_load, and readlink/readlinkat/fstatfs/statfs, which the
 * supervisor answers only for emulated fds and lets continue at once otherwise.
 * Every other call, and every call of another ABI (x32, i386), is allowed
 * without looking further. Apart from ioctl, the verdict depends only on the
 * syscall number, so the kernel's per-syscall action cache skips the filter
 * for all other calls.
 *
 * SECCOMP_FILTER_FLAG_SPEC_ALLOW: a filter otherwise turns on the speculative
 * store bypass mitigation for the task, which slows every program down; this
 * filter is not a security boundary. SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: once
 * we have taken a request, a signal (Go preempts its threads with SIGURG) waits
 * for our answer instead of interrupting the call, which the kernel would then
 * restart: a restarted CREATE_SESSION would find its own session (EEXIST). An
 * ioctl on the real device is not interrupted midway either.
 *
 * Unhappy paths: a process that already has a listener (supervised already) gets
 * EBUSY; without CAP_SYS_ADMIN the filter needs no_new_privs, set then.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "supervisor.h"

#if defined(__x86_64__)
#define FILTER_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define FILTER_ARCH AUDIT_ARCH_AARCH64
#else
#error "luofs-supervise: add this architecture's AUDIT_ARCH to filter.c"
#endif

#define LUO_IOCTL_TYPE 0xBAu
/* The low half of a 64-bit argument on a little-endian machine. */
#define ARG_LO(n) (offsetof(struct seccomp_data, args) + 8 * (n))

#define LOAD(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))
#define RET(action) BPF_STMT(BPF_RET | BPF_K, (action))
/* Jumps `jt` instructions ahead when A == k, else falls through. */
#define IF_EQ(k, jt) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (k), (jt), 0)

#ifndef __NR_readlink
#define __NR_readlink -1 /* arm64 has only readlinkat */
#endif

int supervise_install_filter(void)
{
	struct sock_filter code[] = {
		/* 0 */ LOAD(offsetof(struct seccomp_data, arch)),
		/* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, FILTER_ARCH, 1, 0),
		/* 2 */ RET(SECCOMP_RET_ALLOW),
		/* 3: x32 numbers carry bit 30, so they match none of these */
		LOAD(offsetof(struct seccomp_data, nr)),
		/* 4 */ IF_EQ(__NR_ioctl, 10),
		/* 5 */ IF_EQ(__NR_reboot, 12),
		/* 6 */ IF_EQ(__NR_kexec_load, 11),
		/* 7 */ IF_EQ(__NR_kexec_file_load, 10),
		/* 8 */ IF_EQ((unsigned)__NR_readlink, 9),
		/* 9 */ IF_EQ(__NR_readlinkat, 8),
		/* 10 */ IF_EQ(__NR_fstatfs, 7),
		/* 11 */ IF_EQ(__NR_statfs, 6),
		/* 12: the frozen-memfd rule */ IF_EQ(__NR_ftruncate, 5),
		/* 13 */ IF_EQ(__NR_fallocate, 4),
		/* 14 */ RET(SECCOMP_RET_ALLOW),
		/* 15: ioctl */ LOAD(ARG_LO(1)),
		/* 16 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xff00u),
		/* 17 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, LUO_IOCTL_TYPE << 8, 0, 1),
		/* 18: notify */ RET(SECCOMP_RET_USER_NOTIF),
		/* 19 */ RET(SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(code) / sizeof(code[0]), .filter = code };
	unsigned int flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_SPEC_ALLOW |
			     SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
	long fd;

	fd = syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
	if (fd < 0 && errno == EINVAL) {
		/* Before 5.19: a signal may then interrupt a request we already run. */
		flags &= ~(unsigned int)SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
		fd = syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
	}
	if (fd < 0 && errno == EACCES) {
		/* No CAP_SYS_ADMIN: the kernel then insists on no_new_privs. */
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
			return -errno;
		fd = syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
	}
	return fd < 0 ? -errno : (int)fd;
}
