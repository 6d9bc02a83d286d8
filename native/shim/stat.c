/*
 * stat()/access() of exactly "/dev/liveupdate": programs look before they open
 * (`Path::new("/dev/liveupdate").exists()`, access(F_OK)), so the device must
 * be visible there too, and as the character device it is on a real system
 * (the emulator serves it as a regular file). Cheap: one string compare on the
 * fast path.
 *
 * Not covered: the __xstat family that binaries built against glibc < 2.33
 * call. Those exist only as compat symbols, which dlsym(RTLD_NEXT) cannot
 * find without an arch-specific version string; such programs still open the
 * device fine, only stat() of the path says ENOENT.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim.h"

SHIM_SLOT(stat);
SHIM_SLOT(stat64);
SHIM_SLOT(lstat);
SHIM_SLOT(lstat64);
SHIM_SLOT(fstatat);
SHIM_SLOT(fstatat64);
SHIM_SLOT(statx);
SHIM_SLOT(access);
SHIM_SLOT(faccessat);
SHIM_SLOT(euidaccess);
SHIM_SLOT(eaccess);

/* Runs `call` on the redirected path; a successful stat of the device reports
 * a character device, keeping the permission bits the emulator serves. */
#define STAT_VIA(call, buf, mode_field)                                           \
	do {                                                                      \
		char redirected[PATH_MAX];                                        \
		const char *p = shim_redirect(path, redirected, sizeof(redirected)); \
		int r_ = (call);                                                  \
		if (r_ == 0 && p == redirected)                                   \
			(buf)->mode_field = S_IFCHR | ((buf)->mode_field & 07777); \
		return r_;                                                        \
	} while (0)

SHIM_EXPORT int stat(const char *path, struct stat *buf)
{
	STAT_VIA(SHIM_REAL(stat)(p, buf), buf, st_mode);
}

SHIM_EXPORT int stat64(const char *path, struct stat64 *buf)
{
	STAT_VIA(SHIM_REAL(stat64)(p, buf), buf, st_mode);
}

SHIM_EXPORT int lstat(const char *path, struct stat *buf)
{
	STAT_VIA(SHIM_REAL(lstat)(p, buf), buf, st_mode);
}

SHIM_EXPORT int lstat64(const char *path, struct stat64 *buf)
{
	STAT_VIA(SHIM_REAL(lstat64)(p, buf), buf, st_mode);
}

SHIM_EXPORT int fstatat(int dirfd, const char *path, struct stat *buf, int flags)
{
	STAT_VIA(SHIM_REAL(fstatat)(dirfd, p, buf, flags), buf, st_mode);
}

SHIM_EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *buf, int flags)
{
	STAT_VIA(SHIM_REAL(fstatat64)(dirfd, p, buf, flags), buf, st_mode);
}

SHIM_EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask,
		      struct statx *buf)
{
	STAT_VIA(SHIM_REAL(statx)(dirfd, p, flags, mask, buf), buf, stx_mode);
}

SHIM_EXPORT SHIM_EXPORT int access(const char *path, int mode)
{
	char redirected[PATH_MAX];

	return SHIM_REAL(access)(shim_redirect(path, redirected, sizeof(redirected)), mode);
}

SHIM_EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
	char redirected[PATH_MAX];

	return SHIM_REAL(faccessat)(dirfd, shim_redirect(path, redirected, sizeof(redirected)),
				    mode, flags);
}

SHIM_EXPORT int euidaccess(const char *path, int mode)
{
	char redirected[PATH_MAX];

	return SHIM_REAL(euidaccess)(shim_redirect(path, redirected, sizeof(redirected)), mode);
}

SHIM_EXPORT int eaccess(const char *path, int mode)
{
	char redirected[PATH_MAX];

	return SHIM_REAL(eaccess)(shim_redirect(path, redirected, sizeof(redirected)), mode);
}
