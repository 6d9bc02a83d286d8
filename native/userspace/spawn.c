/*
 * luofs-spawn: start a program inside a kernel's userspace (luofs/spawn.py).
 *
 *   luofs-spawn PID1|- [--fd FD]... [--cgroup DIR] -- PROG [ARG]...
 *
 * Joins the user, mount and PID namespaces of PID1 (setns(2) on its pidfd; "-"
 * joins nothing: a machine without userspaces starts a plain process) and forks
 * twice: only a child is born in the joined PID namespace, and an orphan is
 * adopted in its dead parent's namespace, so the program is a grandchild whose
 * parent (inside) exits at once, leaving it to PID1 as any orphan of that
 * userspace. It execs PROG in a session of its own, with each --fd FD installed
 * as 3, 4, ... in the order given (as systemd passes sockets), and its stdout on
 * its stderr (our stdout is for the machine). This process then prints "pid N",
 * the program's pid in the caller's namespace (read from a pidfd of it, through
 * the host's procfs), and exits. The machine uses it for programs that must live
 * in a userspace their requester cannot join itself: a VMM in the old kernel's
 * userspace starting its successor in the next kernel's. With --cgroup it first
 * joins DIR, the userspace's cgroup, so that a kexec freezes the program with the
 * rest of it (luofs/freezer.py).
 *
 * Unhappy paths print "error: WHAT: REASON" and exit 1 with nothing started: PID1
 * gone, a namespace that cannot be joined, PROG that cannot be executed (the
 * program reports its exec errno through a close-on-exec pipe before this
 * process says anything).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_FDS 16
#define FIRST_FD 3

static int fail(const char *what)
{
	printf("error: %s: %s\n", what, strerror(errno));
	return 1;
}

/* fds[i] becomes FIRST_FD + i; nothing else above stderr survives the exec. */
static int install(const int *fds, int n)
{
	int high[MAX_FDS];

	for (int i = 0; i < n; i++) { /* out of the way first: targets may overlap sources */
		high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, FIRST_FD + MAX_FDS);
		if (high[i] < 0)
			return -1;
	}
	for (int i = 0; i < n; i++) {
		if (dup2(high[i], FIRST_FD + i) < 0)
			return -1;
		close(high[i]);
	}
	for (int i = 0; i < n; i++) /* the originals, unless they are a target */
		if (fds[i] >= FIRST_FD + n)
			close(fds[i]);
	return 0;
}

/* The fd sent with one datagram on `sock`, or -1. */
static int recv_fd(int sock)
{
	char byte, control[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
			      .msg_controllen = sizeof(control) };
	struct cmsghdr *c;
	int fd = -1;

	if (recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) < 1)
		return -1;
	c = CMSG_FIRSTHDR(&msg);
	if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(c), sizeof(fd));
	return fd;
}

static void send_fd(int sock, int fd)
{
	char byte = 0, control[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
			      .msg_controllen = sizeof(control) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(fd));
	if (sendmsg(sock, &msg, 0) < 0)
		_exit(1);
}

/* The pid a pidfd names, as the procfs behind `fdinfo` (the host's) sees it. */
static pid_t pid_of(int fdinfo, int pidfd)
{
	char name[16], text[1024], *at;
	ssize_t n;
	int fd;

	snprintf(name, sizeof(name), "%d", pidfd);
	fd = openat(fdinfo, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	text[n > 0 ? n : 0] = '\0';
	at = strstr(text, "\nPid:");
	return at ? (pid_t)atoi(at + 5) : -1;
}

/* Inside the namespace: fork the program, hand the caller a pidfd of it, exit. */
static void middle(char **prog, const int *fds, int nfds, int sock, int report)
{
	int err, pidfd;
	pid_t pid = fork();

	if (pid < 0)
		_exit(1);
	if (pid == 0) {
		close(sock);
		setsid();
		dup2(STDERR_FILENO, STDOUT_FILENO); /* our stdout is the machine's pipe */
		if (install(fds, nfds) == 0)
			execvp(prog[0], prog);
		err = errno;
		if (write(report, &err, sizeof(err)) < 0)
			_exit(126);
		_exit(127);
	}
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0)
		_exit(1);
	send_fd(sock, pidfd);
	_exit(0);
}

int main(int argc, char **argv)
{
	int fds[MAX_FDS], nfds = 0, pidfd, fdinfo, sv[2], report[2], i = 2, err = 0, fd;
	const char *cgroup = NULL;
	char cwd[PATH_MAX], path[PATH_MAX];
	pid_t pid;

	while (i + 1 < argc && nfds < MAX_FDS) {
		if (!strcmp(argv[i], "--fd"))
			fds[nfds++] = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--cgroup"))
			cgroup = argv[i + 1];
		else
			break;
		i += 2;
	}
	if (argc < 2 || i >= argc || strcmp(argv[i], "--") || i + 1 >= argc) {
		fprintf(stderr, "usage: luofs-spawn PID1|- [--fd FD]... [--cgroup DIR] -- PROG [ARG]...\n");
		return 64;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!getcwd(cwd, sizeof(cwd)))
		strcpy(cwd, "/");
	/* The host's procfs, before the namespace's /proc hides it: it names pids as we do. */
	fdinfo = open("/proc/self/fdinfo", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fdinfo < 0)
		return fail("open /proc/self/fdinfo");
	if (cgroup) { /* writing 0 moves the writer; its children are born there */
		snprintf(path, sizeof(path), "%s/cgroup.procs", cgroup);
		fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, "0", 1) != 1)
			return fail("join the userspace's cgroup");
		close(fd);
	}
	if (strcmp(argv[1], "-")) {
		pidfd = (int)syscall(SYS_pidfd_open, (pid_t)atoi(argv[1]), 0);
		if (pidfd < 0)
			return fail("pidfd_open PID 1");
		if (setns(pidfd, CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID) != 0)
			return fail("join the userspace");
		close(pidfd);
		if (chdir(cwd) != 0 && chdir("/") != 0) /* setns took us to the ns's root */
			return fail("chdir");
	}
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) != 0 ||
	    pipe2(report, O_CLOEXEC) != 0)
		return fail("socketpair");
	pid = fork();
	if (pid < 0)
		return fail("fork");
	if (pid == 0) {
		close(sv[0]);
		close(report[0]);
		middle(argv + i + 1, fds, nfds, sv[1], report[1]);
	}
	close(sv[1]);
	close(report[1]);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	pidfd = recv_fd(sv[0]);
	if (pidfd < 0) {
		errno = EAGAIN;
		return fail("start a process in the userspace");
	}
	if (read(report[0], &err, sizeof(err)) == (ssize_t)sizeof(err)) {
		printf("error: exec %s: %s\n", argv[i + 1], strerror(err));
		return 1;
	}
	printf("pid %d\n", (int)pid_of(fdinfo, pidfd));
	return 0;
}
