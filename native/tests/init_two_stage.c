/*
 * init_two_stage: a PID 1 that runs a whole live update by itself, as the
 * kernel's own LUO VM tests do (`luofs boot --init init_two_stage -- STATE`).
 *
 * Every kernel's userspace starts it again; the stage comes from /proc/cmdline:
 *   stage 1 (no luo_stage=2): create a session, preserve a memfd holding a
 *     pattern, leave a daemon child behind (its name, from STATE's, goes to
 *     STATE), load the next kernel with kexec_file_load(cmdline + " luo_stage=2")
 *     and reboot(LINUX_REBOOT_CMD_KEXEC), which must not return;
 *   stage 2: retrieve the session and the memfd, check every byte, FINISH,
 *     append "stage 2: ok" to STATE and exit 0 (the userspace is then over:
 *     `luofs status` shows how init ended).
 * Lines go to stdout (the instance's userspace.log). Any failure exits 1.
 * scripts/test-native-init.sh checks from outside that the daemon is gone.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/liveupdate.h>
#include <linux/reboot.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "check.h"

#define SESSION "init-two-stage"
#define TOKEN 0x1d
#define SIZE (1 << 20)
#define KEXEC_FILE_NO_INITRAMFS 0x4

static const char *state_path;

static uint8_t pattern(size_t i) { return (uint8_t)(i * 131 + (i >> 12)); }

static void note(const char *fmt, const char *arg)
{
	FILE *f = fopen(state_path, "a");

	if (f) {
		fprintf(f, fmt, arg);
		fclose(f);
	}
}

static int session_ioctl(unsigned long request)
{
	struct liveupdate_ioctl_create_session arg = { .size = sizeof(arg), .fd = -1 };
	int dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC); /* the real path */

	memcpy(arg.name, SESSION, sizeof(SESSION));
	if (dev < 0 || ioctl(dev, request, &arg) < 0)
		arg.fd = -1;
	if (dev >= 0)
		close(dev);
	return arg.fd;
}

static int stage1(const char *cmdline)
{
	struct liveupdate_session_preserve_fd pf = { .size = sizeof(pf), .token = TOKEN };
	char next[2048], comm[16];
	int session, kernel;
	uint8_t *map;
	ssize_t n;

	session = session_ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION);
	pf.fd = memfd_create("guest", MFD_CLOEXEC);
	map = pf.fd >= 0 && ftruncate(pf.fd, SIZE) == 0
		      ? mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, pf.fd, 0) : MAP_FAILED;
	if (!check(session >= 0 && map != MAP_FAILED, "stage 1: create %s and a memfd", SESSION))
		return check_summary();
	for (size_t i = 0; i < SIZE; i++)
		map[i] = pattern(i);
	EXPECT(0, ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, &pf), "stage 1: preserve the memfd");
	/* A daemon of the old userspace, named after STATE so that the script can
	 * find it from outside (PID namespace ids are reused): the kexec must end it. */
	n = (ssize_t)strlen(state_path);
	snprintf(comm, sizeof(comm), "s1d-%s", state_path + (n > 8 ? n - 8 : 0));
	if (fork() == 0) {
		setsid();
		prctl(PR_SET_NAME, comm);
		for (;;)
			pause();
	}
	note("stage 1: daemon %s\n", comm);
	snprintf(next, sizeof(next), "%s luo_stage=2", cmdline);
	kernel = open("/proc/self/exe", O_RDONLY | O_CLOEXEC); /* stands in for the image */
	EXPECT(0, syscall(SYS_kexec_file_load, kernel, -1, strlen(next) + 1, next,
			  KEXEC_FILE_NO_INITRAMFS), "stage 1: kexec_file_load with \"%s\"", next);
	if (checks_failed)
		return check_summary();
	printf("stage 1: reboot(LINUX_REBOOT_CMD_KEXEC) next\n");
	fflush(stdout);
	reboot(LINUX_REBOOT_CMD_KEXEC);
	check(false, "stage 1: reboot(KEXEC) returned (%s): a kexec must never return",
	      errno_name(errno));
	return check_summary();
}

static int stage2(void)
{
	struct liveupdate_session_retrieve_fd rf = { .size = sizeof(rf), .token = TOKEN };
	struct liveupdate_session_finish fin = { .size = sizeof(fin) };
	int session = session_ioctl(LIVEUPDATE_IOCTL_RETRIEVE_SESSION);
	uint8_t *map = MAP_FAILED;
	size_t bad = SIZE;

	if (!check(session >= 0, "stage 2: retrieve %s", SESSION))
		return check_summary();
	if (EXPECT(0, ioctl(session, LIVEUPDATE_SESSION_RETRIEVE_FD, &rf), "stage 2: retrieve the memfd") == 0)
		map = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, rf.fd, 0);
	if (map != MAP_FAILED)
		for (bad = 0; bad < SIZE && map[bad] == pattern(bad); bad++)
			;
	check(bad == SIZE, "stage 2: all %d bytes came through (first difference at %zu)", SIZE, bad);
	EXPECT(0, ioctl(session, LIVEUPDATE_SESSION_FINISH, &fin), "stage 2: FINISH");
	close(session);
	if (!checks_failed)
		note("stage 2: %s\n", "ok");
	return check_summary();
}

int main(int argc, char **argv)
{
	char cmdline[2048] = "";
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof(cmdline) - 1) : -1;

	if (argc != 2) {
		fprintf(stderr, "usage: init_two_stage STATE_FILE (as luofs boot --init)\n");
		return 64;
	}
	state_path = argv[1];
	cmdline[n > 0 ? n : 0] = '\0';
	cmdline[strcspn(cmdline, "\n")] = '\0';
	printf("init_two_stage: pid %d, /proc/cmdline \"%s\"\n", (int)getpid(), cmdline);
	if (!check(getpid() == 1, "runs as PID 1 of its userspace"))
		return check_summary();
	return strstr(cmdline, "luo_stage=2") ? stage2() : stage1(cmdline);
}
