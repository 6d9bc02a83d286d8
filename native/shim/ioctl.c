/*
 * ioctl(): LUO requests on emulated fds go to the daemon, everything else to libc.
 *
 * The fast path is one shift and compare before the tail call into libc, so
 * programs that never touch /dev/liveupdate pay nothing measurable. Only
 * requests of the LUO type 0xBA look at the fd, and even those go to libc
 * unless the fd is a file of the emulator's mount.
 *
 * Defined with a fixed third argument instead of libc's `...`: ioctl(2) takes
 * at most one argument, and on the Linux ABIs we build for (x86-64, arm64,
 * riscv64) a variadic argument arrives in the same register as a named one.
 * Without va_start the fast path is a compare and a tail jump (with it, the
 * register spill alone cost ~5% of a pipe ioctl). <sys/ioctl.h> is therefore
 * not included here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/ioctl.h>

#include "shim.h"

#define LUO_IOCTL_TYPE 0xBA

SHIM_EXPORT int ioctl(int fd, unsigned long request, void *arg);
SHIM_SLOT(ioctl);

static __attribute__((noinline)) int luo_ioctl(int fd, unsigned long request, void *arg)
{
	struct luofs_caller self;
	struct luofs_fd file;
	int saved = errno;
	int err;

	if (!luofs_shim_serves(true) || luofs_classify(fd, &file) == LUOFS_FD_FOREIGN)
		return SHIM_REAL(ioctl)(fd, request, arg);
	luofs_self(&self);
	/* The kernel's ioctl takes an unsigned int cmd: upper bits are dropped. */
	err = luofs_transport_ioctl(&self, &file, fd, (uint32_t)request, arg);
	if (err) {
		errno = -err;
		return -1;
	}
	errno = saved;
	return 0;
}

SHIM_EXPORT int ioctl(int fd, unsigned long request, void *arg)
{
	if (__builtin_expect(_IOC_TYPE((unsigned int)request) != LUO_IOCTL_TYPE, 1))
		return SHIM_REAL(ioctl)(fd, request, arg);
	return luo_ioctl(fd, request, arg);
}
