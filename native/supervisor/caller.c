/*
 * The thread that waits in a notification, as the transport's caller.
 *
 * Identity comes from the notification (its thread id), never from the program:
 * a pidfd is opened for that thread and the notification is checked to be still
 * pending afterwards, so the pidfd cannot name a process that reused the id.
 * Through it we take the caller's fds (pidfd_getfd: the same open file, so the
 * daemon's checks see us holding it) and install the fds a request returns
 * (SECCOMP_IOCTL_NOTIF_ADDFD, close-on-exec as the kernel allocates them).
 *
 * Unhappy paths: a caller that died or was killed makes every step fail (its
 * notification is no longer valid); an fd it does not hold reads as -1 in the
 * request, so the daemon answers EBADF in the kernel's order.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../shim/shim.h"
#include "supervisor.h"

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

bool target_valid(const struct target *t)
{
	uint64_t id = t->id;

	return ioctl(t->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

bool target_open(struct target *t, int listener, const struct seccomp_notif *n)
{
	*t = (struct target){ .listener = listener, .id = n->id, .tid = (pid_t)n->pid, .pidfd = -1 };
	t->pidfd = (int)syscall(SYS_pidfd_open, t->tid, PIDFD_THREAD);
	if (t->pidfd < 0)
		return false;
	if (!target_valid(t)) {
		target_close(t);
		return false;
	}
	return true;
}

bool target_fd_emulated(const struct target *t, int fd)
{
	struct luofs_fd file;
	char link[64];

	snprintf(link, sizeof(link), "/proc/%d/fd/%d", (int)t->tid, fd);
	return fd >= 0 && luofs_classify_path(link, &file) != LUOFS_FD_FOREIGN;
}

int target_getfd(const struct target *t, int fd)
{
	int ours = fd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, t->pidfd, fd, 0);

	return ours < 0 ? -EBADF : ours;
}

void target_close(struct target *t)
{
	for (int i = 0; i < t->ntaken; i++)
		close(t->taken[i]);
	t->ntaken = 0;
	if (t->pidfd >= 0)
		close(t->pidfd);
	t->pidfd = -1;
}

bool target_status(const struct target *t, const char *format, void *value)
{
	char path[64], line[128];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)t->tid);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = sscanf(line, format, value) == 1;
	fclose(f);
	return found;
}

pid_t target_tgid(const struct target *t)
{
	int tgid;

	return target_status(t, "Tgid: %d", &tgid) ? (pid_t)tgid : 0;
}

/* The kernel allocates the lowest free fd below RLIMIT_NOFILE: the table is full
 * when every number below the limit is taken. A table with fewer slots than the
 * limit (FDSize) can still grow, so only a table as large as the limit is counted
 * (a program with 100,000 fds must not pay for a readdir of them per session). */
static bool caller_table_full(const struct luofs_caller *caller)
{
	const struct target *t = caller->data;
	struct rlimit lim;
	unsigned long slots = 0, open_below = 0;
	char path[64];
	struct dirent *e;
	DIR *d;

	if (prlimit(t->tid, RLIMIT_NOFILE, NULL, &lim) != 0 ||
	    (target_status(t, "FDSize: %lu", &slots) && slots < lim.rlim_cur))
		return false;
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)t->tid);
	d = opendir(path);
	if (!d)
		return false;
	while ((e = readdir(d)) != NULL) {
		int fd = luofs_parse_fd(e->d_name);

		if (fd >= 0 && (rlim_t)fd < lim.rlim_cur)
			open_below++;
	}
	closedir(d);
	return open_below >= lim.rlim_cur;
}

static int caller_install(const struct luofs_caller *caller, int fd)
{
	const struct target *t = caller->data;
	struct seccomp_notif_addfd addfd = {
		.id = t->id, .flags = 0, .srcfd = (uint32_t)fd, .newfd = 0,
		.newfd_flags = O_CLOEXEC,
	};
	int theirs = ioctl(t->listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
	int err = errno;

	close(fd);
	if (theirs >= 0)
		return theirs;
	return err == EMFILE ? -EMFILE : -EFAULT;
}

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* A request that carries the caller's fd carries our copy of it instead. */
static void caller_take_fd(const struct luofs_caller *caller, uint8_t *arg_fd)
{
	struct target *t = caller->data;
	int32_t fd = (int32_t)((uint32_t)arg_fd[0] | (uint32_t)arg_fd[1] << 8 |
			       (uint32_t)arg_fd[2] << 16 | (uint32_t)arg_fd[3] << 24);
	int ours = t->ntaken < SUPERVISE_MAX_TAKEN ? target_getfd(t, fd) : -EBADF;

	if (ours >= 0)
		t->taken[t->ntaken++] = ours;
	put_le32(arg_fd, (uint32_t)(ours >= 0 ? ours : -1));
}

static bool caller_alive(const struct luofs_caller *caller)
{
	return target_valid(caller->data);
}

void target_as_caller(struct target *t, struct luofs_caller *caller)
{
	*caller = (struct luofs_caller){
		.pid = t->tid, .table_full = caller_table_full, .install = caller_install,
		.take_fd = caller_take_fd, .alive = caller_alive, .data = t,
	};
}

bool target_reply(const struct target *t, void *user_addr, const void *data, size_t len)
{
	return target_valid(t) && luofs_poke(t->tid, user_addr, data, len);
}
