/*
 * reboot_walk: the errno paths of spec/uapi.md §7-§13 that need a live update.
 *
 *   reboot_walk prepare   create sessions, preserve memfds, then call
 *                         reboot(LINUX_REBOOT_CMD_KEXEC) with the sessions open
 *   reboot_walk check     after the update: retrieve and walk every path
 *
 * On a real kernel `prepare` ends in the kexec and `check` runs after boot.
 * Under the shim too, reboot() runs `luofs kexec` and never returns when the
 * update happened (the shim ends the caller with status 0); `prepare` prints
 * its summary before the call, and fails if the call returns.
 * Session names carry a tag given as the second argument (default "rw"), so
 * the two phases agree.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/liveupdate.h>
#include <linux/reboot.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "names.h"

static int dev = -1;


static int session_ioctl(unsigned long request, const char *name)
{
	struct liveupdate_ioctl_create_session arg = { .size = sizeof(arg), .fd = -1 };

	memcpy(arg.name, name, strlen(name));
	if (ioctl(dev, request, &arg) < 0)
		return -1;
	return arg.fd;
}

static int create(const char *name) { return session_ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, name); }
static int retrieve(const char *name) { return session_ioctl(LIVEUPDATE_IOCTL_RETRIEVE_SESSION, name); }

static int preserve(int session, int fd, uint64_t token)
{
	struct liveupdate_session_preserve_fd arg = { .size = sizeof(arg), .fd = fd, .token = token };

	return ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, &arg);
}

/* RETRIEVE_FD: the new fd, or -1 with errno. */
static int retrieve_fd(int session, uint64_t token)
{
	struct liveupdate_session_retrieve_fd arg = { .size = sizeof(arg), .fd = -77, .token = token };

	if (ioctl(session, LIVEUPDATE_SESSION_RETRIEVE_FD, &arg) < 0)
		return -1;
	return arg.fd;
}

static int finish(int session, uint32_t reserved)
{
	struct liveupdate_session_finish arg = { .size = sizeof(arg), .reserved = reserved };

	return ioctl(session, LIVEUPDATE_SESSION_FINISH, &arg);
}

static int memfd_with(const char *text)
{
	int fd = memfd_create(text, MFD_CLOEXEC);

	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
		perror("memfd");
		exit(2);
	}
	return fd;
}

/* The file holds exactly `text`. */
static bool holds(int fd, const char *text)
{
	char buf[64] = "";
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

	return n == (ssize_t)strlen(text) && !memcmp(buf, text, (size_t)n);
}

/* ---- before the update ---------------------------------------------------------- */

static int prepare(void)
{
	int a = create(name_of("a")), b = create(name_of("b")), c = create(name_of("c"));
	int d = create(name_of("d")), m, rc;

	if (!check(a >= 0 && b >= 0 && c >= 0 && d >= 0, "create sessions %s-{a,b,c,d}", name_prefix))
		return check_summary();
	m = memfd_with("alpha");
	lseek(m, 3, SEEK_SET); /* the position of the preserved open file is carried */
	EXPECT(0, preserve(a, m, 1), "preserve \"alpha\" (position 3) as a/1");
	close(m);
	EXPECT(0, preserve(a, memfd_with("beta"), 2), "preserve \"beta\" as a/2 (never retrieved)");
	EXPECT(0, preserve(b, memfd_with("bravo"), 1), "preserve \"bravo\" as b/1");
	EXPECT(0, preserve(c, memfd_with("charlie"), 1), "preserve \"charlie\" as c/1");
	EXPECT(0, preserve(d, memfd_with("delta"), 1), "preserve \"delta\" as d/1");
	close(c); /* only sessions open at reboot are carried */

	if (checks_failed)
		return check_summary();
	/* A kexec that happens never returns: the summary comes first. */
	printf("reboot(LINUX_REBOOT_CMD_KEXEC) next: ");
	check_summary();
	fflush(stdout);
	rc = reboot(LINUX_REBOOT_CMD_KEXEC);
	check(false, "reboot(LINUX_REBOOT_CMD_KEXEC) returned %d (%s): a kexec must never return",
	      rc, errno_name(errno));
	return check_summary();
}

/* ---- after the update ----------------------------------------------------------- */

struct retriever {
	int session, rounds, good;
};

static void *retrieve_many(void *p)
{
	struct retriever *r = p;

	for (int i = 0; i < r->rounds; i++) {
		int fd = retrieve_fd(r->session, 1);

		r->good += fd >= 0 && holds(fd, "delta") && fcntl(fd, F_GETFD) == FD_CLOEXEC;
		if (fd >= 0)
			close(fd);
	}
	return NULL;
}

static void walk_retrieve_fds(int d)
{
	struct retriever r1 = { .session = d, .rounds = 40 }, r2 = r1;
	pthread_t t1, t2;
	int status, fd, fds[64], nfds = 0;
	struct rlimit old, low;
	pid_t pid;

	/* Per-thread reply sockets: concurrent retrievals never swap fds. */
	pthread_create(&t1, NULL, retrieve_many, &r1);
	pthread_create(&t2, NULL, retrieve_many, &r2);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	check(r1.good == r1.rounds && r2.good == r2.rounds,
	      "two threads, %d RETRIEVE_FDs each: every fd is right (%d, %d)", r1.rounds, r1.good,
	      r2.good);

	/* Per-process: a forked child gets its own, also after closing every fd. */
	fd = retrieve_fd(d, 1);
	check(fd >= 0 && holds(fd, "delta"), "RETRIEVE_FD in the parent");
	close(fd);
	pid = fork();
	if (pid == 0) {
		int a, b;

		a = retrieve_fd(d, 1);
		if (dup2(d, 3) != 3)
			_exit(4);
		close_range(4, ~0U, 0);
		b = retrieve_fd(3, 1);
		_exit(a >= 0 && b >= 0 && holds(b, "delta") ? 0 : 1);
	}
	waitpid(pid, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "RETRIEVE_FD in a forked child, and again after it closed every other fd");
	fd = retrieve_fd(d, 1);
	check(fd >= 0 && holds(fd, "delta"), "RETRIEVE_FD in the parent after the child");
	close(fd);

	/* EMFILE: the fd is allocated before the token is looked up (§4). */
	getrlimit(RLIMIT_NOFILE, &old);
	low = old;
	low.rlim_cur = 48;
	if (old.rlim_cur < low.rlim_cur || setrlimit(RLIMIT_NOFILE, &low) != 0) {
		skip("cannot lower RLIMIT_NOFILE");
		return;
	}
	while (nfds < 64 && (fds[nfds] = fcntl(0, F_DUPFD_CLOEXEC, 0)) >= 0)
		nfds++;
	if (check(nfds < 64 && errno == EMFILE, "fd table filled")) {
		EXPECT(EMFILE, retrieve_fd(d, 1), "full fd table: RETRIEVE_FD -> EMFILE");
		EXPECT(EMFILE, retrieve_fd(d, 99), "full fd table: RETRIEVE_FD unknown token -> EMFILE");
		EXPECT(EMFILE, retrieve(name_of("b")), "full fd table: RETRIEVE_SESSION -> EMFILE");
	}
	while (nfds > 0)
		close(fds[--nfds]);
	setrlimit(RLIMIT_NOFILE, &old);
	fd = EXPECT(0, retrieve_fd(d, 1), "with a free fd again: RETRIEVE_FD works");
	if (fd >= 0)
		close(fd);
}

static int walk_after(void)
{
	char link[128], want[128], path[64];
	int a, a2, b, d, f1, f2, out, fresh;
	ssize_t n;

	dev = EXPECT(0, open("/dev/liveupdate", O_RDWR | O_CLOEXEC), "open /dev/liveupdate");
	if (dev < 0)
		return check_summary();

	EXPECT(ENOENT, retrieve(name_of("c")), "a session closed before the update was not carried -> ENOENT");
	EXPECT(ENOENT, retrieve(name_of("never")), "RETRIEVE_SESSION unknown -> ENOENT");
	a = EXPECT(0, retrieve(name_of("a")), "RETRIEVE_SESSION %s", name_of("a"));
	if (a < 0)
		return check_summary();
	check(fcntl(a, F_GETFD) == FD_CLOEXEC, "retrieved session fd has FD_CLOEXEC");
	snprintf(path, sizeof(path), "/proc/self/fd/%d", a);
	n = readlink(path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = '\0';
	snprintf(want, sizeof(want), "anon_inode:[luo_session] %s", name_of("a"));
	check(!strcmp(link, want), "retrieved session readlink = \"%s\" (got \"%s\")", want, link);
	EXPECT(EINVAL, retrieve(name_of("a")), "RETRIEVE_SESSION while retrieved and open -> EINVAL");
	fresh = EXPECT(0, create(name_of("a")), "CREATE_SESSION with an incoming session's name -> accepted");
	EXPECT(EINVAL, preserve(a, memfd_with("x"), 9), "PRESERVE_FD on a retrieved session -> EINVAL");
	EXPECT(ENOENT, retrieve_fd(a, 99), "RETRIEVE_FD unknown token -> ENOENT");

	f1 = EXPECT(0, retrieve_fd(a, 1), "RETRIEVE_FD a/1");
	if (f1 >= 0) {
		check(fcntl(f1, F_GETFD) == FD_CLOEXEC, "retrieved fd has FD_CLOEXEC");
		check((fcntl(f1, F_GETFL) & O_ACCMODE) == O_RDWR, "retrieved fd is O_RDWR");
		check(holds(f1, "alpha"), "retrieved memfd holds \"alpha\"");
		check(lseek(f1, 0, SEEK_CUR) == 3, "retrieved memfd's position is the carried 3");
		f2 = EXPECT(0, retrieve_fd(a, 1), "RETRIEVE_FD a/1 again");
		if (f2 >= 0) {
			lseek(f2, 1, SEEK_SET);
			check(f2 != f1 && lseek(f1, 0, SEEK_CUR) == 1,
			      "the second fd shares the open file description (offset)");
			close(f2);
		}
		if (fresh >= 0)
			EXPECT(EBUSY, preserve(fresh, f1, 1),
			       "preserving a retrieved, unfinished memfd -> EBUSY");
	}
	EXPECT(0, finish(a, 0), "FINISH");
	EXPECT(ENOENT, retrieve_fd(a, 2), "after FINISH, the unretrieved token is gone -> ENOENT");
	EXPECT(0, finish(a, 0), "FINISH again -> 0");
	EXPECT(0, finish(a, 5), "FINISH with reserved != 0 -> 0 (not validated)");
	if (f1 >= 0) {
		check(holds(f1, "alpha"), "the retrieved fd stays valid after FINISH");
		if (fresh >= 0)
			EXPECT(0, preserve(fresh, f1, 1), "after FINISH the memfd can be preserved again");
	}
	a2 = retrieve(name_of("a"));
	check(a2 < 0 && errno == EINVAL, "RETRIEVE_SESSION of the finished but open session -> EINVAL");
	close(a);
	EXPECT(ENOENT, retrieve(name_of("a")), "after closing the retrieved session -> ENOENT");
	if (f1 >= 0) {
		check(holds(f1, "alpha"), "the retrieved fd stays valid after the session is closed");
		close(f1);
	}
	if (fresh >= 0)
		close(fresh);

	b = EXPECT(0, retrieve(name_of("b")), "RETRIEVE_SESSION %s", name_of("b"));
	if (b >= 0) {
		out = retrieve_fd(b, 1);
		check(out >= 0 && holds(out, "bravo"), "b/1 holds \"bravo\"");
		close(b); /* no FINISH: closing finishes implicitly */
		EXPECT(ENOENT, retrieve(name_of("b")), "closing a retrieved session finishes it -> ENOENT");
		if (out >= 0)
			close(out);
	}

	d = EXPECT(0, retrieve(name_of("d")), "RETRIEVE_SESSION %s", name_of("d"));
	if (d >= 0) {
		walk_retrieve_fds(d);
		close(d);
	}
	close(dev);
	return check_summary();
}

int main(int argc, char **argv)
{
	name_prefix = argc >= 3 ? argv[2] : "rw"; /* the two phases must agree */
	if (argc >= 2 && !strcmp(argv[1], "prepare")) {
		dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
		if (!check(dev >= 0, "open /dev/liveupdate"))
			return check_summary();
		return prepare();
	}
	if (argc >= 2 && !strcmp(argv[1], "check"))
		return walk_after();
	fprintf(stderr, "usage: reboot_walk prepare|check [TAG]\n");
	return 2;
}
