/*
 * vmm_two_stage: a VMM's live update, the way a real one would do it.
 *
 *   vmm_two_stage stage1   fill 32 MiB of "guest RAM" (a memfd) with a known pattern,
 *                          record the VMM's stage in a second memfd, preserve both in
 *                          session "vmm"; fork a child that keeps the session open
 *                          (prints its pid) and exit. Run `luofs kexec` now.
 *   vmm_two_stage stage2   in the new kernel: retrieve the session and both memfds,
 *                          check every byte of guest RAM and the stage record, finish.
 *
 * Built only on <linux/liveupdate.h> and ioctl(); runs under the shim or on a kernel.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/liveupdate.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"

#define RAM_SIZE (32u << 20)
#define PAGE 4096u
#define TOKEN_RAM 1
#define TOKEN_STATE 2
static const char stage_record[] = "vmm stage=1 vcpus=4 ram=32M\n";

static void fill_page(uint8_t *page, uint32_t index)
{
	uint32_t x = index * 2654435761u + 1;

	for (unsigned i = 0; i < PAGE; i += 4) {
		x ^= x << 13, x ^= x >> 17, x ^= x << 5; /* xorshift: every page differs */
		memcpy(page + i, &x, 4);
	}
}

static int session_ioctl(int dev, unsigned long cmd, const char *name)
{
	struct liveupdate_ioctl_create_session arg = { .size = sizeof(arg) };

	strncpy((char *)arg.name, name, sizeof(arg.name) - 1);
	if (ioctl(dev, cmd, &arg) < 0)
		return -1;
	return arg.fd;
}

static int stage1(void)
{
	int dev = EXPECT(0, open("/dev/liveupdate", O_RDWR), "open /dev/liveupdate");
	int session = EXPECT(0, session_ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, "vmm"),
			     "CREATE_SESSION vmm");
	int ram = memfd_create("guest-ram", MFD_CLOEXEC), state = memfd_create("vmm-state", 0);
	uint8_t *guest;
	struct liveupdate_session_preserve_fd p = { .size = sizeof(p) };
	pid_t holder;

	EXPECT(0, ftruncate(ram, RAM_SIZE), "size guest RAM");
	guest = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, ram, 0);
	check(guest != MAP_FAILED, "map guest RAM");
	for (uint32_t i = 0; i < RAM_SIZE / PAGE; i++)
		fill_page(guest + (size_t)i * PAGE, i);
	munmap(guest, RAM_SIZE);
	check(write(state, stage_record, sizeof(stage_record)) == sizeof(stage_record),
	      "record the stage");
	p.fd = ram, p.token = TOKEN_RAM;
	EXPECT(0, ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, &p), "PRESERVE_FD guest RAM");
	p.fd = state, p.token = TOKEN_STATE;
	EXPECT(0, ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, &p), "PRESERVE_FD VMM state");
	close(ram);
	close(state);
	close(dev);
	holder = fork();
	if (holder == 0) { /* keeps the session fd open until the old kernel is gone */
		for (int fd = 0; fd < 3; fd++)
			close(fd);
		pause();
		_exit(0);
	}
	close(session);
	printf("holder %d\n", holder);
	return check_summary();
}

static int stage2(void)
{
	int dev = EXPECT(0, open("/dev/liveupdate", O_RDWR), "open /dev/liveupdate (new kernel)");
	int session = EXPECT(0, session_ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, "vmm"),
			     "RETRIEVE_SESSION vmm");
	struct liveupdate_session_retrieve_fd r = { .size = sizeof(r), .token = TOKEN_RAM };
	struct liveupdate_session_finish fin = { .size = sizeof(fin) };
	uint8_t want[PAGE], *guest;
	char record[sizeof(stage_record)] = { 0 };
	uint32_t bad = 0;
	int ram, state;

	EXPECT(0, ioctl(session, LIVEUPDATE_SESSION_RETRIEVE_FD, &r), "RETRIEVE_FD guest RAM");
	ram = r.fd;
	r.token = TOKEN_STATE;
	EXPECT(0, ioctl(session, LIVEUPDATE_SESSION_RETRIEVE_FD, &r), "RETRIEVE_FD VMM state");
	state = r.fd;
	guest = mmap(NULL, RAM_SIZE, PROT_READ, MAP_SHARED, ram, 0);
	check(guest != MAP_FAILED, "map the retrieved guest RAM");
	for (uint32_t i = 0; guest != MAP_FAILED && i < RAM_SIZE / PAGE; i++) {
		fill_page(want, i);
		bad += memcmp(guest + (size_t)i * PAGE, want, PAGE) != 0;
	}
	check(bad == 0, "every page of guest RAM is intact (%u bad)", bad);
	check(pread(state, record, sizeof(record), 0) == sizeof(record) &&
		      strcmp(record, stage_record) == 0, "the stage record is intact");
	EXPECT(0, ioctl(session, LIVEUPDATE_SESSION_FINISH, &fin), "FINISH");
	close(session);
	return check_summary();
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "stage1") == 0)
		return stage1();
	if (argc == 2 && strcmp(argv[1], "stage2") == 0)
		return stage2();
	fprintf(stderr, "usage: vmm_two_stage stage1|stage2\n");
	return 2;
}
