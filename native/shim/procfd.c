/*
 * What /proc and statfs say about emulated files, as on a real system.
 *
 * Programs identify a LUO session fd by its /proc/self/fd link
 * ("anon_inode:[luo_session] NAME") and by fstatfs() reporting
 * ANON_INODE_FS_MAGIC (systemd checks both, spec/uapi.md §8). Without the shim
 * they would see a FUSE file under $LUOFS_ROOT. The other emulated files get
 * their path without the root prefix ("/dev/liveupdate", "/sys/...") and the
 * file-system type of the real tree (devtmpfs, sysfs, procfs).
 *
 * Programs built with 64-bit offsets or _FORTIFY_SOURCE call fstatfs64,
 * readlinkat and the __*_chk variants, so those are covered too. What an fd
 * reads as is decided in identity.c, which the seccomp supervisor shares.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "shim.h"

SHIM_SLOT(readlink);
SHIM_SLOT(readlinkat);
SHIM_SLOT(fstatfs);
SHIM_SLOT(fstatfs64);
SHIM_SLOT(statfs);
SHIM_SLOT(statfs64);

void __chk_fail(void) __attribute__((noreturn));

/* Is dirfd an open /proc/<us>/fd (or task/<tid>/fd) directory? */
static bool is_proc_fd_dir(int dirfd)
{
	char proc[64], link[PATH_MAX];
	ssize_t n;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", dirfd);
	n = SHIM_REAL(readlink)(proc, link, sizeof(link) - 1);
	if (n < 0)
		return false;
	link[n] = '\0';
	return luofs_proc_fd_dir(link, getpid());
}

SHIM_EXPORT ssize_t readlink(const char *path, char *buf, size_t bufsiz)
{
	int fd = luofs_shim_serves(false) ? luofs_proc_fd_number(shim_path(path), getpid()) : -1;
	ssize_t len = fd >= 0 ? luofs_fd_link(fd, buf, bufsiz) : -2;

	return len != -2 ? len : SHIM_REAL(readlink)(path, buf, bufsiz);
}

SHIM_EXPORT ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t bufsiz)
{
	const char *p = shim_path(path);
	int fd = -1;
	ssize_t len = -2;

	if (!luofs_shim_serves(false))
		fd = -1;
	else if (p && p[0] == '/')
		fd = luofs_proc_fd_number(p, getpid());
	else if (p && dirfd >= 0 && luofs_parse_fd(p) >= 0 && is_proc_fd_dir(dirfd))
		fd = luofs_parse_fd(p);
	if (fd >= 0)
		len = luofs_fd_link(fd, buf, bufsiz);
	return len != -2 ? len : SHIM_REAL(readlinkat)(dirfd, path, buf, bufsiz);
}

SHIM_EXPORT ssize_t __readlink_chk(const char *path, char *buf, size_t len, size_t buflen)
{
	if (len > buflen)
		__chk_fail();
	return readlink(path, buf, len);
}

SHIM_EXPORT ssize_t __readlinkat_chk(int dirfd, const char *path, char *buf, size_t len,
				     size_t buflen)
{
	if (len > buflen)
		__chk_fail();
	return readlinkat(dirfd, path, buf, len);
}

SHIM_EXPORT int fstatfs(int fd, struct statfs *buf)
{
	int r = SHIM_REAL(fstatfs)(fd, buf);

	if (r == 0 && luofs_shim_serves(false))
		ADJUST_STATFS(fd, buf);
	return r;
}

SHIM_EXPORT int fstatfs64(int fd, struct statfs64 *buf)
{
	int r = SHIM_REAL(fstatfs64)(fd, buf);

	if (r == 0 && luofs_shim_serves(false))
		ADJUST_STATFS(fd, buf);
	return r;
}

SHIM_EXPORT int statfs(const char *path, struct statfs *buf)
{
	int r = SHIM_REAL(statfs)(path, buf);
	int fd;

	if (r == 0 && luofs_shim_serves(false) &&
	    (fd = luofs_proc_fd_number(shim_path(path), getpid())) >= 0)
		ADJUST_STATFS(fd, buf);
	return r;
}

SHIM_EXPORT int statfs64(const char *path, struct statfs64 *buf)
{
	int r = SHIM_REAL(statfs64)(path, buf);
	int fd;

	if (r == 0 && luofs_shim_serves(false) &&
	    (fd = luofs_proc_fd_number(shim_path(path), getpid())) >= 0)
		ADJUST_STATFS(fd, buf);
	return r;
}
