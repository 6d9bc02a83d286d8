/*
 * errno_walk: every errno path of spec/uapi.md §4-§13 that needs no reboot,
 * driven through ioctl() exactly as a real program would drive the kernel.
 *
 * It knows nothing of luofs: run it on a kernel with LUO, or under the shim
 * (LD_PRELOAD=libluofs-shim.so LUOFS_ROOT=DIR). Needs root (/dev/liveupdate is
 * 0600) and must be the only user of /dev/liveupdate while it runs. Session
 * names carry the pid, so runs on one instance do not collide.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/liveupdate.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "check.h"
#include "names.h"

#define ANON_INODE_FS_MAGIC 0x09041934
#define TMPFS_MAGIC 0x01021994
#define SENTINEL_FD (-77)

static long page;
static int dev = -1;
static char prefix[24]; /* name_prefix points here */

/* ---- helpers -------------------------------------------------------------------- */


static void fill_session_arg(struct liveupdate_ioctl_create_session *arg, const char *name)
{
	memset(arg, 0, sizeof(*arg));
	arg->size = sizeof(*arg);
	arg->fd = SENTINEL_FD;
	memcpy(arg->name, name, strnlen(name, sizeof(arg->name)));
}

/* CREATE_SESSION; the session fd, or -1 with errno. */
static int create(const char *name)
{
	struct liveupdate_ioctl_create_session arg;

	fill_session_arg(&arg, name);
	if (ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &arg) < 0)
		return -1;
	return arg.fd;
}

static int retrieve(const char *name)
{
	struct liveupdate_ioctl_retrieve_session arg;

	memset(&arg, 0, sizeof(arg));
	arg.size = sizeof(arg);
	arg.fd = SENTINEL_FD;
	memcpy(arg.name, name, strnlen(name, sizeof(arg.name)));
	if (ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &arg) < 0)
		return -1;
	return arg.fd;
}

static int preserve(int session, int fd, uint64_t token)
{
	struct liveupdate_session_preserve_fd arg = { .size = sizeof(arg), .fd = fd, .token = token };

	return ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, &arg);
}

static int get_name(int session, char out[LIVEUPDATE_SESSION_NAME_LENGTH])
{
	struct liveupdate_session_get_name arg;

	memset(&arg, 0, sizeof(arg));
	arg.size = sizeof(arg);
	if (ioctl(session, LIVEUPDATE_SESSION_GET_NAME, &arg) < 0)
		return -1;
	memcpy(out, arg.name, sizeof(arg.name));
	return 0;
}

static int new_memfd(const char *tag)
{
	int fd = memfd_create(tag, MFD_CLOEXEC);

	if (fd < 0 || write(fd, "luofs", 5) != 5) {
		perror("memfd_create");
		exit(2);
	}
	return fd;
}

/*
 * Two adjacent pages: the first read-write, the second with `prot`. Returns
 * the boundary, so `boundary - n` is a struct whose first n bytes are normal
 * memory and whose rest lies in the guarded page.
 */
static char *guarded_boundary(int prot)
{
	char *p = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	if (prot != (PROT_READ | PROT_WRITE) && mprotect(p + page, page, prot) != 0) {
		perror("mprotect");
		exit(2);
	}
	return p + page;
}

static void *read_only_copy(const void *src, size_t len)
{
	char *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	memcpy(p, src, len);
	mprotect(p, page, PROT_READ);
	return p;
}

/* ---- §5: the device -------------------------------------------------------------- */

static volatile int runtime_flags = O_RDWR | O_CLOEXEC;
static volatile size_t runtime_ten = 10;

static void walk_device_open(void)
{
	struct stat st;
	struct statx stx;
	FILE *stream;
	char c;
	int rc;
	int second;

	/* Flags unknown at compile time: fortified builds call __open_2/__open64_2. */
	second = EXPECT(EBUSY, open("/dev/liveupdate", runtime_flags),
			"second open of /dev/liveupdate -> EBUSY");
	if (second >= 0)
		close(second);
	second = EXPECT(EBUSY, openat(AT_FDCWD, "/dev/liveupdate", O_RDWR | O_CLOEXEC),
			"openat(AT_FDCWD, /dev/liveupdate) while open -> EBUSY");
	if (second >= 0)
		close(second);
	errno = 0;
	stream = fopen("/dev/liveupdate", "r+e");
	check(!stream && errno == EBUSY, "fopen(/dev/liveupdate) while open -> EBUSY (%s)",
	      errno_name(errno));
	if (stream)
		fclose(stream);
	EXPECT(EINVAL, read(dev, &c, 1), "read on /dev/liveupdate -> EINVAL");
	/* Programs look before they open. */
	rc = stat("/dev/liveupdate", &st);
	check(rc == 0 && S_ISCHR(st.st_mode) && (st.st_mode & 07777) == 0600,
	      "stat(/dev/liveupdate): a character device, mode 0600 (mode %o)", st.st_mode);
	rc = statx(AT_FDCWD, "/dev/liveupdate", 0, STATX_TYPE | STATX_MODE, &stx);
	check(rc == 0 && S_ISCHR(stx.stx_mode), "statx(/dev/liveupdate): a character device");
	EXPECT(0, access("/dev/liveupdate", R_OK | W_OK), "access(/dev/liveupdate, R_OK|W_OK)");
	EXPECT(EINVAL, write(dev, "x", 1), "write on /dev/liveupdate -> EINVAL");
}

/* ---- §4: dispatch rules ------------------------------------------------------------ */

static void walk_dispatch_device(void)
{
	struct liveupdate_ioctl_create_session arg;

	fill_session_arg(&arg, name_of("dispatch"));
	EXPECT(EINVAL, ioctl(dev, _IO(0xBA, 0x02), &arg), "device: nr 0x02 -> EINVAL");
	EXPECT(EINVAL, ioctl(dev, _IO(0xBA, 0x02), NULL),
	       "device: nr 0x02 with NULL arg -> EINVAL (before memory is touched)");
	EXPECT(EINVAL, ioctl(dev, LIVEUPDATE_SESSION_GET_NAME, &arg),
	       "device: session ioctl GET_NAME -> EINVAL");
	EXPECT(EINVAL, ioctl(dev, LIVEUPDATE_SESSION_PRESERVE_FD, &arg),
	       "device: session ioctl PRESERVE_FD -> EINVAL");
	EXPECT(EINVAL, ioctl(dev, _IO(0xBA, 0xff), &arg), "device: nr 0xff -> EINVAL");
	EXPECT(ENOTTY,
	       ioctl(dev, _IOWR(0xBA, 0x00, struct liveupdate_ioctl_create_session), &arg),
	       "device: _IOWR encoding of CREATE_SESSION -> ENOTTY");
	EXPECT(ENOTTY, ioctl(dev, _IOR(0xBA, 0x01, struct liveupdate_ioctl_retrieve_session), &arg),
	       "device: _IOR encoding of RETRIEVE_SESSION -> ENOTTY");
	EXPECT(EFAULT, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, NULL),
	       "CREATE_SESSION NULL arg -> EFAULT");
	EXPECT(EFAULT, ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, NULL),
	       "RETRIEVE_SESSION NULL arg -> EFAULT");
	EXPECT(EFAULT, ioctl(dev, _IOWR(0xBA, 0x00, struct liveupdate_ioctl_create_session), NULL),
	       "_IOWR encoding with NULL arg -> EFAULT (size is read before the encoding check)");
	EXPECT(EFAULT, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, guarded_boundary(PROT_NONE)),
	       "CREATE_SESSION arg in an unmapped page -> EFAULT");
}

static void walk_sizes(void)
{
	struct liveupdate_ioctl_create_session arg;
	char *edge;
	uint32_t sizes[] = { 0, 4, 8, 71 };
	int fd;

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		fill_session_arg(&arg, name_of("small"));
		arg.size = sizes[i];
		EXPECT(EINVAL, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &arg),
		       "CREATE_SESSION size %u (< 72) -> EINVAL", sizes[i]);
	}

	/* A struct cut short by an unmapped page: EFAULT, unless `size` is
	 * already too small (the size check comes first). */
	edge = guarded_boundary(PROT_NONE);
	fill_session_arg(&arg, name_of("cut"));
	memcpy(edge - 40, &arg, 40);
	EXPECT(EFAULT, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, edge - 40),
	       "CREATE_SESSION size 72 with only 40 readable bytes -> EFAULT");
	((struct liveupdate_ioctl_create_session *)(edge - 40))->size = 71;
	EXPECT(EINVAL, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, edge - 40),
	       "CREATE_SESSION size 71 with only 40 readable bytes -> EINVAL (size first)");
	memcpy(edge - 2, &arg, 2);
	EXPECT(EFAULT, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, edge - 2),
	       "CREATE_SESSION with `size` itself straddling an unmapped page -> EFAULT");

	/* Larger structs: bytes past the kernel struct must be zero. */
	{
		unsigned char big[200];

		fill_session_arg(&arg, name_of("tail-nonzero"));
		memset(big, 0, sizeof(big));
		memcpy(big, &arg, sizeof(arg));
		*(uint32_t *)big = 80;
		big[75] = 1;
		EXPECT(E2BIG, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, big),
		       "CREATE_SESSION size 80, byte 75 nonzero -> E2BIG");
		big[75] = 0;
		*(uint32_t *)big = sizeof(big);
		big[sizeof(big) - 1] = 7;
		EXPECT(E2BIG, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, big),
		       "CREATE_SESSION size 200, last byte nonzero -> E2BIG");
		big[sizeof(big) - 1] = 0;
		fd = EXPECT(0, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, big),
			    "CREATE_SESSION size 200 with a zero tail -> accepted");
		if (fd == 0) {
			struct liveupdate_ioctl_create_session *out = (void *)big;
			bool tail_zero = true;

			for (size_t i = sizeof(arg); i < sizeof(big); i++)
				tail_zero &= big[i] == 0;
			check(out->fd >= 0 && out->size == sizeof(big) && tail_zero &&
				      !strcmp((char *)out->name, name_of("tail-nonzero")),
			      "copy-back of a 200-byte struct: fd filled, size and name echoed, "
			      "tail untouched");
			if (out->fd >= 0)
				close(out->fd);
		}
	}
	{
		/* A 16 KiB struct: the tail lies far past anything a request
		 * carries, and must still be checked. */
		size_t len = 4 * page;
		unsigned char *huge = calloc(1, len);

		fill_session_arg(&arg, name_of("huge"));
		memcpy(huge, &arg, sizeof(arg));
		*(uint32_t *)huge = (uint32_t)len;
		huge[len - 3] = 0xff;
		EXPECT(E2BIG, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, huge),
		       "CREATE_SESSION size %zu, a nonzero byte near the end -> E2BIG", len);
		free(huge);
	}
	{
		/* Zero tail running into an unmapped page: EFAULT; a nonzero
		 * byte before the hole: E2BIG (check_zeroed_user stops there). */
		char *hole = guarded_boundary(PROT_NONE);
		unsigned char *start = (unsigned char *)hole - page;

		fill_session_arg(&arg, name_of("tail-fault"));
		memset(start, 0, page);
		memcpy(start, &arg, sizeof(arg));
		*(uint32_t *)start = (uint32_t)(2 * page);
		EXPECT(EFAULT, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, start),
		       "CREATE_SESSION zero tail running into an unmapped page -> EFAULT");
		start[page - 10] = 1;
		EXPECT(E2BIG, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, start),
		       "CREATE_SESSION nonzero tail byte before an unmapped page -> E2BIG");
	}
}

/* ---- copy-back (§4 rule 7) ---------------------------------------------------------- */

static void walk_copy_back(void)
{
	struct liveupdate_ioctl_create_session arg, *ro;
	char *edge;
	int fd;

	/* min(size, struct size): bytes 72..79 sit in a read-only page, so a
	 * copy-back of more than 72 bytes would fault. */
	edge = guarded_boundary(PROT_READ);
	fill_session_arg(&arg, name_of("copy-back-80"));
	arg.size = 80;
	memcpy(edge - sizeof(arg), &arg, sizeof(arg));
	fd = EXPECT(0, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, edge - sizeof(arg)),
		    "CREATE_SESSION size 80 copies back only 72 bytes (bytes 72..79 read-only)");
	if (fd == 0) {
		struct liveupdate_ioctl_create_session *out = (void *)(edge - sizeof(arg));

		check(out->fd >= 0, "copy-back filled fd (%d)", out->fd);
		close(out->fd);
	}

	/* Failure writes nothing back. */
	fd = create(name_of("dup"));
	fill_session_arg(&arg, name_of("dup"));
	EXPECT(EEXIST, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &arg),
	       "CREATE_SESSION duplicate outgoing name -> EEXIST");
	check(arg.fd == SENTINEL_FD, "a failed ioctl leaves the struct untouched (fd %d)", arg.fd);

	/* A copy-back that faults: EFAULT, and no session fd is installed. */
	fill_session_arg(&arg, name_of("ro"));
	ro = read_only_copy(&arg, sizeof(arg));
	EXPECT(EFAULT, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, ro),
	       "CREATE_SESSION with a read-only struct -> EFAULT");
	{
		int again = EXPECT(0, create(name_of("ro")),
				   "...and the session was not kept: its name is free");

		if (again >= 0)
			close(again);
	}
	if (fd >= 0) {
		struct liveupdate_session_get_name gn;

		memset(&gn, 0, sizeof(gn));
		gn.size = sizeof(gn);
		EXPECT(EFAULT, ioctl(fd, LIVEUPDATE_SESSION_GET_NAME, read_only_copy(&gn, sizeof(gn))),
		       "GET_NAME with a read-only struct -> EFAULT");
		close(fd);
	}
}

/* ---- §6/§7: names ------------------------------------------------------------------- */

static void walk_names(void)
{
	struct liveupdate_ioctl_create_session arg;
	char name[LIVEUPDATE_SESSION_NAME_LENGTH], got[LIVEUPDATE_SESSION_NAME_LENGTH];
	int fd, fd2;

	fill_session_arg(&arg, "");
	EXPECT(EINVAL, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &arg),
	       "CREATE_SESSION empty name -> EINVAL");
	fill_session_arg(&arg, "");
	memset(arg.name, 'x', sizeof(arg.name));
	EXPECT(EINVAL, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &arg),
	       "CREATE_SESSION 64-byte name without NUL -> EINVAL");

	snprintf(name, sizeof(name), "%s-", prefix);
	memset(name + strlen(name), 'n', sizeof(name) - 1 - strlen(name));
	name[sizeof(name) - 1] = '\0';
	fd = EXPECT(0, create(name), "CREATE_SESSION 63-character name -> accepted");
	if (fd >= 0) {
		check(get_name(fd, got) == 0 && !strcmp(got, name),
		      "GET_NAME returns the 63-character name");
		close(fd);
	}

	fill_session_arg(&arg, name_of("junk"));
	strcpy((char *)arg.name + strlen(name_of("junk")) + 1, "junk after NUL");
	fd = EXPECT(0, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &arg) == 0 ? arg.fd : -1,
		    "CREATE_SESSION with junk after the NUL -> accepted");
	if (fd >= 0) {
		check(get_name(fd, got) == 0 && !strcmp(got, name_of("junk")),
		      "junk after the NUL is not part of the name");
		fd2 = EXPECT(EEXIST, create(name_of("junk")),
			     "the same name without the junk -> EEXIST");
		if (fd2 >= 0)
			close(fd2);
		close(fd);
	}

	EXPECT(ENOENT, retrieve(name_of("never-existed")),
	       "RETRIEVE_SESSION unknown name -> ENOENT");
	fd = create(name_of("outgoing"));
	EXPECT(ENOENT, retrieve(name_of("outgoing")),
	       "RETRIEVE_SESSION of a session created in this boot -> ENOENT");
	EXPECT(ENOENT, retrieve(""), "RETRIEVE_SESSION empty name -> ENOENT (no name rules)");
	memset(arg.name, 'x', sizeof(arg.name));
	arg.size = sizeof(arg);
	EXPECT(ENOENT, ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &arg),
	       "RETRIEVE_SESSION 64-byte name without NUL -> ENOENT");
	if (fd >= 0)
		close(fd);

	fd = create(name_of("reuse"));
	close(fd);
	fd = EXPECT(0, create(name_of("reuse")), "a closed session's name can be created again");
	if (fd >= 0)
		close(fd);
}

/* ---- §8/§12: the session fd ------------------------------------------------------- */

static void walk_session_fd(void)
{
	char link[256], want[128], path[64], c;
	struct liveupdate_session_get_name gn;
	struct statfs sfs;
	const char *name = name_of("fd");
	int fd = create(name), dirfd, rc;
	ssize_t n;

	if (!check(fd >= 0, "CREATE_SESSION %s", name))
		return;
	check(fcntl(fd, F_GETFD) == FD_CLOEXEC, "session fd has FD_CLOEXEC");
	check((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDWR, "session fd is O_RDWR");
	EXPECT(EINVAL, read(fd, &c, 1), "read on a session fd -> EINVAL");
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	EXPECT(ENXIO, open(path, O_RDWR | O_CLOEXEC),
	       "reopening a session through /proc/self/fd -> ENXIO (an anon inode)");
	EXPECT(EINVAL, write(fd, "x", 1), "write on a session fd -> EINVAL");

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	snprintf(want, sizeof(want), "anon_inode:[luo_session] %s", name);
	n = readlink(path, link, sizeof(link));
	check(n == (ssize_t)strlen(want) && !memcmp(link, want, (size_t)n),
	      "readlink %s = \"%s\" (got \"%.*s\")", path, want, n > 0 ? (int)n : 0, link);
	n = readlinkat(AT_FDCWD, path, link, sizeof(link));
	check(n == (ssize_t)strlen(want) && !memcmp(link, want, (size_t)n),
	      "readlinkat(AT_FDCWD, %s) agrees", path);
	/* A length unknown at compile time: fortified builds call __readlink_chk. */
	n = readlink(path, link, runtime_ten);
	check(n == 10 && !memcmp(link, want, 10), "readlink with a 10-byte buffer truncates to 10");
	dirfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	snprintf(path, sizeof(path), "%d", fd);
	n = readlinkat(dirfd, path, link, sizeof(link));
	check(n == (ssize_t)strlen(want) && !memcmp(link, want, (size_t)n),
	      "readlinkat(/proc/self/fd dirfd, \"%d\") agrees", fd);
	close(dirfd);

	snprintf(path, sizeof(path), "/proc/self/fd/%d", dev);
	n = readlink(path, link, sizeof(link));
	check(n == 15 && !memcmp(link, "/dev/liveupdate", 15), "readlink of the device fd = /dev/liveupdate");

	/* Each call before its check: argument evaluation order is unspecified. */
	rc = fstatfs(fd, &sfs);
	check(rc == 0 && sfs.f_type == ANON_INODE_FS_MAGIC,
	      "fstatfs(session fd).f_type = ANON_INODE_FS_MAGIC (got %#lx)", (long)sfs.f_type);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	rc = statfs(path, &sfs);
	check(rc == 0 && sfs.f_type == ANON_INODE_FS_MAGIC,
	      "statfs(%s).f_type = ANON_INODE_FS_MAGIC (got %#lx)", path, (long)sfs.f_type);
	rc = fstatfs(dev, &sfs);
	check(rc == 0 && sfs.f_type == TMPFS_MAGIC,
	      "fstatfs(device fd).f_type = TMPFS_MAGIC (devtmpfs; got %#lx)", (long)sfs.f_type);

	/* Dispatch on a session fd. */
	memset(&gn, 0, sizeof(gn));
	gn.size = sizeof(gn);
	EXPECT(EINVAL, ioctl(fd, LIVEUPDATE_IOCTL_CREATE_SESSION, &gn),
	       "session: device ioctl CREATE_SESSION -> EINVAL");
	EXPECT(EINVAL, ioctl(fd, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &gn),
	       "session: device ioctl RETRIEVE_SESSION -> EINVAL");
	EXPECT(EINVAL, ioctl(fd, _IO(0xBA, 0x3f), &gn), "session: nr 0x3f -> EINVAL");
	EXPECT(EINVAL, ioctl(fd, _IO(0xBA, 0x44), &gn), "session: nr 0x44 -> EINVAL");
	EXPECT(EINVAL, ioctl(fd, _IO(0xBA, 0x44), NULL), "session: nr 0x44, NULL arg -> EINVAL");
	EXPECT(ENOTTY, ioctl(fd, _IOWR(0xBA, 0x43, struct liveupdate_session_get_name), &gn),
	       "session: _IOWR encoding of GET_NAME -> ENOTTY");
	EXPECT(EFAULT, ioctl(fd, LIVEUPDATE_SESSION_GET_NAME, NULL), "GET_NAME NULL arg -> EFAULT");
	gn.size = 71;
	EXPECT(EINVAL, ioctl(fd, LIVEUPDATE_SESSION_GET_NAME, &gn), "GET_NAME size 71 -> EINVAL");
	gn.size = sizeof(gn);
	gn.reserved = 1;
	EXPECT(EINVAL, ioctl(fd, LIVEUPDATE_SESSION_GET_NAME, &gn), "GET_NAME reserved != 0 -> EINVAL");
	gn.reserved = 0;
	memset(gn.name, 0xAA, sizeof(gn.name));
	if (EXPECT(0, ioctl(fd, LIVEUPDATE_SESSION_GET_NAME, &gn), "GET_NAME on an outgoing session") == 0) {
		size_t len = strlen(name);
		bool echoed = true;

		for (size_t i = len + 1; i < sizeof(gn.name); i++)
			echoed &= gn.name[i] == 0xAA;
		check(!memcmp(gn.name, name, len + 1) && echoed,
		      "GET_NAME writes name + NUL and echoes the caller's bytes after it");
	}

	/* Direction rules (G2): RETRIEVE_FD and FINISH only on retrieved sessions. */
	{
		struct liveupdate_session_retrieve_fd rf = { .size = sizeof(rf), .fd = SENTINEL_FD, .token = 1 };
		struct liveupdate_session_finish fin = { .size = sizeof(fin) };

		EXPECT(EINVAL, ioctl(fd, LIVEUPDATE_SESSION_RETRIEVE_FD, &rf),
		       "RETRIEVE_FD on an outgoing session -> EINVAL");
		EXPECT(EINVAL, ioctl(fd, LIVEUPDATE_SESSION_FINISH, &fin),
		       "FINISH on an outgoing session -> EINVAL");
		EXPECT(EFAULT, ioctl(fd, LIVEUPDATE_SESSION_FINISH, NULL),
		       "FINISH NULL arg -> EFAULT (before the direction check)");
	}
	close(fd);
}

/* ---- §9: PRESERVE_FD ----------------------------------------------------------------- */

static void walk_preserve(void)
{
	int s1 = create(name_of("pres1")), s2 = create(name_of("pres2"));
	int mfd, reopened, other, pipefd[2], sv[2], fd;
	char path[64];

	if (!check(s1 >= 0 && s2 >= 0, "two sessions for PRESERVE_FD"))
		return;
	mfd = new_memfd("walk");
	{
		struct liveupdate_session_preserve_fd arg = { .size = sizeof(arg), .fd = mfd, .token = 1 };

		EXPECT(0, ioctl(s1, LIVEUPDATE_SESSION_PRESERVE_FD, &arg), "PRESERVE_FD memfd, token 1");
		check(arg.size == sizeof(arg) && arg.fd == mfd && arg.token == 1,
		      "PRESERVE_FD copy-back echoes the struct");
	}
	EXPECT(EEXIST, preserve(s1, -1, 1), "PRESERVE_FD used token with a bad fd -> EEXIST");
	EXPECT(EEXIST, preserve(s1, new_memfd("walk-b"), 1), "PRESERVE_FD used token -> EEXIST");
	EXPECT(EBADF, preserve(s1, -1, 2), "PRESERVE_FD fd -1 -> EBADF");
	EXPECT(EBADF, preserve(s1, 9999, 2), "PRESERVE_FD closed fd -> EBADF");
	fd = open("/dev/null", O_PATH | O_CLOEXEC);
	EXPECT(EBADF, preserve(s1, fd, 2), "PRESERVE_FD O_PATH fd -> EBADF");
	close(fd);

	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	EXPECT(ENOENT, preserve(s1, fd, 2), "PRESERVE_FD /dev/null -> ENOENT");
	close(fd);
	if (pipe2(pipefd, O_CLOEXEC) == 0) {
		EXPECT(ENOENT, preserve(s1, pipefd[0], 2), "PRESERVE_FD pipe -> ENOENT");
		close(pipefd[0]);
		close(pipefd[1]);
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
		EXPECT(ENOENT, preserve(s1, sv[0], 2), "PRESERVE_FD socket -> ENOENT");
		close(sv[0]);
		close(sv[1]);
	}
	{
		char tmpl[] = "/tmp/luofs-walk-XXXXXX";

		fd = mkostemp(tmpl, O_CLOEXEC);
		if (fd >= 0) {
			EXPECT(ENOENT, preserve(s1, fd, 2), "PRESERVE_FD linked regular file -> ENOENT");
			unlink(tmpl);
			close(fd);
		}
		fd = open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		if (fd >= 0) {
			EXPECT(0, preserve(s1, fd, 3), "PRESERVE_FD O_TMPFILE on /dev/shm (unlinked shmem) -> accepted");
			close(fd);
		} else {
			skip("O_TMPFILE on /dev/shm unsupported here");
		}
	}
	fd = memfd_create("walk-huge", MFD_CLOEXEC | MFD_HUGETLB);
	if (fd >= 0) {
		EXPECT(ENOENT, preserve(s1, fd, 2), "PRESERVE_FD hugetlb memfd -> ENOENT");
		close(fd);
	} else {
		skip("MFD_HUGETLB unavailable here (no hugetlbfs)");
	}
	EXPECT(ENOENT, preserve(s1, s2, 2), "PRESERVE_FD a session fd -> ENOENT");
	EXPECT(ENOENT, preserve(s1, dev, 2), "PRESERVE_FD the device fd -> ENOENT");

	/* One memfd (one inode) is preserved once, whatever fd names it. */
	EXPECT(EBUSY, preserve(s1, mfd, 4), "PRESERVE_FD same memfd, new token -> EBUSY");
	fd = dup(mfd);
	EXPECT(EBUSY, preserve(s1, fd, 4), "PRESERVE_FD a dup of it -> EBUSY");
	close(fd);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", mfd);
	reopened = open(path, O_RDWR | O_CLOEXEC);
	EXPECT(EBUSY, preserve(s1, reopened, 4), "PRESERVE_FD a /proc/self/fd reopen of it -> EBUSY");
	EXPECT(EBUSY, preserve(s2, mfd, 4), "PRESERVE_FD it into another session -> EBUSY");
	/* LUO keeps its own reference: closing ours changes nothing. */
	close(mfd);
	EXPECT(EBUSY, preserve(s2, reopened, 4),
	       "after closing the preserved fd, the memfd is still preserved -> EBUSY");

	other = new_memfd("walk-0");
	EXPECT(0, preserve(s1, other, 0), "PRESERVE_FD token 0 -> accepted");
	close(other);
	other = new_memfd("walk-1");
	EXPECT(0, preserve(s2, other, 1), "the same token in another session -> accepted");
	close(other);

	{
		struct liveupdate_session_preserve_fd arg = { .size = sizeof(arg), .token = 5 };

		arg.fd = new_memfd("walk-ro");
		EXPECT(EFAULT, ioctl(s2, LIVEUPDATE_SESSION_PRESERVE_FD, read_only_copy(&arg, sizeof(arg))),
		       "PRESERVE_FD with a read-only struct -> EFAULT");
		EXPECT(EBUSY, preserve(s2, arg.fd, 6), "...but the file stays preserved -> EBUSY");
		close(arg.fd);
	}
	{
		unsigned char big[32] = { 0 };
		struct liveupdate_session_preserve_fd arg = { .size = sizeof(big), .token = 7 };

		arg.fd = new_memfd("walk-big");
		memcpy(big, &arg, sizeof(arg));
		big[20] = 1;
		EXPECT(E2BIG, ioctl(s2, LIVEUPDATE_SESSION_PRESERVE_FD, big),
		       "PRESERVE_FD size 32 with a nonzero tail -> E2BIG");
		big[20] = 0;
		EXPECT(0, ioctl(s2, LIVEUPDATE_SESSION_PRESERVE_FD, big),
		       "PRESERVE_FD size 32 with a zero tail -> accepted");
		close(arg.fd);
	}

	/* Closing a session unpreserves its files (§13). */
	close(s1);
	s1 = create(name_of("pres3"));
	EXPECT(0, preserve(s1, reopened, 9), "after its session is closed, the memfd can be preserved again");
	close(reopened);
	close(s1);
	close(s2);
}

/* ---- EMFILE precedence (§4 note) ------------------------------------------------------ */

static void walk_emfile(void)
{
	struct liveupdate_ioctl_create_session arg;
	struct rlimit old, low;
	int session = create(name_of("emfile")), fds[64], nfds = 0;

	if (!check(session >= 0, "a session for the EMFILE walk"))
		return;
	getrlimit(RLIMIT_NOFILE, &old);
	/* A low limit, then fill every free slot below it. */
	low = old;
	low.rlim_cur = 48;
	if (old.rlim_cur < low.rlim_cur || setrlimit(RLIMIT_NOFILE, &low) != 0) {
		skip("cannot lower RLIMIT_NOFILE");
		close(session);
		return;
	}
	while (nfds < 64 && (fds[nfds] = fcntl(0, F_DUPFD_CLOEXEC, 0)) >= 0)
		nfds++;
	if (check(nfds < 64 && errno == EMFILE, "fd table filled (%d fds)", nfds)) {
		fill_session_arg(&arg, name_of("emfile-new"));
		EXPECT(EMFILE, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &arg),
		       "full fd table: CREATE_SESSION -> EMFILE");
		fill_session_arg(&arg, "");
		EXPECT(EMFILE, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &arg),
		       "full fd table: CREATE_SESSION empty name -> EMFILE (before the name check)");
		fill_session_arg(&arg, name_of("emfile"));
		EXPECT(EMFILE, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &arg),
		       "full fd table: CREATE_SESSION duplicate name -> EMFILE");
		fill_session_arg(&arg, name_of("emfile-unknown"));
		EXPECT(EMFILE, ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &arg),
		       "full fd table: RETRIEVE_SESSION unknown name -> EMFILE (before the lookup)");
		EXPECT(EFAULT, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, NULL),
		       "full fd table: CREATE_SESSION NULL arg -> EFAULT (dispatch first)");
		EXPECT(ENOTTY, ioctl(dev, _IOWR(0xBA, 0, struct liveupdate_ioctl_create_session), &arg),
		       "full fd table: _IOWR encoding -> ENOTTY");
		arg.size = 8;
		EXPECT(EINVAL, ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &arg),
		       "full fd table: CREATE_SESSION size 8 -> EINVAL");
		{
			struct liveupdate_session_retrieve_fd rf = { .size = sizeof(rf), .token = 1 };
			char name[LIVEUPDATE_SESSION_NAME_LENGTH];

			EXPECT(EINVAL, ioctl(session, LIVEUPDATE_SESSION_RETRIEVE_FD, &rf),
			       "full fd table: RETRIEVE_FD on an outgoing session -> EINVAL");
			check(get_name(session, name) == 0 && !strcmp(name, name_of("emfile")),
			      "full fd table: GET_NAME still works");
		}
	}
	while (nfds > 0)
		close(fds[--nfds]);
	setrlimit(RLIMIT_NOFILE, &old);
	close(session);
}

/* ---- other threads, foreign fds ------------------------------------------------------- */

struct thread_result {
	int session;
	char name[LIVEUPDATE_SESSION_NAME_LENGTH];
	int get_name_rc, create_fd;
};

static void *thread_main(void *p)
{
	struct thread_result *r = p;

	r->get_name_rc = get_name(r->session, r->name);
	r->create_fd = create(name_of("thread"));
	return NULL;
}

static void walk_threads_and_foreign(void)
{
	struct thread_result r = { .session = create(name_of("threads")) };
	struct liveupdate_session_get_name gn = { .size = sizeof(gn) };
	pthread_t t;
	int pipefd[2];

	if (r.session >= 0 && pthread_create(&t, NULL, thread_main, &r) == 0) {
		pthread_join(t, NULL);
		check(r.get_name_rc == 0 && !strcmp(r.name, name_of("threads")),
		      "GET_NAME from another thread");
		check(r.create_fd >= 0, "CREATE_SESSION from another thread");
		if (r.create_fd >= 0)
			close(r.create_fd);
	}
	if (r.session >= 0)
		close(r.session);
	if (pipe2(pipefd, O_CLOEXEC) == 0) {
		EXPECT(ENOTTY, ioctl(pipefd[0], LIVEUPDATE_SESSION_GET_NAME, &gn),
		       "a LUO ioctl on a pipe -> ENOTTY (not a LUO file)");
		close(pipefd[0]);
		close(pipefd[1]);
	}
}

int main(void)
{
	page = sysconf(_SC_PAGESIZE);
	snprintf(prefix, sizeof(prefix), "ew%d", (int)getpid());
	name_prefix = prefix;
	dev = EXPECT(0, open("/dev/liveupdate", O_RDWR | O_CLOEXEC), "open /dev/liveupdate");
	if (dev < 0)
		return check_summary();
	check(fcntl(dev, F_GETFD) == FD_CLOEXEC, "O_CLOEXEC on the device fd is honoured");

	walk_device_open();
	walk_dispatch_device();
	walk_sizes();
	walk_copy_back();
	walk_names();
	walk_session_fd();
	walk_preserve();
	walk_emfile();
	walk_threads_and_foreign();

	close(dev);
	dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
	check(dev >= 0, "/dev/liveupdate can be opened again after close");
	if (dev >= 0)
		close(dev);
	return check_summary();
}
