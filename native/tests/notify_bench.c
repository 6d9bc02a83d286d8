/*
 * notify_bench: what the seccomp supervisor costs (bench/supervisor.py, `make bench`).
 *
 *   notify_bench roundtrip ROOT   run under luofs-supervise with the shim preloaded
 *                                 (and LUOFS_SUPERVISED unset, so the shim serves its
 *                                 own calls): min us per GET_NAME through the shim's
 *                                 ioctl(), through a raw syscall (the supervisor), and
 *                                 per one-request floor (a getxattr the daemon answers
 *                                 ENODATA), in interleaved blocks of the same process
 *   notify_bench unrelated        min ns per pipe FIONREAD (a raw syscall) and per
 *                                 openat+close of another file; run it with and
 *                                 without the filter to compare
 *   notify_bench allow-all        the same under a filter that allows everything:
 *                                 what any seccomp filter costs on this kernel
 *
 * The minimum over blocks is what the code costs; the rest is scheduling noise.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define BLOCKS 30

typedef int (*ioctl_fn)(int, unsigned long, ...);

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static double lower(double a, double b) { return a < b ? a : b; }

struct get_name { uint32_t size, reserved; char name[64]; };

static int roundtrip(const char *root)
{
	struct { uint32_t size; int32_t fd; char name[64]; } create = { 72, -1, "" };
	struct get_name get = { 72, 0, "" };
	ioctl_fn shim = (ioctl_fn)dlsym(RTLD_DEFAULT, "ioctl");
	char path[4096], value[8];
	double best_floor = 1e300, best_shim = 1e300, best_raw = 1e300;
	int dev, state, n = 100;

	snprintf(path, sizeof(path), "%s/dev/liveupdate", root);
	dev = open(path, O_RDWR | O_CLOEXEC);
	snprintf(path, sizeof(path), "%s/sys/kernel/liveupdate/state", root);
	state = open(path, O_RDONLY | O_CLOEXEC);
	snprintf(create.name, sizeof(create.name), "bench-%d", (int)getpid());
	if (dev < 0 || state < 0 || syscall(SYS_ioctl, dev, 0xBA00, &create) < 0)
		die("create session");
	for (int b = 0; b < BLOCKS; b++) {
		double t0 = now_ns(), t1, t2, t3;

		for (int i = 0; i < n; i++)
			if (fgetxattr(state, "user.none", value, sizeof(value)) >= 0 || errno != ENODATA)
				die("floor getxattr");
		t1 = now_ns();
		for (int i = 0; i < n; i++)
			if (shim(create.fd, 0xBA43, &get) < 0)
				die("GET_NAME through the shim");
		t2 = now_ns();
		for (int i = 0; i < n; i++)
			if (syscall(SYS_ioctl, create.fd, 0xBA43, &get) < 0)
				die("GET_NAME through the supervisor");
		t3 = now_ns();
		best_floor = lower(best_floor, (t1 - t0) / n);
		best_shim = lower(best_shim, (t2 - t1) / n);
		best_raw = lower(best_raw, (t3 - t2) / n);
	}
	printf("floor %.1f us, shim %.1f us, supervisor %.1f us\n", best_floor / 1000,
	       best_shim / 1000, best_raw / 1000);
	return 0;
}

static int unrelated(void)
{
	double best_pipe = 1e300, best_open = 1e300;
	int p[2], avail, n = 20000;

	if (pipe(p) != 0)
		die("pipe");
	for (int b = 0; b < BLOCKS; b++) {
		double t0 = now_ns(), t1, t2;

		for (int i = 0; i < n; i++)
			if (syscall(SYS_ioctl, p[0], FIONREAD, &avail) < 0)
				die("FIONREAD");
		t1 = now_ns();
		for (int i = 0; i < n / 4; i++) {
			int fd = (int)syscall(SYS_openat, AT_FDCWD, "/etc/hostname", O_RDONLY | O_CLOEXEC);

			if (fd < 0)
				die("openat");
			syscall(SYS_close, fd);
		}
		t2 = now_ns();
		best_pipe = lower(best_pipe, (t1 - t0) / n);
		best_open = lower(best_open, (t2 - t1) / (n / 4));
	}
	printf("fionread %.1f ns, openat %.1f ns\n", best_pipe, best_open);
	return 0;
}

static int under_allow_all(void)
{
	struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	struct sock_fprog prog = { .len = 1, .filter = &allow };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
	    syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW, &prog) != 0)
		die("seccomp");
	return unrelated();
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "roundtrip"))
		return roundtrip(argv[2]);
	if (argc == 2 && !strcmp(argv[1], "unrelated"))
		return unrelated();
	if (argc == 2 && !strcmp(argv[1], "allow-all"))
		return under_allow_all();
	fprintf(stderr, "usage: notify_bench roundtrip ROOT | unrelated | allow-all\n");
	return 2;
}
