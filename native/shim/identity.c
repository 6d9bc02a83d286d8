/*
 * What an emulated fd reads as: its /proc/<pid>/fd link and its file system type,
 * as on a real system (a session fd is "anon_inode:[luo_session] NAME" on
 * ANON_INODE_FS_MAGIC, the device "/dev/liveupdate" on devtmpfs, sysfs files
 * "/sys/..." on sysfs). Shared by the shim's readlink/fstatfs wrappers (procfd.c)
 * and the seccomp supervisor, which asks on its own copy of the caller's fd.
 *
 * Unhappy paths: any fd that is not a file of the mount at $LUOFS_ROOT, or whose
 * session name cannot be read, is "not ours" (-2 / 0), and the caller then gets
 * what the real system call says.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"

#define SESSION_LINK_PREFIX "anon_inode:[luo_session] "
#define SESSION_FILE_PREFIX LUOFS_REQUEST_DIR LUOFS_CREATE_PREFIX

SHIM_SLOT(readlink);

/* Digits only, no sign, fits an int; else -1. */
int luofs_parse_fd(const char *s)
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

int luofs_proc_fd_number(const char *path, pid_t pid)
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
		size_t n = (size_t)snprintf(own, sizeof(own), "%d/", (int)pid);

		if (strncmp(p, own, n) != 0)
			return -1;
		p += n;
	}
	if (strncmp(p, "fd/", 3) != 0)
		return -1;
	return luofs_parse_fd(p + 3);
}

bool luofs_proc_fd_dir(const char *link, pid_t pid)
{
	char own[32];
	size_t n = (size_t)snprintf(own, sizeof(own), "/proc/%d/", (int)pid);
	size_t len = strlen(link);

	return strncmp(link, own, n) == 0 && len >= 3 && strcmp(link + len - 3, "/fd") == 0;
}

/* A session file's link seen from outside the mount namespace (or chroot) it
 * was opened in: the kernel shows the path from that namespace's root, so only
 * its end is known — the request directory and one name. */
static bool foreign_session_link(const char *link)
{
	const char *p = link, *last = NULL;

	while ((p = strstr(p, SESSION_FILE_PREFIX)) != NULL)
		last = p++;
	return last && !strchr(last + strlen(SESSION_FILE_PREFIX), '/');
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
	if (strncmp(link, root_real, root_len) != 0) {
		/* Ours by st_dev, opened through another namespace's copy of the mount. */
		if (file->kind == LUOFS_FD_DEVICE)
			return LUOFS_DEVICE_PATH;
		return foreign_session_link(link) ? "" : NULL;
	}
	if (strncmp(link + root_len, SESSION_FILE_PREFIX, strlen(SESSION_FILE_PREFIX)) == 0)
		return "";
	return link[root_len] == '/' ? link + root_len : NULL;
}

/* readlink(2) semantics for fd's link as the kernel would show it: truncated
 * silently, no NUL. -2 means "not ours: ask libc". */
ssize_t luofs_fd_link(int fd, char *buf, size_t bufsiz)
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

/* The f_type the real tree would report for fd, or 0 to leave the result alone. */
long luofs_emulated_fs_type(int fd)
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
