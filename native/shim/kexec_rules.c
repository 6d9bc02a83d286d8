/*
 * kexec_file_load(2) and kexec_load(2) as the kernel checks them, for the shim
 * (a caller's own call) and the seccomp supervisor (a trapped call of another
 * process) alike: both then run `luofs kexec` with the arguments decided here.
 *
 * kexec_file_load: unknown flags EINVAL; UNLOAD unloads; the kernel (and the
 * initrd unless NO_INITRAMFS) must be regular files open for reading (EBADF,
 * EINVAL); the command line is at most COMMAND_LINE_SIZE bytes with its NUL
 * (EINVAL), readable (EFAULT). ON_CRASH loads succeed and do nothing: crash
 * kernels never run here. kexec_load: unknown flags, another architecture or
 * more than KEXEC_SEGMENT_MAX segments are EINVAL; its command line lives in
 * arch-specific segments, so it loads the running one again; no segments
 * unloads.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

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

static const char *const unload[] = { "--unload", NULL };
static const char *const same_cmdline[] = { "--load", NULL };
static const char *const nothing[] = { NULL };

int luofs_kexec_file_load_args(pid_t pid, int (*fd_errno)(void *ctx, int fd), void *ctx,
			       int kernel_fd, int initrd_fd, unsigned long cmdline_len,
			       const void *cmdline, unsigned long flags,
			       char buf[LUOFS_COMMAND_LINE_SIZE], const char *args[4])
{
	int err;

	if (flags & ~(unsigned long)KEXEC_FILE_FLAGS)
		return EINVAL;
	if (flags & KEXEC_FILE_UNLOAD) {
		memcpy(args, (flags & KEXEC_FILE_ON_CRASH) ? nothing : unload, 2 * sizeof(*args));
		return 0;
	}
	err = fd_errno(ctx, kernel_fd);
	if (!err && !(flags & KEXEC_FILE_NO_INITRAMFS))
		err = fd_errno(ctx, initrd_fd);
	if (err)
		return err;
	if (cmdline_len > LUOFS_COMMAND_LINE_SIZE)
		return EINVAL;
	if (luofs_peek(pid, buf, cmdline, cmdline_len) != cmdline_len)
		return EFAULT;
	if (cmdline_len == 0)
		buf[0] = '\0';
	else if (buf[cmdline_len - 1] != '\0')
		return EINVAL;
	args[0] = (flags & KEXEC_FILE_ON_CRASH) ? NULL : "--load";
	args[1] = "--cmdline";
	args[2] = buf;
	args[3] = NULL;
	return 0;
}

int luofs_kexec_load_args(unsigned long nr_segments, unsigned long flags, const char *args[2])
{
	unsigned long arch = flags & KEXEC_ARCH_MASK;

	if ((flags & ~KEXEC_ARCH_MASK & ~(unsigned long)KEXEC_FLAGS) ||
	    (arch != KEXEC_ARCH && arch != KEXEC_ARCH_DEFAULT) || nr_segments > KEXEC_SEGMENT_MAX)
		return EINVAL;
	memcpy(args, (flags & KEXEC_ON_CRASH) ? nothing : nr_segments ? same_cmdline : unload,
	       2 * sizeof(*args));
	return 0;
}
