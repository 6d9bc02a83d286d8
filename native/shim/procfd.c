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
 * readlinkat and the __*_chk variants, so those are covered too.
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

#define ANON_INODE_FS_MAGIC 0x09041934
#define TMPFS_MAGIC 0x01021994
#define SYSFS_MAGIC 0x62656572
#define DEBUGFS_MAGIC 0x64626720
#define PROC_SUPER_MAGIC 0x9fa0
#define STATFS_VALID 0x0020 /* the kernel's ST_VALID: f_flags is meaningful */
#define SESSION_LINK_PREFIX "anon_inode:[luo_session] "
#define SESSION_FILE_PREFIX LUOFS_REQUEST_DIR LUOFS_CREATE_PREFIX

SHIM_SLOT(readlink);
SHIM_SLOT(readlinkat);
SHIM_SLOT(fstatfs);
SHIM_SLOT(fstatfs64);
SHIM_SLOT(statfs);
SHIM_SLOT(statfs64);

void __chk_fail(void) __attribute__((noreturn));

/* Digits only, no sign, fits an int; else -1. */
static int parse_fd(const char *s)
{
	long v = 0;

	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
		if (v > INT32_MAX)
			return -1;
	}
	return (int)v;
}

/* N for "/proc/self/fd/N", "/proc/thread-self/fd/N" or "/proc/<our pid>/fd/N",
 * else -1. */
static int shim_proc_fd_number(const char *path)
{
	const char *p;
	char own[32];

	if (!path || strncmp(path, "/proc/", 6) != 0)
		return -1;
	p = path + 6;
	if (strncmp(p, "self/", 5) == 0) {
		p += 5;
	} else if (strncmp(p, "thread-self/", 12) == 0) {
		p += 12;
	} else {
		size_t n = (size_t)snprintf(own, sizeof(own), "%d/", (int)getpid());

		if (strncmp(p, own, n) != 0)
			return -1;
		p += n;
	}
	if (strncmp(p, "fd/", 3) != 0)
		return -1;
	return parse_fd(p + 3);
}

/* An emulated fd's place in the real tree: "/dev/liveupdate", "/sys/...", or
 * "" for a session fd. NULL for any other fd. `link` receives the real link. */
static const char *tree_path(int fd, struct luofs_fd *file, char *link, size_t size)
{
	char proc[64], root_real[PATH_MAX];
	size_t root_len;
	ssize_t n;

	if (!luofs_root_env() || luofs_classify(fd, file) == LUOFS_FD_FOREIGN ||
	    !luofs_root_real(root_real, sizeof(root_real)))
		return NULL;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = SHIM_REAL(readlink)(proc, link, size - 1);
	if (n < 0)
		return NULL;
	link[n] = '\0';
	root_len = strlen(root_real);
	if (strncmp(link, root_real, root_len) != 0)
		return NULL;
	if (strncmp(link + root_len, SESSION_FILE_PREFIX, strlen(SESSION_FILE_PREFIX)) == 0)
		return "";
	return link[root_len] == '/' ? link + root_len : NULL;
}

/* readlink(2) semantics for fd's link as the kernel would show it: truncated
 * silently, no NUL. -2 means "not ours: ask libc". */
static ssize_t fd_link(int fd, char *buf, size_t bufsiz)
{
	struct luofs_fd file;
	char link[PATH_MAX], session[128], name[64];
	const char *shown;
	size_t len;
	int saved = errno;

	if (fd < 0 || bufsiz == 0)
		return -2;
	shown = tree_path(fd, &file, link, sizeof(link));
	if (!shown)
		return -2;
	if (!*shown) {
		if (luofs_session_name(&file, fd, name) != 0) {
			errno = saved;
			return -2;
		}
		snprintf(session, sizeof(session), "%s%s", SESSION_LINK_PREFIX, name);
		shown = session;
	}
	len = strlen(shown);
	if (len > bufsiz)
		len = bufsiz;
	memcpy(buf, shown, len);
	return (ssize_t)len;
}

/* Is dirfd an open /proc/<us>/fd (or task/<tid>/fd) directory? */
static bool is_proc_fd_dir(int dirfd)
{
	char proc[64], link[PATH_MAX], own[64];
	ssize_t n;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", dirfd);
	n = SHIM_REAL(readlink)(proc, link, sizeof(link) - 1);
	if (n < 0)
		return false;
	link[n] = '\0';
	snprintf(own, sizeof(own), "/proc/%d/", (int)getpid());
	if (strncmp(link, own, strlen(own)) != 0)
		return false;
	n = (ssize_t)strlen(link);
	return n >= 3 && strcmp(link + n - 3, "/fd") == 0;
}

SHIM_EXPORT ssize_t readlink(const char *path, char *buf, size_t bufsiz)
{
	int fd = shim_proc_fd_number(shim_path(path));
	ssize_t len = fd >= 0 ? fd_link(fd, buf, bufsiz) : -2;

	return len != -2 ? len : SHIM_REAL(readlink)(path, buf, bufsiz);
}

SHIM_EXPORT ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t bufsiz)
{
	const char *p = shim_path(path);
	int fd = -1;
	ssize_t len = -2;

	if (p && p[0] == '/')
		fd = shim_proc_fd_number(p);
	else if (p && dirfd >= 0 && luofs_root_env() && parse_fd(p) >= 0 &&
		 is_proc_fd_dir(dirfd))
		fd = parse_fd(p);
	if (fd >= 0)
		len = fd_link(fd, buf, bufsiz);
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

/* The f_type the real tree would report for fd, or 0 to leave the result alone. */
static long emulated_fs_type(int fd)
{
	struct luofs_fd file;
	char link[PATH_MAX];
	const char *path;
	int saved = errno;

	path = tree_path(fd, &file, link, sizeof(link));
	errno = saved;
	if (!path)
		return 0;
	if (!*path)
		return ANON_INODE_FS_MAGIC;
	if (strncmp(path, "/dev/", 5) == 0)
		return TMPFS_MAGIC; /* devtmpfs */
	if (strncmp(path, "/sys/kernel/debug/", 18) == 0)
		return DEBUGFS_MAGIC;
	if (strncmp(path, "/sys/", 5) == 0)
		return SYSFS_MAGIC;
	if (strncmp(path, "/proc/", 6) == 0)
		return PROC_SUPER_MAGIC;
	return 0;
}

/* Fills what simple_statfs() reports for pseudo file systems. */
#define FAKE_STATFS(buf, type)                         \
	do {                                           \
		memset((buf), 0, sizeof(*(buf)));      \
		(buf)->f_type = (type);                \
		(buf)->f_bsize = 4096;                 \
		(buf)->f_frsize = 4096;                \
		(buf)->f_namelen = 255;                \
		(buf)->f_flags = STATFS_VALID;          \
	} while (0)

#define ADJUST(fd, buf)                                  \
	do {                                             \
		long type_ = emulated_fs_type(fd);       \
		if (type_ == ANON_INODE_FS_MAGIC)        \
			FAKE_STATFS(buf, type_);         \
		else if (type_)                          \
			(buf)->f_type = type_;           \
	} while (0)

SHIM_EXPORT int fstatfs(int fd, struct statfs *buf)
{
	int r = SHIM_REAL(fstatfs)(fd, buf);

	if (r == 0 && luofs_root_env())
		ADJUST(fd, buf);
	return r;
}

SHIM_EXPORT int fstatfs64(int fd, struct statfs64 *buf)
{
	int r = SHIM_REAL(fstatfs64)(fd, buf);

	if (r == 0 && luofs_root_env())
		ADJUST(fd, buf);
	return r;
}

SHIM_EXPORT int statfs(const char *path, struct statfs *buf)
{
	int r = SHIM_REAL(statfs)(path, buf);
	int fd;

	if (r == 0 && luofs_root_env() && (fd = shim_proc_fd_number(shim_path(path))) >= 0)
		ADJUST(fd, buf);
	return r;
}

SHIM_EXPORT int statfs64(const char *path, struct statfs64 *buf)
{
	int r = SHIM_REAL(statfs64)(path, buf);
	int fd;

	if (r == 0 && luofs_root_env() && (fd = shim_proc_fd_number(shim_path(path))) >= 0)
		ADJUST(fd, buf);
	return r;
}
