/*
 * The per-thread socket pair through which the daemon hands back new fds
 * (RETRIEVE_FD): the daemon takes "their" end from us with pidfd_getfd and
 * sends the fd over it; we receive it on "our" end.
 *
 * Per thread, so concurrent RETRIEVE_FDs cannot receive each other's fds.
 * Per process: a forked child shares its parent's sockets, so it makes its own.
 * And never trusted blindly: programs close every fd they do not know about
 * (close_range before exec or before preserving), after which our numbers may
 * name the program's own files, so each end is checked by its inode before use.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shim.h"

struct reply_pair {
	pid_t pid;
	int ours, theirs;
	dev_t dev;
	ino_t ours_ino, theirs_ino;
};

static __thread struct reply_pair pair = { .pid = 0, .ours = -1, .theirs = -1 };
static pthread_key_t exit_key;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;

static bool still_ours(int fd, dev_t dev, ino_t ino)
{
	struct stat st;

	return fd >= 0 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev &&
	       st.st_ino == ino;
}

/* Closes the pair's fds that still are ours, forgets the rest. */
static void drop_pair(struct reply_pair *p)
{
	if (still_ours(p->ours, p->dev, p->ours_ino))
		close(p->ours);
	if (still_ours(p->theirs, p->dev, p->theirs_ino))
		close(p->theirs);
	p->ours = p->theirs = -1;
	p->pid = 0;
}

static void on_thread_exit(void *value)
{
	struct reply_pair *p = value;

	if (p && p->pid == getpid())
		drop_pair(p);
}

static void make_exit_key(void) { pthread_key_create(&exit_key, on_thread_exit); }

int luofs_reply_socket(int *ours, bool *table_full)
{
	struct stat st_ours, st_theirs;
	int sv[2], probe;

	*table_full = false;
	if (pair.pid != getpid()) {
		if (pair.pid != 0)
			drop_pair(&pair); /* the parent's, inherited through fork */
	} else if (!still_ours(pair.ours, pair.dev, pair.ours_ino) ||
		   !still_ours(pair.theirs, pair.dev, pair.theirs_ino)) {
		drop_pair(&pair); /* the program closed one end */
	}

	if (pair.pid == 0) {
		if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) != 0) {
			*table_full = errno == EMFILE;
			return -1;
		}
		if (fstat(sv[0], &st_ours) != 0 || fstat(sv[1], &st_theirs) != 0) {
			close(sv[0]);
			close(sv[1]);
			return -1;
		}
		pair = (struct reply_pair){
			.pid = getpid(), .ours = sv[0], .theirs = sv[1], .dev = st_ours.st_dev,
			.ours_ino = st_ours.st_ino, .theirs_ino = st_theirs.st_ino,
		};
		pthread_once(&exit_key_once, make_exit_key);
		pthread_setspecific(exit_key, &pair);
	}

	/* The fd the daemon sends needs a free slot here; without one the kernel
	 * answers EMFILE, so tell the daemon instead of losing the fd. */
	probe = fcntl(pair.ours, F_DUPFD_CLOEXEC, 0);
	if (probe < 0) {
		*table_full = errno == EMFILE;
		return -1;
	}
	close(probe);
	*ours = pair.ours;
	return pair.theirs;
}

void luofs_reply_drain(int ours)
{
	for (;;) {
		int fd = luofs_reply_recv_fd(ours);

		if (fd >= 0)
			close(fd);
		else if (fd != -EIO && fd != -EMFILE)
			return; /* empty (EAGAIN), or nothing to drain */
	}
}

int luofs_reply_recv_fd(int ours)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} control;
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = control.buf, .msg_controllen = sizeof(control.buf),
	};
	int received = -EIO;

	/* MSG_DONTWAIT: the daemon sends before it replies, so the fd is already
	 * queued when the reply arrives; an empty socket must not hang us. */
	if (recvmsg(ours, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT) < 0)
		return -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int fds[4];

		memcpy(fds, CMSG_DATA(c), n * sizeof(int));
		for (size_t i = 0; i < n; i++) {
			if (received < 0)
				received = fds[i];
			else
				close(fds[i]); /* a well-behaved daemon sends one */
		}
	}
	if (received < 0 && (msg.msg_flags & MSG_CTRUNC))
		return -EMFILE; /* the fd table filled up in the meantime */
	return received;
}
