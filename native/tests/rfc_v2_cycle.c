/*
 * An RFC v2 (May 2025) live-update cycle, as a program of that time would run it
 * (spec/rfc.md §3): preserve a memfd (the kernel picks the token), PREPARE,
 * FREEZE, reboot(LINUX_REBOOT_CMD_KEXEC), then in the new kernel GET_STATE,
 * FD_RESTORE, check the bytes, FINISH. Run under the shim with
 * `luofs boot --abi rfc-v2`.
 *
 *   rfc_v2_cycle            the whole cycle in one process (reboot() returns: the shim)
 *   rfc_v2_cycle before     up to and including reboot(), which a kernel never returns
 *                           from (the seccomp supervisor: the process ends there)
 *   rfc_v2_cycle after      the new kernel's half, in a new process
 *
 * The RFC's uapi header is long gone from the kernel, so its definitions are
 * spelled out here.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/reboot.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <unistd.h>

#include "check.h"

struct liveupdate_fd {
	int fd;
	uint32_t flags;
	uint64_t token;
};

enum liveupdate_state { LU_NORMAL = 0, LU_PREPARED = 1, LU_FROZEN = 2, LU_UPDATED = 3 };

#define LIVEUPDATE_IOCTL_FD_PRESERVE _IOWR(0xBA, 0x00, struct liveupdate_fd)
#define LIVEUPDATE_IOCTL_FD_UNPRESERVE _IOW(0xBA, 0x01, uint64_t)
#define LIVEUPDATE_IOCTL_FD_RESTORE _IOWR(0xBA, 0x02, struct liveupdate_fd)
#define LIVEUPDATE_IOCTL_GET_STATE _IOR(0xBA, 0x03, uint32_t)
#define LIVEUPDATE_IOCTL_EVENT_PREPARE _IO(0xBA, 0x04)
#define LIVEUPDATE_IOCTL_EVENT_FREEZE _IO(0xBA, 0x05)
#define LIVEUPDATE_IOCTL_EVENT_CANCEL _IO(0xBA, 0x06)
#define LIVEUPDATE_IOCTL_EVENT_FINISH _IO(0xBA, 0x07)

_Static_assert(LIVEUPDATE_IOCTL_FD_PRESERVE == 0xC010BA00, "FD_PRESERVE");
_Static_assert(LIVEUPDATE_IOCTL_GET_STATE == 0x8004BA03, "GET_STATE");

static const char payload[] = "guest memory kept by the RFC v2 ABI";

static uint32_t state_of(int dev)
{
	uint32_t state = 0xffffffff;

	ioctl(dev, LIVEUPDATE_IOCTL_GET_STATE, &state);
	return state;
}

/* Preserves, prepares and freezes, then reboots; returns what reboot() returned. */
static int before(void)
{
	int dev = EXPECT(0, open("/dev/liveupdate", O_RDWR), "open /dev/liveupdate");
	int second = EXPECT(0, open("/dev/liveupdate", O_RDWR), "a second opener is fine in v2");
	int mem = memfd_create("guest", 0);
	struct liveupdate_fd arg = { .fd = mem };
	uint64_t first_token;

	write(mem, payload, sizeof(payload));
	lseek(mem, 5, SEEK_SET);
	check(state_of(dev) == LU_NORMAL, "GET_STATE says NORMAL");
	EXPECT(0, ioctl(dev, LIVEUPDATE_IOCTL_FD_PRESERVE, &arg), "FD_PRESERVE the memfd");
	first_token = arg.token;
	check(first_token == 0, "the kernel's first token is 0 (got %llu)",
	      (unsigned long long)first_token);
	arg.flags = 1;
	EXPECT(EINVAL, ioctl(dev, LIVEUPDATE_IOCTL_FD_PRESERVE, &arg), "flags != 0 is EINVAL");
	EXPECT(ENOTTY, ioctl(dev, _IOWR(0xBA, 0x00, uint64_t), &arg), "another encoding is ENOTTY");
	EXPECT(EINVAL, ioctl(dev, LIVEUPDATE_IOCTL_EVENT_FREEZE), "FREEZE from NORMAL is EINVAL");
	EXPECT(0, ioctl(second, LIVEUPDATE_IOCTL_EVENT_PREPARE), "EVENT_PREPARE");
	check(state_of(dev) == LU_PREPARED, "GET_STATE says PREPARED");
	EXPECT(0, ioctl(dev, LIVEUPDATE_IOCTL_EVENT_CANCEL), "EVENT_CANCEL");
	check(state_of(dev) == LU_NORMAL, "back to NORMAL");
	EXPECT(0, ioctl(dev, LIVEUPDATE_IOCTL_EVENT_PREPARE), "EVENT_PREPARE again");
	EXPECT(0, ioctl(dev, LIVEUPDATE_IOCTL_EVENT_FREEZE), "EVENT_FREEZE");
	check(state_of(dev) == LU_FROZEN, "GET_STATE says FROZEN");
	close(second);
	close(dev);
	fflush(stdout);
	return (int)EXPECT(0, reboot(LINUX_REBOOT_CMD_KEXEC), "reboot(LINUX_REBOOT_CMD_KEXEC)");
}

/* The new kernel's half: the first kernel's first token is 0. */
static void after(void)
{
	int dev = EXPECT(0, open("/dev/liveupdate", O_RDWR), "open /dev/liveupdate in the new kernel");
	struct liveupdate_fd arg = { .fd = -1, .token = 0 };
	char back[sizeof(payload)] = { 0 };

	check(state_of(dev) == LU_UPDATED, "GET_STATE says UPDATED");
	EXPECT(0, ioctl(dev, LIVEUPDATE_IOCTL_FD_RESTORE, &arg), "FD_RESTORE the token");
	check(arg.fd >= 0 && (fcntl(arg.fd, F_GETFD) & FD_CLOEXEC), "the restored fd is close-on-exec");
	check(lseek(arg.fd, 0, SEEK_CUR) == 5, "the file position is carried");
	check(pread(arg.fd, back, sizeof(back), 0) == sizeof(payload) &&
		      memcmp(back, payload, sizeof(payload)) == 0, "every byte is carried");
	EXPECT(EINVAL, ioctl(dev, LIVEUPDATE_IOCTL_FD_RESTORE, &arg), "a second restore is EINVAL");
	EXPECT(0, ioctl(dev, LIVEUPDATE_IOCTL_EVENT_FINISH), "EVENT_FINISH");
	check(state_of(dev) == LU_NORMAL, "GET_STATE says NORMAL again");
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "after") == 0) {
		after();
	} else if (argc == 2 && strcmp(argv[1], "before") == 0) {
		before();
	} else if (argc == 1) {
		if (before() == 0)
			after();
	} else {
		fprintf(stderr, "usage: rfc_v2_cycle [before|after]\n");
		return 2;
	}
	return check_summary();
}
