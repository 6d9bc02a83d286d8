/*
 * Which fds belong to the emulator: decided from the fd itself.
 *
 * A file is ours when it lives on the FUSE mount at $LUOFS_ROOT, i.e. when its
 * st_dev is the st_dev of $LUOFS_ROOT/dev/liveupdate. No per-process table:
 * session fds travel over SCM_RIGHTS, survive exec, and are dup'ed behind our
 * back. The device's st_dev/st_ino are cached; the cache is refreshed when
 * LUOFS_ROOT changes and after a failed match, because every kexec replaces the
 * mount (and with it st_dev).
 *
 * The fd is examined with statx(AT_STATX_DONT_SYNC): st_dev and st_ino never
 * change, and session files have a zero attribute timeout, so a plain fstat()
 * would cost a FUSE round trip on every ioctl.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "shim.h"

struct root_cache {
	bool valid;
	char root[PATH_MAX];
	char root_real[PATH_MAX];
	dev_t dev;
	ino_t device_ino;
};

static struct root_cache cache;
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* A fork while another thread holds the lock would leave the child's copy locked
 * for ever: hold it across fork so both sides start with it released. */
static void prepare_fork(void) { pthread_mutex_lock(&cache_lock); }
static void after_fork(void) { pthread_mutex_unlock(&cache_lock); }
static void register_atfork(void) { pthread_atfork(prepare_fork, after_fork, after_fork); }

const char *luofs_root_env(void)
{
	const char *root = getenv(LUOFS_ROOT_ENV);

	return root && *root ? root : NULL;
}

bool luofs_shim_serves(bool ioctl)
{
	const char *supervised = getenv(LUOFS_SUPERVISED_ENV);

	if (!luofs_root_env() || !supervised || !*supervised)
		return luofs_root_env() != NULL;
	return ioctl && strcmp(supervised, "all") != 0;
}

/* st_dev and st_ino of fd (path "") or of the file at path, never asking FUSE. */
static bool identity(int fd, const char *path, dev_t *dev, ino_t *ino)
{
	struct statx stx;
	int flags = (*path ? 0 : AT_EMPTY_PATH) | AT_STATX_DONT_SYNC;

	if (statx(fd, path, flags, STATX_INO, &stx) != 0)
		return false;
	*dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
	*ino = stx.stx_ino;
	return true;
}

/* Under cache_lock: does the cache describe `root` with its mount `dev`? */
static bool cache_matches(const char *root, dev_t dev)
{
	return cache.valid && cache.dev == dev && strcmp(cache.root, root) == 0;
}

/* Re-reads the mount now at root into the cache; false if none is served there.
 * The realpath is recomputed only when the root or its mount changed, so a miss
 * on a foreign fd costs one stat() (a dcache hit: FUSE caches the device's
 * attributes). Runs outside the lock: stat() may wait for the daemon. */
static bool refresh(const char *root)
{
	char path[PATH_MAX], real[PATH_MAX];
	struct stat st;
	bool same;

	if (snprintf(path, sizeof(path), "%s%s", root, LUOFS_DEVICE_PATH) >= (int)sizeof(path))
		return false;
	if (stat(path, &st) != 0)
		return false;
	pthread_mutex_lock(&cache_lock);
	same = cache_matches(root, st.st_dev);
	pthread_mutex_unlock(&cache_lock);
	if (same)
		return true;
	if (!realpath(root, real))
		return false;
	pthread_mutex_lock(&cache_lock);
	snprintf(cache.root, sizeof(cache.root), "%s", root);
	memcpy(cache.root_real, real, sizeof(real));
	cache.dev = st.st_dev;
	cache.device_ino = st.st_ino;
	cache.valid = true;
	pthread_mutex_unlock(&cache_lock);
	return true;
}

static enum luofs_fd_kind classify(int fd, const char *path, struct luofs_fd *out)
{
	const char *root = luofs_root_env();
	dev_t dev;
	ino_t ino;
	int saved = errno;

	out->kind = LUOFS_FD_FOREIGN;
	if (!root || strlen(root) >= sizeof(cache.root) || !identity(fd, path, &dev, &ino))
		goto done;
	pthread_once(&atfork_once, register_atfork);
	/* A miss may mean a new mount (every kexec makes one): look once more. */
	for (int attempt = 0; attempt < 2; attempt++) {
		pthread_mutex_lock(&cache_lock);
		if (cache_matches(root, dev))
			out->kind = ino == cache.device_ino ? LUOFS_FD_DEVICE : LUOFS_FD_OTHER;
		pthread_mutex_unlock(&cache_lock);
		if (out->kind != LUOFS_FD_FOREIGN || attempt > 0 || !refresh(root))
			break;
	}
done:
	errno = saved;
	return out->kind;
}

enum luofs_fd_kind luofs_classify(int fd, struct luofs_fd *out)
{
	return classify(fd, "", out);
}

enum luofs_fd_kind luofs_classify_path(const char *path, struct luofs_fd *out)
{
	return classify(AT_FDCWD, path, out);
}

bool luofs_root_real(char *out, size_t size)
{
	bool valid;

	pthread_mutex_lock(&cache_lock);
	valid = cache.valid && strlen(cache.root_real) < size;
	if (valid)
		memcpy(out, cache.root_real, strlen(cache.root_real) + 1);
	pthread_mutex_unlock(&cache_lock);
	return valid;
}
