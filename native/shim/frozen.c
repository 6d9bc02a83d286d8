/*
 * The frozen-memfd rule (spec/uapi.md §15): while LUO holds a memfd preserved,
 * ftruncate to another size and any fallocate fail with EPERM. The emulator's
 * memfd handler marks such files with the xattr user.luo.frozen (and clears it
 * when the file is unpreserved or retrieved); these interposers refuse what the
 * kernel would. One fgetxattr per call, on these calls only.
 *
 * Not covered: writes past the end (every write would pay a syscall), truncate()
 * by path, and files parked in keeper processes (luofs marks only the files a
 * kernel holds itself).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "shim.h"

SHIM_SLOT(ftruncate);
SHIM_SLOT(ftruncate64);
SHIM_SLOT(fallocate);
SHIM_SLOT(fallocate64);
SHIM_SLOT(posix_fallocate);
SHIM_SLOT(posix_fallocate64);

bool luofs_frozen(int fd)
{
	int saved = errno;
	bool frozen = fgetxattr(fd, LUOFS_FROZEN_XATTR, NULL, 0) >= 0;

	errno = saved;
	return frozen;
}

/* ftruncate to the size the file has is allowed even while frozen. */
static bool refuse_truncate(int fd, off_t length)
{
	struct stat st;

	return luofs_frozen(fd) && !(fstat(fd, &st) == 0 && st.st_size == length);
}

SHIM_EXPORT int ftruncate(int fd, off_t length)
{
	if (refuse_truncate(fd, length)) {
		errno = EPERM;
		return -1;
	}
	return SHIM_REAL(ftruncate)(fd, length);
}

SHIM_EXPORT int ftruncate64(int fd, off_t length)
{
	if (refuse_truncate(fd, length)) {
		errno = EPERM;
		return -1;
	}
	return SHIM_REAL(ftruncate64)(fd, length);
}

SHIM_EXPORT int fallocate(int fd, int mode, off_t offset, off_t len)
{
	if (luofs_frozen(fd)) {
		errno = EPERM;
		return -1;
	}
	return SHIM_REAL(fallocate)(fd, mode, offset, len);
}

SHIM_EXPORT int fallocate64(int fd, int mode, off_t offset, off_t len)
{
	if (luofs_frozen(fd)) {
		errno = EPERM;
		return -1;
	}
	return SHIM_REAL(fallocate64)(fd, mode, offset, len);
}

/* posix_fallocate returns the error instead of setting errno. */
SHIM_EXPORT int posix_fallocate(int fd, off_t offset, off_t len)
{
	return luofs_frozen(fd) ? EPERM : SHIM_REAL(posix_fallocate)(fd, offset, len);
}

SHIM_EXPORT int posix_fallocate64(int fd, off_t offset, off_t len)
{
	return luofs_frozen(fd) ? EPERM : SHIM_REAL(posix_fallocate64)(fd, offset, len);
}
