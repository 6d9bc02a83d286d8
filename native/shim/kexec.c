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
 * with EPERM: nothing is ever loaded into the host's kernel. Under the seccomp
 * supervisor too the shim answers the loads itself, so the command line is
 * kept (the supervisor, for static programs, loads without one).
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

#define KEXEC_FILE_UNLOAD 0x1
#define KEXEC_FILE_ON_CRASH 0x2
#define KEXEC_FILE_NO_INITRAMFS 0x4
#define KEXEC_FILE_DEBUG 0x8
#define KEXEC_FILE_FLAGS \
	(KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS | KEXEC_FILE_DEBUG)

#define KEXEC_ON_CRASH 0x1
#define KEXEC_PRESERVE_CONTEXT 0x2
#define KEXEC_UPDATE_ELFCOREHDR 0x4
#define KEXEC_CRASH_HOTPLUG_SUPPORT 0x8
#define KEXEC_FLAGS \
	(KEXEC_ON_CRASH | KEXEC_PRESERVE_CONTEXT | KEXEC_UPDATE_ELFCOREHDR | \
	 KEXEC_CRASH_HOTPLUG_SUPPORT)
#define KEXEC_ARCH_MASK 0xffff0000UL
#define KEXEC_ARCH_DEFAULT 0UL
#if defined(__x86_64__)
#define KEXEC_ARCH (62UL << 16)
#elif defined(__aarch64__)
#define KEXEC_ARCH (183UL << 16)
#else
#define KEXEC_ARCH KEXEC_ARCH_DEFAULT
#endif
#define KEXEC_SEGMENT_MAX 16
#define COMMAND_LINE_SIZE 2048

SHIM_SLOT(syscall);

static long fail(int err)
{
	errno = err;
	return -1;
}

/* 0 if fd is a regular file open for reading, else the kernel's errno. */
static int readable_file(int fd)
{
	struct stat st;
	int flags = fcntl(fd, F_GETFL);

	if (flags < 0 || (flags & O_ACCMODE) == O_WRONLY || (flags & O_PATH))
		return EBADF;
	if (fstat(fd, &st) != 0)
		return EBADF;
	return S_ISREG(st.st_mode) ? 0 : EINVAL;
}

static long load(const char *const extra[])
{
	const char *root = luofs_root_env();
	int err;

	if (!root)
		return fail(EPERM);
	err = luofs_run_kexec_args(root, extra, STDERR_FILENO);
	return err ? fail(err) : 0;
}

static long kexec_file_load(int kernel_fd, int initrd_fd, unsigned long cmdline_len,
			    const char *cmdline, unsigned long flags)
{
	static const char *const unload[] = { "--unload", NULL };
	char buf[COMMAND_LINE_SIZE];
	const char *extra[] = { "--load", "--cmdline", buf, NULL };
	int err;

	if (flags & ~(unsigned long)KEXEC_FILE_FLAGS)
		return fail(EINVAL);
	if (flags & KEXEC_FILE_UNLOAD)
		return (flags & KEXEC_FILE_ON_CRASH) ? 0 : load(unload);
	err = readable_file(kernel_fd);
	if (!err && !(flags & KEXEC_FILE_NO_INITRAMFS))
		err = readable_file(initrd_fd);
	if (err)
		return fail(err);
	if (cmdline_len > sizeof(buf))
		return fail(EINVAL);
	if (luofs_peek(getpid(), buf, shim_path(cmdline), cmdline_len) != cmdline_len)
		return fail(EFAULT);
	if (cmdline_len == 0)
		buf[0] = '\0';
	else if (buf[cmdline_len - 1] != '\0')
		return fail(EINVAL);
	return (flags & KEXEC_FILE_ON_CRASH) ? 0 : load(extra);
}

static long kexec_load(unsigned long entry, unsigned long nr_segments, const void *segments,
		       unsigned long flags)
{
	static const char *const unload[] = { "--unload", NULL };
	static const char *const same_cmdline[] = { "--load", NULL };
	unsigned long arch = flags & KEXEC_ARCH_MASK;

	(void)entry;
	(void)segments;
	if ((flags & ~KEXEC_ARCH_MASK & ~(unsigned long)KEXEC_FLAGS) ||
	    (arch != KEXEC_ARCH && arch != KEXEC_ARCH_DEFAULT) || nr_segments > KEXEC_SEGMENT_MAX)
		return fail(EINVAL);
	if (flags & KEXEC_ON_CRASH)
		return 0;
	return load(nr_segments ? same_cmdline : unload);
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
