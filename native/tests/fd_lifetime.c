/*
 * fd_lifetime: a session lives exactly as long as its open file (spec §8, §13),
 * however the fd is copied: dup/dup2/dup3/F_DUPFD, fork, SCM_RIGHTS, exec.
 *
 * The shim keeps no fd table, so all of this must hold by construction (a
 * session fd is a real file whose last close the kernel reports); this program
 * checks it. "The session is gone" is observed the portable way, by creating
 * the same name again, and, under luofs (LUOFS_ROOT set), also in the
 * sessions view ROOT/sys/kernel/liveupdate/sessions/outgoing/.
 *
 * Built with 64-bit offsets and _FORTIFY_SOURCE, like distribution daemons.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <linux/liveupdate.h>
#include <sys/ioctl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "names.h"

#define ANON_INODE_FS_MAGIC 0x09041934

static int dev = -1;
static char prefix[24]; /* name_prefix points here */


static int create(const char *name)
{
	struct liveupdate_ioctl_create_session arg = { .size = sizeof(arg), .fd = -1 };

	memcpy(arg.name, name, strlen(name));
	if (ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &arg) < 0)
		return -1;
	return arg.fd;
}

/* GET_NAME on fd matches `name`. */
static bool names(int fd, const char *name)
{
	struct liveupdate_session_get_name arg = { .size = sizeof(arg) };

	return ioctl(fd, LIVEUPDATE_SESSION_GET_NAME, &arg) == 0 && !strcmp((char *)arg.name, name);
}

/* Looks like a session to a program: link and file-system type. */
static bool looks_like_session(int fd, const char *name)
{
	char path[64], link[256], want[128];
	struct statfs sfs;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	snprintf(want, sizeof(want), "anon_inode:[luo_session] %s", name);
	n = readlink(path, link, sizeof(link));
	return n == (ssize_t)strlen(want) && !memcmp(link, want, (size_t)n) &&
	       fstatfs(fd, &sfs) == 0 && sfs.f_type == ANON_INODE_FS_MAGIC;
}

/* -1: no view (not luofs), else whether the sessions view lists `name`. */
static int in_view(const char *name)
{
	const char *root = getenv("LUOFS_ROOT");
	char path[4096];
	struct stat st;

	if (!root)
		return -1;
	snprintf(path, sizeof(path), "%s/sys/kernel/liveupdate/sessions/outgoing/%s", root, name);
	return stat(path, &st) == 0;
}

/* The session `name` exists: creating it again fails with EEXIST. */
static bool exists(const char *name)
{
	int fd = create(name);

	if (fd >= 0) {
		close(fd);
		return false;
	}
	return errno == EEXIST;
}

static void check_alive(const char *name, const char *when)
{
	int view = in_view(name);

	check(exists(name), "%s: the session still exists (EEXIST on create)", when);
	if (view >= 0)
		check(view == 1, "%s: the sessions view lists it", when);
}

static void check_gone(const char *name, const char *when)
{
	int view = in_view(name);

	if (view >= 0)
		check(view == 0, "%s: the sessions view no longer lists it", when);
	check(!exists(name), "%s: the session is gone (its name is free)", when);
}

static void walk_dup(void)
{
	const char *name = name_of("dup");
	int s = create(name), d, d2, d3, d4;

	if (!check(s >= 0, "create %s", name))
		return;
	d = dup(s);
	d2 = dup2(s, 200);
	d3 = dup3(s, 201, O_CLOEXEC);
	d4 = fcntl(s, F_DUPFD_CLOEXEC, 300);
	close(s);
	check(d >= 0 && names(d, name), "dup: GET_NAME works after the original is closed");
	check(d2 == 200 && names(d2, name) && looks_like_session(d2, name),
	      "dup2 to fd 200: GET_NAME, readlink and fstatfs work");
	check(d3 == 201 && names(d3, name), "dup3 to fd 201 works");
	check(d4 >= 300 && names(d4, name), "F_DUPFD_CLOEXEC to fd >= 300 works");
	close(d);
	close(d2);
	close(d3);
	check_alive(name, "after closing all but one copy");
	close(d4);
	check_gone(name, "after closing the last copy");
}

static void walk_fork(void)
{
	const char *name = name_of("fork");
	int s = create(name), go[2], status;
	pid_t pid;

	if (!check(s >= 0 && pipe(go) == 0, "create %s", name))
		return;
	pid = fork();
	if (pid == 0) {
		char c;

		close(go[1]);
		if (read(go[0], &c, 1) != 1) /* until the parent closed its copy */
			_exit(3);
		_exit(names(s, name) && looks_like_session(s, name) ? 0 : 1);
	}
	close(go[0]);
	close(s);
	check_alive(name, "fork: parent closed its copy, child holds one");
	if (write(go[1], "g", 1) != 1)
		perror("write");
	close(go[1]);
	waitpid(pid, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "fork: the child uses the inherited session fd alone");
	check_gone(name, "after the child exited");
}

static int send_fd(int sock, int fd)
{
	union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } u;
	struct iovec iov = { .iov_base = "F", .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	return sendmsg(sock, &msg, 0) == 1 ? 0 : -1;
}

static int recv_fd(int sock)
{
	union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } u;
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *c;
	int fd = -1;

	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1)
		return -1;
	c = CMSG_FIRSTHDR(&msg);
	if (c && c->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

/* A process that never opened /dev/liveupdate receives a session fd over a
 * unix socket, closes every other fd, and uses it (PRESERVE_FD too). */
static void walk_scm_rights(void)
{
	const char *name = name_of("scm");
	int sv[2], status, s;
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		return;
	pid = fork();
	if (pid == 0) {
		int r, memfd, ok;
		struct liveupdate_session_preserve_fd pf = { .size = sizeof(pf), .token = 42 };

		close(sv[0]);
		r = recv_fd(sv[1]);
		if (r < 0)
			_exit(3);
		memfd = memfd_create("scm", MFD_CLOEXEC);
		/* Programs close every fd they do not know before preserving. */
		if (dup2(r, 3) != 3 || dup2(memfd, 4) != 4 || dup2(sv[1], 5) != 5)
			_exit(4);
		close_range(6, ~0U, 0);
		pf.fd = 4;
		ok = names(3, name) && looks_like_session(3, name) &&
		     ioctl(3, LIVEUPDATE_SESSION_PRESERVE_FD, &pf) == 0;
		if (write(5, ok ? "y" : "n", 1) != 1)
			_exit(5);
		/* Hold the session until the parent has looked. */
		if (read(5, &ok, 1) < 0)
			_exit(6);
		_exit(0);
	}
	close(sv[1]);
	s = create(name);
	if (check(s >= 0 && send_fd(sv[0], s) == 0, "send session %s over SCM_RIGHTS", name)) {
		char answer = 0;

		close(s);
		check(read(sv[0], &answer, 1) == 1 && answer == 'y',
		      "SCM_RIGHTS: the receiver (other fds closed) uses it: GET_NAME, readlink, "
		      "fstatfs, PRESERVE_FD");
		check_alive(name, "SCM_RIGHTS: sender closed its copy");
	}
	close(sv[0]); /* lets the child exit */
	waitpid(pid, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "SCM_RIGHTS child exited cleanly");
	check_gone(name, "after the receiver exited");
}

/* Across mount namespaces, as between an init system's fd store and a service
 * with private mounts: a process in a mount namespace of its own opens the device
 * through its copy of the mount (another mount id, the same file system), creates
 * a session, preserves a memfd in it and passes it over SCM_RIGHTS to a process
 * in ours, which recognises it and preserves into it too. */
static void walk_scm_rights_across_namespaces(void)
{
	const char *name = name_of("scm-ns");
	struct liveupdate_session_preserve_fd pf = { .size = sizeof(pf), .token = 2 };
	int sv[2], status, r, memfd;
	pid_t pid;

	if (geteuid() != 0) {
		printf("skip SCM_RIGHTS across mount namespaces: unshare(CLONE_NEWNS) needs root\n");
		return;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		return;
	close(dev); /* the device opens once at a time: the creator needs it */
	pid = fork();
	if (pid == 0) {
		struct liveupdate_session_preserve_fd own = { .size = sizeof(own), .token = 1 };
		int s;
		char done;

		close(sv[0]);
		if (unshare(CLONE_NEWNS) != 0)
			_exit(7);
		dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC); /* through this namespace's copy */
		s = create(name);
		own.fd = memfd_create("scm-ns", MFD_CLOEXEC);
		if (dev < 0 || s < 0 || ioctl(s, LIVEUPDATE_SESSION_PRESERVE_FD, &own) != 0)
			_exit(8);
		if (send_fd(sv[1], s) != 0)
			_exit(9);
		close(s);
		close(dev);
		if (read(sv[1], &done, 1) < 0) /* until the receiver has looked */
			_exit(10);
		_exit(0);
	}
	close(sv[1]);
	r = recv_fd(sv[0]);
	check(r >= 0 && names(r, name) && looks_like_session(r, name),
	      "a session created in another mount namespace arrives over SCM_RIGHTS and is "
	      "recognised: GET_NAME, readlink, fstatfs");
	memfd = memfd_create("scm-ns", MFD_CLOEXEC);
	pf.fd = memfd;
	check(r >= 0 && ioctl(r, LIVEUPDATE_SESSION_PRESERVE_FD, &pf) == 0,
	      "PRESERVE_FD into it from this namespace");
	if (send(sv[0], "x", 1, MSG_NOSIGNAL) != 1)
		perror("send"); /* the creator is gone: its status tells why */
	close(sv[0]);
	waitpid(pid, &status, 0);
	dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC); /* the creator's copy is closed */
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "the creator in another mount namespace exited cleanly (status %d)",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	check_alive(name, "SCM_RIGHTS across namespaces: the creator exited");
	close(memfd);
	if (r >= 0)
		close(r);
	check_gone(name, "SCM_RIGHTS across namespaces: the receiver closed it");
}

/* A session fd inherited across exec (FD_CLOEXEC cleared) is still recognised. */
static void walk_exec(const char *self)
{
	const char *name = name_of("exec");
	int s = create(name), status;
	char fdarg[16];
	pid_t pid;

	if (!check(s >= 0, "create %s", name))
		return;
	fcntl(s, F_SETFD, 0);
	snprintf(fdarg, sizeof(fdarg), "%d", s);
	pid = fork();
	if (pid == 0) {
		execl(self, self, "--exec-child", fdarg, name, (char *)NULL);
		_exit(127);
	}
	close(s);
	waitpid(pid, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "exec: the new program uses the inherited session fd (status %d)",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	check_gone(name, "after the exec'ed program exited");
}

static int exec_child(const char *fdarg, const char *name)
{
	int fd = atoi(fdarg);

	return names(fd, name) && looks_like_session(fd, name) ? 0 : 1;
}

/* The documented deployment: a privileged agent creates sessions and hands
 * them to unprivileged VMMs, which preserve their own files. Holding the fd
 * is all the permission an ioctl needs. */
static void walk_unprivileged_holder(void)
{
	const char *name = name_of("unpriv");
	int s, status;
	pid_t pid;

	if (geteuid() != 0) {
		skip("unprivileged holder: needs root to drop privileges");
		return;
	}
	s = create(name);
	if (!check(s >= 0, "create %s", name))
		return;
	pid = fork();
	if (pid == 0) {
		struct liveupdate_session_preserve_fd pf = { .size = sizeof(pf), .token = 1 };

		close(dev);
		if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
			_exit(3);
		pf.fd = memfd_create("unpriv", MFD_CLOEXEC);
		if (!names(s, name))
			_exit(1);
		_exit(ioctl(s, LIVEUPDATE_SESSION_PRESERVE_FD, &pf) == 0 ? 0 : 2);
	}
	close(s);
	waitpid(pid, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "a process running as nobody uses a session fd it holds: GET_NAME, PRESERVE_FD "
	      "(status %d: 1 GET_NAME failed, 2 PRESERVE_FD failed)",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

/*
 * Passing a LUO file itself to PRESERVE_FD is refused (ENOENT); it must not
 * keep that file alive either. A kernel drops its reference before the ioctl
 * returns, so the caller's close() is the last one: the device can be opened
 * again and the session's name is free at once. Racy when broken, so many
 * rounds.
 */
static void walk_preserve_leaves_no_reference(void)
{
	const char *name = name_of("transient");
	int rounds = 200, busy = 0, taken = 0;

	for (int i = 0; i < rounds; i++) {
		struct liveupdate_session_preserve_fd pf = { .size = sizeof(pf), .token = 1 };
		int s = create(name), again;

		/* A previous failure may linger; it was counted already. */
		for (int wait = 0; s < 0 && errno == EEXIST && wait < 1000; wait++) {
			usleep(1000);
			s = create(name);
		}
		if (s < 0)
			break;
		pf.fd = dev;
		ioctl(s, LIVEUPDATE_SESSION_PRESERVE_FD, &pf);
		pf.fd = s;
		pf.token = 2;
		ioctl(s, LIVEUPDATE_SESSION_PRESERVE_FD, &pf);
		close(s);
		close(dev);
		dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
		if (dev < 0) {
			busy++;
			while (dev < 0 && errno == EBUSY) {
				usleep(1000);
				dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
			}
		}
		again = create(name);
		if (again < 0)
			taken++;
		else
			close(again); /* a plain close: released at once (checked above) */
		if (dev < 0)
			break;
	}
	check(busy == 0, "%d rounds of PRESERVE_FD(device fd) then close: reopening the device "
	      "never sees EBUSY (%d did)", rounds, busy);
	check(taken == 0, "%d rounds of PRESERVE_FD(session fd) then close: its name is always "
	      "free at once (%d were not)", rounds, taken);
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "--exec-child"))
		return exec_child(argv[2], argv[3]);
	snprintf(prefix, sizeof(prefix), "fl%d", (int)getpid());
	name_prefix = prefix;
	dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
	if (!check(dev >= 0, "open /dev/liveupdate"))
		return check_summary();
	walk_dup();
	walk_fork();
	walk_scm_rights();
	walk_scm_rights_across_namespaces();
	walk_exec("/proc/self/exe");
	walk_unprivileged_holder();
	walk_preserve_leaves_no_reference();
	if (dev >= 0)
		close(dev);
	return check_summary();
}
