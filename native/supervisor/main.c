/*
 * luofs-supervise [--root DIR] [--all] -- PROG ARGS...
 *
 * Runs PROG under a seccomp filter whose notifications we answer (serve.c), so
 * any binary reaches the emulator at DIR (default $LUOFS_ROOT): static, Go, raw
 * syscalls. --shim LIB preloads the shim into a dynamic PROG (not into us): it
 * then redirects the path /dev/liveupdate and keeps serving its libc ioctl()
 * calls itself (one hop instead of two), unless --all. --pid-ns runs PROG as
 * PID 1 of a new PID namespace (where no reboot can reach the host). Exits with PROG's status (128+N if a signal N ended it), or 0 when
 * PROG ended in a successful reboot(LINUX_REBOOT_CMD_KEXEC), as a machine that
 * reboots into the next kernel.
 *
 * The filter is inherited by PROG's children and survives exec, so notifications
 * outlive PROG when it leaves children behind (a holder that keeps session fds
 * open): a detached server process answers them until the last filtered task is
 * gone (the listener reports POLLHUP); we only wait for PROG. The server tells
 * us, through a pipe and before the kill, which process a kexec ended.
 *
 * Unhappy paths: PROG that cannot be run exits 127 with a message; a process that
 * is supervised already (the kernel allows one listener per filter chain) runs
 * PROG directly, served by the supervisor it already has; a filter the kernel
 * refuses is an error (exit 125).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "supervisor.h"

#define EXIT_SETUP 125
#define EXIT_EXEC 127

static pid_t child;
static bool serve_all; /* --all: the shim leaves its ioctls to us too */
static const char *shim; /* --shim LIB: preloaded into PROG (never into us) */
static bool pid_ns; /* --pid-ns: PROG is PID 1 of a new PID namespace */

static void usage(void)
{
	fprintf(stderr, "usage: luofs-supervise [--root DIR] [--all] [--shim LIB] [--pid-ns] -- "
			"PROG ARGS...\n");
	exit(2);
}

static bool send_fd(int sock, int fd)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control = { 0 };
	char byte = 'L';
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			      .msg_controllen = sizeof(control.buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	return sendmsg(sock, &msg, 0) == 1;
}

/* The listener, or -1 if the child sent none (already supervised, or failed). */
static int recv_fd(int sock)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			      .msg_controllen = sizeof(control.buf) };
	struct cmsghdr *c;
	int fd = -1;

	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) <= 0)
		return -1;
	c = CMSG_FIRSTHDR(&msg);
	if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

/* In the child: filter ourselves, hand the listener over, become PROG. */
static void run_child(int sock, char **argv)
{
	int listener = supervise_install_filter();

	if (listener >= 0) {
		if (!send_fd(sock, listener))
			_exit(EXIT_SETUP);
		close(listener);
	} else if (listener != -EBUSY) {
		fprintf(stderr, "luofs-supervise: cannot install the seccomp filter: %s\n",
			strerror(-listener));
		_exit(EXIT_SETUP);
	}
	close(sock);
	/* The shim, if the program has it, leaves these calls to us. */
	setenv("LUOFS_SUPERVISED", serve_all ? "all" : "1", 1);
	if (shim) {
		const char *others = getenv("LD_PRELOAD");
		char *preload;

		if (asprintf(&preload, "%s%s%s", shim, others ? " " : "", others ? others : "") < 0)
			_exit(EXIT_SETUP);
		setenv("LD_PRELOAD", preload, 1);
	}
	execvp(argv[0], argv);
	fprintf(stderr, "luofs-supervise: %s: %s\n", argv[0], strerror(errno));
	_exit(EXIT_EXEC);
}

static void forward(int sig)
{
	if (child > 0)
		kill(child, sig);
}

static int exit_status(int status, bool ended_by_kexec)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (ended_by_kexec && WTERMSIG(status) == SIGKILL)
		return 0;
	return 128 + WTERMSIG(status);
}

/* The server's watchdog: the listener hangs up once no filtered task is left
 * (none can be waiting in a notification then), and the server's work is done. */
static void *watch_hangup(void *arg)
{
	struct pollfd p = { .fd = *(int *)arg, .events = 0 };

	while (poll(&p, 1, -1) < 0 || !(p.revents & (POLLHUP | POLLERR | POLLNVAL)))
		;
	_exit(0);
	return NULL;
}

/* The server: answers notifications for PROG and every descendant, for as long as
 * any of them lives, detached from the caller's terminal and pipes (a program's
 * output is read to its end by whoever ran it, and holders outlive PROG). */
static void run_server(int listener, int note_fd)
{
	struct supervisor sv;
	pthread_t watchdog;
	uint64_t sync_wake = SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP;
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);

	setsid();
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	signal(SIGPIPE, SIG_IGN); /* the notes pipe, once PROG's waiter is gone */
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		dup2(null, STDOUT_FILENO);
		dup2(null, STDERR_FILENO);
	}
	if (!supervise_init(&sv, listener, note_fd) ||
	    pthread_create(&watchdog, NULL, watch_hangup, &listener) != 0)
		_exit(EXIT_SETUP);
	/* The caller and we take turns on one CPU: wake us in its place (6.6+;
	 * older kernels refuse the flag and wake us as any waiter). */
	ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, sync_wake);
	while (supervise_one(&sv))
		;
	_exit(0); /* the listener failed: its tasks' calls now fail with ENOSYS */
}

/* Was PROG (pid `who`) ended by a kexec the server performed? */
static bool ended_by_kexec(int note_fd, pid_t who)
{
	pid_t killed;

	while (read(note_fd, &killed, sizeof(killed)) == (ssize_t)sizeof(killed))
		if (killed == who)
			return true;
	return false;
}

int main(int argc, char **argv)
{
	int sock[2], notes[2] = { -1, -1 }, listener, status;
	pid_t server;
	int i = 1;

	for (; i < argc && strncmp(argv[i], "--", 2) == 0 && argv[i][2]; i++) {
		if (strcmp(argv[i], "--all") == 0)
			serve_all = true;
		else if (strcmp(argv[i], "--root") == 0 && i + 1 < argc)
			setenv("LUOFS_ROOT", argv[++i], 1);
		else if (strcmp(argv[i], "--shim") == 0 && i + 1 < argc)
			shim = argv[++i];
		else if (strcmp(argv[i], "--pid-ns") == 0)
			pid_ns = true;
		else
			usage();
	}
	if (i < argc && strcmp(argv[i], "--") == 0)
		i++;
	/* A shim preloaded into us anyway (LD_PRELOAD set for everything) must not
	 * answer our own readlink/ioctl calls: it leaves them to the kernel. */
	setenv("LUOFS_SUPERVISED", "all", 1);
	if (i >= argc)
		usage();
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sock) != 0) {
		perror("luofs-supervise: socketpair");
		return EXIT_SETUP;
	}
	/* A new PID namespace keeps us (and /proc, as we read it) outside it. */
	child = (pid_t)syscall(SYS_clone, SIGCHLD | (pid_ns ? CLONE_NEWPID : 0), NULL, NULL, NULL,
			       NULL);
	if (child < 0) {
		perror("luofs-supervise: clone");
		return EXIT_SETUP;
	}
	if (child == 0) {
		close(sock[0]);
		run_child(sock[1], argv + i);
	}
	close(sock[1]);
	/* As a shell does for a foreground job: the terminal's signals are the
	 * program's to handle. */
	signal(SIGINT, SIG_IGN);
	signal(SIGQUIT, SIG_IGN);
	signal(SIGTERM, forward);
	signal(SIGHUP, forward);
	listener = recv_fd(sock[0]);
	close(sock[0]);
	/* No listener: supervised already (or the child failed); just wait. */
	if (listener >= 0) {
		if (pipe2(notes, O_CLOEXEC) != 0 || (server = fork()) < 0) {
			perror("luofs-supervise: server");
			kill(child, SIGKILL);
			return EXIT_SETUP;
		}
		if (server == 0) {
			close(notes[0]);
			run_server(listener, notes[1]);
		}
		close(listener);
		close(notes[1]);
		fcntl(notes[0], F_SETFL, O_NONBLOCK);
	}
	while (waitpid(child, &status, 0) < 0)
		if (errno != EINTR)
			return EXIT_SETUP;
	return exit_status(status, listener >= 0 && ended_by_kexec(notes[0], child));
}
