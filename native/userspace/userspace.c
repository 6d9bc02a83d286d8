/*
 * luofs-userspace: one emulated kernel's userspace (DESIGN.md, "The machine has a
 * userspace"): a PID namespace, and a mount namespace in which the kernel's files
 * appear at their real paths while the host's files stay as they are, both owned
 * by a user namespace that maps every id to itself (root there is root for files,
 * but cannot remount the host's file systems or reboot it).
 *
 *   luofs-userspace ROOT [--debugfs] [--hold] [--cgroup DIR] [--setenv NAME=VALUE]...
 *                   [-- INIT [ARG]...]
 *
 * The machine starts one after each kernel serves ROOT. This process makes the
 * mount namespace and forks PID 1 of the new PID namespace: INIT if given (with
 * the --setenv variables: the shim and LUOFS_ROOT), else a reaper that only
 * collects orphans. It prints "pid N" (PID 1 as the machine sees it) once PID 1
 * runs and, once its stdin is closed (the machine holds a pidfd of PID 1 by
 * then: until this process reaps it, N cannot name another process), waits and
 * prints how PID 1 ended: "exit STATUS" or "signal SIGNO".
 * --hold makes the next kernel's userspace ahead of time, as the next kernel is
 * loaded before a kexec (so a VMM's successor can start in it before the
 * freeze): PID 1 only reaps until the machine writes a byte to stdin (after
 * --rebind gave the namespace the next kernel's files), then becomes INIT or
 * the reaper. --cgroup puts PID 1 (and so everything of the userspace, never this
 * process) into the cgroup v2 directory DIR, which a kexec freezes (luofs/freezer.py).
 * Ending PID 1 (the machine's SIGKILL at a kexec, or INIT exiting) makes the
 * kernel kill every process of the namespace; this process exits after them.
 * `luofs run` joins a userspace with setns(2) on PID 1's pidfd.
 *
 *   luofs-userspace --rebind PID1 ROOT [--debugfs]
 *
 * carries a userspace over a kexec (`luofs kexec --keep-userspace`): ROOT and
 * the emulated files in PID1's mount namespace are bound again to the next
 * kernel's mount, cloned here (open_tree) and moved there (move_mount).
 *
 * The mount namespace, private so nothing propagates back to the host:
 *   /dev/liveupdate          ROOT/dev/liveupdate (when the ABI has a device)
 *   /proc                    a new procfs for the PID namespace, and over its
 *   /proc/cmdline            ROOT/proc/cmdline
 *   /sys/kernel/liveupdate   ROOT/sys/kernel/liveupdate
 *   /sys/kernel/debug/kho    ROOT/sys/kernel/debug/kho (--debugfs)
 * A bind mount needs a target: where the host has none (/dev/liveupdate), the
 * parent directory becomes a tmpfs holding each original entry bind-mounted
 * back (symlinks copied), as sandboxes build /dev, plus the new entry.
 *
 * Unhappy paths: any failure before PID 1 runs prints "error: WHAT: REASON" and
 * exits 1 with no process left; an original entry that cannot be put back is
 * left out of the userspace, with a warning on stderr (the userspace log). Should the machine die, PR_SET_PDEATHSIG ends
 * this process, and with it PID 1 and its namespace.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_SETENV 16

struct options {
	const char *root;
	bool debugfs;
	bool hold;
	const char *cgroup;
	const char *setenv[MAX_SETENV];
	int nsetenv;
	char **init; /* NULL: be a reaper */
};

static char error[512];

static bool failed(const char *fmt, ...)
{
	int saved = errno;
	size_t n;
	va_list ap;

	va_start(ap, fmt);
	n = (size_t)vsnprintf(error, sizeof(error), fmt, ap);
	va_end(ap);
	if (n < sizeof(error))
		snprintf(error + n, sizeof(error) - n, ": %s", strerror(saved));
	return false;
}

static bool bind(const char *src, const char *dst)
{
	if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL) != 0)
		return failed("bind %s on %s", src, dst);
	return true;
}

static bool exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* An empty file or directory to bind something of that kind on. */
static bool make_target(const char *path, bool dir)
{
	int fd;

	if (dir)
		return mkdir(path, 0755) == 0 || failed("mkdir %s", path);
	fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0)
		return failed("create %s", path);
	close(fd);
	return true;
}

/* Puts back one entry of the directory the tmpfs now hides (dirfd still names it). */
static bool restore_entry(int dirfd, const char *dir, const char *name)
{
	char src[64 + NAME_MAX], dst[PATH_MAX], link[PATH_MAX];
	struct stat st;
	ssize_t n;

	snprintf(dst, sizeof(dst), "%s/%s", dir, name);
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
		return true; /* gone meanwhile */
	if (S_ISLNK(st.st_mode)) {
		n = readlinkat(dirfd, name, link, sizeof(link) - 1);
		if (n < 0)
			return failed("readlink %s", dst);
		link[n] = '\0';
		return symlink(link, dst) == 0 || failed("symlink %s", dst);
	}
	snprintf(src, sizeof(src), "/proc/self/fd/%d/%s", dirfd, name);
	return make_target(dst, S_ISDIR(st.st_mode)) && bind(src, dst);
}

/* dir/name appears as src: a bind on the entry if dir has one, else dir becomes a
 * tmpfs with its entries put back and name added. */
static bool add_entry(const char *dir, const char *name, const char *src)
{
	char dst[PATH_MAX], mode[32];
	struct stat st;
	struct dirent *e;
	DIR *listing;
	int dirfd;

	snprintf(dst, sizeof(dst), "%s/%s", dir, name);
	if (exists(dst))
		return bind(src, dst);
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0 || fstat(dirfd, &st) != 0)
		return failed("open %s", dir);
	snprintf(mode, sizeof(mode), "mode=%o", st.st_mode & 07777);
	if (mount("tmpfs", dir, "tmpfs", MS_NOSUID, mode) != 0) {
		close(dirfd);
		return failed("mount a tmpfs on %s", dir);
	}
	listing = fdopendir(dup(dirfd));
	if (!listing) {
		close(dirfd);
		return failed("list %s", dir);
	}
	/* One entry that cannot be put back is missing from this userspace, no more. */
	while ((e = readdir(listing)) != NULL) {
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
		    !restore_entry(dirfd, dir, e->d_name))
			fprintf(stderr, "luofs-userspace: warning: %s\n", error);
	}
	closedir(listing);
	close(dirfd);
	if (stat(src, &st) != 0)
		return failed("stat %s", src);
	return make_target(dst, S_ISDIR(st.st_mode)) && bind(src, dst);
}

/* Everything but /proc, which only PID 1 can mount for its namespace. */
static bool build_mounts(const struct options *o)
{
	char src[PATH_MAX];

	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
		return failed("make / private");
	snprintf(src, sizeof(src), "%s/dev/liveupdate", o->root);
	if (exists(src) && !add_entry("/dev", "liveupdate", src))
		return false;
	snprintf(src, sizeof(src), "%s/sys/kernel/liveupdate", o->root);
	if (exists(src) && !add_entry("/sys/kernel", "liveupdate", src))
		return false;
	snprintf(src, sizeof(src), "%s/sys/kernel/debug/kho", o->root);
	if (o->debugfs && exists(src) && !add_entry("/sys/kernel/debug", "kho", src))
		return false;
	return true;
}

static bool mount_proc(const struct options *o)
{
	char src[PATH_MAX];

	if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		return failed("mount /proc");
	snprintf(src, sizeof(src), "%s/proc/cmdline", o->root);
	return bind(src, "/proc/cmdline");
}

/* The emulated files, ROOT-relative, and where they appear. */
static const char *const emulated[][2] = {
	{ "/dev/liveupdate", "/dev/liveupdate" },
	{ "/proc/cmdline", "/proc/cmdline" },
	{ "/sys/kernel/liveupdate", "/sys/kernel/liveupdate" },
	{ "/sys/kernel/debug/kho", "/sys/kernel/debug/kho" },
};

static int rebind(pid_t pid1, const char *root)
{
	char src[PATH_MAX];
	int tree, pidfd;

	tree = (int)syscall(SYS_open_tree, AT_FDCWD, root,
			    OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
	pidfd = (int)syscall(SYS_pidfd_open, pid1, 0);
	if (tree < 0 || pidfd < 0 || setns(pidfd, CLONE_NEWNS) != 0) {
		printf("error: enter the mount namespace of %d: %s\n", (int)pid1, strerror(errno));
		return 1;
	}
	umount2(root, MNT_DETACH); /* the old kernel's mount, long dead */
	if (syscall(SYS_move_mount, tree, "", AT_FDCWD, root, MOVE_MOUNT_F_EMPTY_PATH) != 0) {
		printf("error: mount the next kernel at %s: %s\n", root, strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < sizeof(emulated) / sizeof(emulated[0]); i++) {
		snprintf(src, sizeof(src), "%s%s", root, emulated[i][0]);
		if (umount2(emulated[i][1], MNT_DETACH) != 0)
			continue; /* not bound in this userspace (no such file in this ABI) */
		if (!bind(src, emulated[i][1])) {
			printf("error: %s\n", error);
			return 1;
		}
	}
	return 0;
}

/* 0 0 4294967295 into /proc/PID/{uid,gid}_map: every id maps to itself. */
static bool write_map(pid_t pid, const char *which)
{
	static const char map[] = "0 0 4294967295";
	char path[64];
	int fd;
	bool ok;

	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, which);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	ok = fd >= 0 && write(fd, map, sizeof(map) - 1) == (ssize_t)(sizeof(map) - 1);
	if (!ok)
		failed("write %s", path);
	if (fd >= 0)
		close(fd);
	return ok;
}

/* Moves on in a user namespace that maps every uid and gid to itself: files behave
 * as for root, but what only the host's root may do (remount or unmount the host's
 * file systems, reboot, load modules) is refused, so an init's shutdown path never
 * reaches the host (DESIGN.md, "Pitfalls"). Only a process outside the namespace
 * may write such a map: this process forks, the child goes on, and the parent
 * writes the maps, waits for the child and exits with its status. */
static void enter_user_namespace(void)
{
	int to_child[2], to_parent[2], status;
	char c = 0;
	pid_t child;

	if (pipe2(to_child, O_CLOEXEC) != 0 || pipe2(to_parent, O_CLOEXEC) != 0 ||
	    (child = fork()) < 0) {
		printf("error: fork: %s\n", strerror(errno));
		exit(1);
	}
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (unshare(CLONE_NEWUSER) != 0) {
			printf("error: unshare(CLONE_NEWUSER): %s\n", strerror(errno));
			_exit(1);
		}
		if (write(to_parent[1], "u", 1) != 1 || read(to_child[0], &c, 1) != 1)
			_exit(1); /* the parent said why */
		close(to_child[0]);
		close(to_child[1]);
		close(to_parent[0]);
		close(to_parent[1]);
		return;
	}
	close(to_parent[1]);
	if (read(to_parent[0], &c, 1) == 1) {
		if (write_map(child, "uid_map") && write_map(child, "gid_map")) {
			if (write(to_child[1], "m", 1) != 1)
				failed("resume the namespace child");
		} else {
			printf("error: %s\n", error);
		}
	}
	close(to_child[1]);
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

/* --hold: reap whatever ends until the launcher closes `go` (EOF), then go on. */
static void hold_until_go(int go)
{
	struct pollfd p = { .fd = go, .events = POLLIN };
	char c;

	for (;;) {
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		if (poll(&p, 1, 200) > 0 && read(go, &c, 1) <= 0)
			break;
	}
	close(go);
}

static void reap_forever(void)
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	for (;;) {
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		sigwait(&set, &sig);
	}
}

/* PID 1 joins o->cgroup (writing 0 moves the writer), before it has any child. */
static bool join_cgroup(const struct options *o)
{
	char path[PATH_MAX];
	int fd;
	bool ok;

	if (!o->cgroup)
		return true;
	snprintf(path, sizeof(path), "%s/cgroup.procs", o->cgroup);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	ok = fd >= 0 && write(fd, "0", 1) == 1;
	if (!ok)
		failed("join %s", o->cgroup);
	if (fd >= 0)
		close(fd);
	return ok;
}

/* PID 1: finish the namespace, tell the parent through `ready`, become init. */
static void pid1(const struct options *o, int ready, int go)
{
	int null;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (!join_cgroup(o) || !mount_proc(o)) {
		if (write(ready, error, strlen(error)) < 0)
			_exit(2);
		_exit(1);
	}
	setsid();
	null = open("/dev/null", O_RDONLY);
	if (null >= 0 && null != STDIN_FILENO) {
		dup2(null, STDIN_FILENO);
		close(null);
	}
	dup2(STDERR_FILENO, STDOUT_FILENO); /* the machine reads our parent's stdout */
	for (int i = 0; i < o->nsetenv; i++)
		putenv((char *)o->setenv[i]);
	close(ready); /* EOF without a word: PID 1 runs */
	if (go >= 0)
		hold_until_go(go);
	if (!o->init)
		reap_forever();
	execvp(o->init[0], o->init);
	fprintf(stderr, "luofs-userspace: cannot run init %s: %s\n", o->init[0], strerror(errno));
	_exit(127);
}

static int parse(int argc, char **argv, struct options *o)
{
	int i = 2;

	if (argc < 2 || argv[1][0] != '/')
		return -1;
	o->root = argv[1];
	for (; i < argc; i++) {
		if (!strcmp(argv[i], "--debugfs")) {
			o->debugfs = true;
		} else if (!strcmp(argv[i], "--hold")) {
			o->hold = true;
		} else if (!strcmp(argv[i], "--cgroup") && i + 1 < argc) {
			o->cgroup = argv[++i];
		} else if (!strcmp(argv[i], "--setenv") && i + 1 < argc && o->nsetenv < MAX_SETENV &&
			   strchr(argv[i + 1], '=')) {
			o->setenv[o->nsetenv++] = argv[++i];
		} else if (!strcmp(argv[i], "--")) {
			o->init = i + 1 < argc ? argv + i + 1 : NULL;
			return 0;
		} else {
			return -1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct options o = { 0 };
	int ready[2], go[2] = { -1, -1 }, status;
	char word[sizeof(error)];
	ssize_t n;
	pid_t pid;

	if (argc >= 4 && !strcmp(argv[1], "--rebind"))
		return rebind((pid_t)atoi(argv[2]), argv[3]);
	if (parse(argc, argv, &o) != 0) {
		fprintf(stderr, "usage: luofs-userspace /ROOT [--debugfs] [--hold] [--cgroup DIR] [--setenv NAME=VALUE]... "
				"[-- INIT [ARG]...]\n       luofs-userspace --rebind PID1 /ROOT\n");
		return 64;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	enter_user_namespace();
	if (unshare(CLONE_NEWNS | CLONE_NEWPID) != 0) {
		printf("error: unshare(CLONE_NEWNS | CLONE_NEWPID): %s\n", strerror(errno));
		return 1;
	}
	if (!build_mounts(&o) || pipe2(ready, O_CLOEXEC) != 0 ||
	    (o.hold && pipe2(go, O_CLOEXEC) != 0)) {
		printf("error: %s\n", error);
		return 1;
	}
	pid = fork();
	if (pid < 0) {
		printf("error: fork: %s\n", strerror(errno));
		return 1;
	}
	if (pid == 0) {
		close(ready[0]);
		if (go[1] >= 0)
			close(go[1]);
		pid1(&o, ready[1], go[0]);
	}
	close(ready[1]);
	if (go[0] >= 0)
		close(go[0]);
	n = read(ready[0], word, sizeof(word) - 1);
	close(ready[0]);
	if (n > 0) {
		word[n] = '\0';
		printf("error: %s\n", word);
		waitpid(pid, NULL, 0);
		return 1;
	}
	printf("pid %d\n", (int)pid);
	while (read(STDIN_FILENO, word, 1) < 0 && errno == EINTR)
		;
	if (go[1] >= 0) /* held: that byte (or EOF) lets PID 1 go */
		close(go[1]);
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return 1;
	}
	if (WIFSIGNALED(status))
		printf("signal %d\n", WTERMSIG(status));
	else
		printf("exit %d\n", WEXITSTATUS(status));
	return 0;
}
