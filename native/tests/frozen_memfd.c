/*
 * frozen_memfd: the frozen-memfd rule of spec/uapi.md §15 as a program sees it.
 * While a memfd is preserved, ftruncate to another size, fallocate and
 * posix_fallocate fail with EPERM; ftruncate to the same size succeeds, and so
 * do writes in place. Once the session is closed the file is an ordinary one
 * again. libc calls (the shim answers them) and, with "raw", raw syscalls (the
 * seccomp supervisor answers those). Exits 0 iff every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/liveupdate.h>
#include <stdbool.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "check.h"

static bool raw;

static int do_ftruncate(int fd, off_t len)
{
	return raw ? (int)syscall(SYS_ftruncate, fd, len) : ftruncate(fd, len);
}

static int do_fallocate(int fd, int mode, off_t off, off_t len)
{
	return raw ? (int)syscall(SYS_fallocate, fd, mode, off, len) : fallocate(fd, mode, off, len);
}

int main(int argc, char **argv)
{
	struct liveupdate_ioctl_create_session create = { .size = sizeof(create), .fd = -1 };
	const char *device = argc > 1 ? argv[1] : "/dev/liveupdate";
	int dev, session, memfd;

	raw = argc > 2 && strcmp(argv[2], "raw") == 0;
	dev = open(device, O_RDWR);
	if (!check(dev >= 0, "open %s", device))
		return 1;
	memcpy(create.name, "frozen", 6);
	check(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &create) == 0, "CREATE_SESSION");
	session = create.fd;
	memfd = memfd_create("frozen", 0);
	check(memfd >= 0 && ftruncate(memfd, 8192) == 0, "a memfd of 8192 bytes");
	struct liveupdate_session_preserve_fd preserve = { .size = sizeof(preserve), .fd = memfd,
							    .token = 1 };
	check(ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, &preserve) == 0, "PRESERVE_FD");

	errno = 0;
	check(do_ftruncate(memfd, 4096) < 0 && errno == EPERM, "ftruncate to another size: EPERM");
	check(do_ftruncate(memfd, 8192) == 0, "ftruncate to the same size: allowed");
	errno = 0;
	check(do_fallocate(memfd, 0, 0, 16384) < 0 && errno == EPERM, "fallocate: EPERM");
	errno = 0;
	check(do_fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) < 0 &&
		      errno == EPERM, "fallocate(PUNCH_HOLE): EPERM");
	if (!raw)
		check(posix_fallocate(memfd, 0, 16384) == EPERM, "posix_fallocate: EPERM");
	check(pwrite(memfd, "in place", 8, 100) == 8, "a write in place: allowed");

	close(session); /* unpreserves: the file is an ordinary one again */
	/* The emulator learns of a close after close() returned (FUSE releases in the
	 * background); any request on the device after it is answered after it. */
	struct liveupdate_ioctl_retrieve_session retrieve = { .size = sizeof(retrieve) };
	memcpy(retrieve.name, "none", 4);
	ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &retrieve);
	check(do_ftruncate(memfd, 4096) == 0, "after the session closed, ftruncate: allowed");
	check(do_fallocate(memfd, 0, 0, 16384) == 0, "after the session closed, fallocate: allowed");
	close(memfd);
	close(dev);
	return check_summary();
}
