/*
 * open() and friends: "/dev/liveupdate" means "$LUOFS_ROOT/dev/liveupdate".
 *
 * Only that exact path is redirected, and only while LUOFS_ROOT is set;
 * everything else reaches libc untouched. The O_CREAT/O_TMPFILE mode argument
 * is forwarded as given. The _2 variants are what _FORTIFY_SOURCE builds call.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "shim.h"

SHIM_SLOT(open);
SHIM_SLOT(open64);
SHIM_SLOT(openat);
SHIM_SLOT(openat64);
SHIM_SLOT(fopen);
SHIM_SLOT(fopen64);

int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);
SHIM_SLOT(__open_2);
SHIM_SLOT(__open64_2);
SHIM_SLOT(__openat_2);
SHIM_SLOT(__openat64_2);

const char *shim_redirect(const char *path, char *buf, size_t size)
{
	const char *root;

	path = shim_path(path);
	if (!path || path[0] != '/' || strcmp(path, LUOFS_DEVICE_PATH) != 0)
		return path;
	root = luofs_root_env();
	if (!root || snprintf(buf, size, "%s%s", root, LUOFS_DEVICE_PATH) >= (int)size)
		return path;
	return buf;
}

static int needs_mode(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

#define MODE_ARG(flags, last, mode)                   \
	do {                                          \
		va_list ap;                           \
		va_start(ap, last);                   \
		mode = needs_mode(flags) ? (mode_t)va_arg(ap, int) : 0; \
		va_end(ap);                           \
	} while (0)

SHIM_EXPORT int open(const char *path, int flags, ...)
{
	char buf[PATH_MAX];
	mode_t mode;

	MODE_ARG(flags, flags, mode);
	return SHIM_REAL(open)(shim_redirect(path, buf, sizeof(buf)), flags, mode);
}

SHIM_EXPORT int open64(const char *path, int flags, ...)
{
	char buf[PATH_MAX];
	mode_t mode;

	MODE_ARG(flags, flags, mode);
	return SHIM_REAL(open64)(shim_redirect(path, buf, sizeof(buf)), flags, mode);
}

SHIM_EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
	char buf[PATH_MAX];
	mode_t mode;

	MODE_ARG(flags, flags, mode);
	return SHIM_REAL(openat)(dirfd, shim_redirect(path, buf, sizeof(buf)), flags, mode);
}

SHIM_EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
	char buf[PATH_MAX];
	mode_t mode;

	MODE_ARG(flags, flags, mode);
	return SHIM_REAL(openat64)(dirfd, shim_redirect(path, buf, sizeof(buf)), flags, mode);
}

SHIM_EXPORT int __open_2(const char *path, int flags)
{
	char buf[PATH_MAX];

	return SHIM_REAL(__open_2)(shim_redirect(path, buf, sizeof(buf)), flags);
}

SHIM_EXPORT int __open64_2(const char *path, int flags)
{
	char buf[PATH_MAX];

	return SHIM_REAL(__open64_2)(shim_redirect(path, buf, sizeof(buf)), flags);
}

SHIM_EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	char buf[PATH_MAX];

	return SHIM_REAL(__openat_2)(dirfd, shim_redirect(path, buf, sizeof(buf)), flags);
}

SHIM_EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
	char buf[PATH_MAX];

	return SHIM_REAL(__openat64_2)(dirfd, shim_redirect(path, buf, sizeof(buf)), flags);
}

SHIM_EXPORT FILE *fopen(const char *path, const char *mode)
{
	char buf[PATH_MAX];

	return SHIM_REAL(fopen)(shim_redirect(path, buf, sizeof(buf)), mode);
}

SHIM_EXPORT FILE *fopen64(const char *path, const char *mode)
{
	char buf[PATH_MAX];

	return SHIM_REAL(fopen64)(shim_redirect(path, buf, sizeof(buf)), mode);
}
