/*
 * kexec_file_load(2) and kexec_load(2): loading the next kernel.
 *
 * glibc wraps neither, so programs call syscall(SYS_kexec_file_load, ...): the
 * shim interposes syscall() itself and forwards every other number untouched.
 * syscall(SYS_reboot, ...) goes to reboot() (reboot.c), so a raw call cannot
 * reach the host's reboot(2) either.
 *
 * A load runs `luofs kexec --load [--cmdline CMDLINE]`: the machine records the
 * next kernel's command line, which becomes its proc/cmdline at the next
 * kexec, as `kexec -l --command-line` does. The checks are the kernel's, in its
 * order: flags (EINVAL), the kernel and initrd fds (EBADF unless open for
 * reading, EINVAL unless a regular file), the command line (EFAULT if it
 * cannot be read, EINVAL if longer than COMMAND_LINE_SIZE or not ending in
 * NUL). KEXEC_FILE_UNLOAD (and kexec_load with no segments) unloads.
 *
 * Deviations: the kernel image is not parsed (any regular file loads; the
 * kernel would answer ENOEXEC for one that is not a bzImage/Image); crash
 * kernels (KEXEC_FILE_ON_CRASH, KEXEC_ON_CRASH) load and are never run;
 * kexec_load's command line lives in arch-specific segments, so it loads the
 * running kernel's command line again. Without LUOFS_ROOT every load fails
 * with EPERM: nothing is ever loaded into the host's kernel. The checks are in
 * kexec_rules.c, shared with the seccomp supervisor (for static programs).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/reboot.h>
#include <stdarg.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shim.h"

SHIM_SLOT(syscall);

static long fail(int err)
{
	errno = err;
	return -1;
}

/* 0 if fd is a regular file open for reading, else the kernel's errno. */
static int readable_file(void *ctx, int fd)
{
	struct stat st;
	int flags = fcntl(fd, F_GETFL);

	(void)ctx;
	if (flags < 0 || (flags & O_ACCMODE) == O_WRONLY || (flags & O_PATH))
		return EBADF;
	if (fstat(fd, &st) != 0)
		return EBADF;
	return S_ISREG(st.st_mode) ? 0 : EINVAL;
}

static long load(const char *const args[])
{
	const char *root = luofs_root_env();
	int err;

	if (!root)
		return fail(EPERM);
	if (!args[0])
		return 0; /* a crash kernel: loaded, never run */
	err = luofs_run_kexec_args(root, args, STDERR_FILENO);
	return err ? fail(err) : 0;
}

static long kexec_file_load(int kernel_fd, int initrd_fd, unsigned long cmdline_len,
			    const char *cmdline, unsigned long flags)
{
	char buf[LUOFS_COMMAND_LINE_SIZE];
	const char *args[4];
	int err = luofs_kexec_file_load_args(getpid(), readable_file, NULL, kernel_fd, initrd_fd,
					     cmdline_len, shim_path(cmdline), flags, buf, args);

	return err ? fail(err) : load(args);
}

static long kexec_load(unsigned long entry, unsigned long nr_segments, const void *segments,
		       unsigned long flags)
{
	const char *args[2];
	int err = luofs_kexec_load_args(nr_segments, flags, args);

	(void)entry;
	(void)segments;
	return err ? fail(err) : load(args);
}

static long raw_reboot(unsigned long magic1, unsigned long magic2, unsigned long cmd)
{
	if ((unsigned int)magic1 != LINUX_REBOOT_MAGIC1 ||
	    ((unsigned int)magic2 != LINUX_REBOOT_MAGIC2 &&
	     (unsigned int)magic2 != LINUX_REBOOT_MAGIC2A &&
	     (unsigned int)magic2 != LINUX_REBOOT_MAGIC2B &&
	     (unsigned int)magic2 != LINUX_REBOOT_MAGIC2C))
		return fail(EINVAL);
	return reboot((int)cmd);
}

SHIM_EXPORT long syscall(long number, ...)
{
	unsigned long a[6];
	va_list ap;

	va_start(ap, number);
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, unsigned long);
	va_end(ap);
	switch (number) {
	case SYS_kexec_file_load:
		return kexec_file_load((int)a[0], (int)a[1], a[2], (const char *)a[3], a[4]);
	case SYS_kexec_load:
		return kexec_load(a[0], a[1], (const void *)a[2], a[3]);
	case SYS_reboot:
		return raw_reboot(a[0], a[1], a[2]);
	}
	return SHIM_REAL(syscall)(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
