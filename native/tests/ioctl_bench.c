/*
 * ioctl_bench: the cost of ioctl() calls, for comparing runs with and without
 * the shim (bench/shim.py, run by `make bench`).
 *
 *   ioctl_bench pipe     min ns per FIONREAD on a pipe through ioctl() (the shim's
 *                        fast path when preloaded), min ns through libc's own
 *                        ioctl, and their ratio; rounds alternate so both see
 *                        the same machine
 *   ioctl_bench session  min us per GET_NAME on a session fd (one FUSE round trip
 *                        under the shim)
 *
 * The minimum over several rounds is what the code costs;
 * the rest is scheduling noise.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 15

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

typedef int (*ioctl_fn)(int, unsigned long, ...);

static double per_call(ioctl_fn fn, int fd, unsigned long request, void *arg, int iterations)
{
	double start = now_ns();

	for (int i = 0; i < iterations; i++) {
		if (fn(fd, request, arg) < 0) {
			perror("ioctl");
			exit(1);
		}
	}
	return (now_ns() - start) / iterations;
}

static double min_per_call(ioctl_fn fn, int fd, unsigned long request, void *arg, int iterations)
{
	double best = 1e300;

	for (int r = 0; r < ROUNDS; r++) {
		double per = per_call(fn, fd, request, arg, iterations);

		best = per < best ? per : best;
	}
	return best;
}

static int bench_pipe(void)
{
	/* libc's definition, whatever is preloaded in front of it. */
	void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
	ioctl_fn direct = libc ? (ioctl_fn)dlsym(libc, "ioctl") : NULL;
	double best_via = 1e300, best_direct = 1e300;
	int p[2], avail;

	if (!direct || pipe(p) != 0) {
		fprintf(stderr, "cannot find libc's ioctl\n");
		return 1;
	}
	for (int r = 0; r < 3 * ROUNDS; r++) {
		double via = per_call(ioctl, p[0], FIONREAD, &avail, 50000);
		double dir = per_call(direct, p[0], FIONREAD, &avail, 50000);

		best_via = via < best_via ? via : best_via;
		best_direct = dir < best_direct ? dir : best_direct;
	}
	printf("ioctl %.2f ns, libc %.2f ns, interposed %s, ratio %.4f\n", best_via, best_direct,
	       dlsym(RTLD_DEFAULT, "ioctl") != (void *)direct ? "yes" : "no",
	       best_via / best_direct);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "pipe"))
		return bench_pipe();
	if (argc == 2 && !strcmp(argv[1], "session")) {
		/* struct liveupdate_ioctl_create_session / _get_name by hand: this
		 * file also builds without the LUO header. */
		struct { uint32_t size; int32_t fd; char name[64]; } create = { 72, -1, "bench" };
		struct { uint32_t size, reserved; char name[64]; } get = { 72, 0, "" };
		int dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);

		snprintf(create.name, sizeof(create.name), "bench-%d", (int)getpid());
		if (dev < 0 || ioctl(dev, 0xBA00, &create) < 0) {
			perror("create session");
			return 1;
		}
		printf("%.1f\n", min_per_call(ioctl, create.fd, 0xBA43, &get, 200) / 1000);
		return 0;
	}
	fprintf(stderr, "usage: ioctl_bench pipe|session\n");
	return 2;
}
