/*
 * static_update: a two-stage live update from a program no LD_PRELOAD shim can
 * reach. Built with gcc -static and musl-gcc -static; every LUO call is a raw
 * syscall(SYS_ioctl) / syscall(SYS_reboot), so only the seccomp supervisor
 * (`luofs run`) can serve it. Needs no luofs header beyond <linux/liveupdate.h>
 * and no glibc extension, so musl builds it.
 *
 *   static_update DEVICE stage1 NAME   preserve a patterned memfd in session NAME,
 *                                      check what the session fd reads as, fork a
 *                                      child that holds it (prints "holder PID")
 *   static_update DEVICE stage2 NAME   retrieve it in the next kernel, check, finish
 *   static_update DEVICE reboot NAME   stage 1 without a holder, then a raw
 *                                      reboot(LINUX_REBOOT_CMD_KEXEC): a kexec never
 *                                      returns, so "reboot returned" is a failure
 *                                      (exit 3), or the errno of a failed kexec
 *   static_update DEVICE signals NAME  300 CREATE_SESSIONs under a 50 us interval
 *                                      timer (SA_RESTART, as Go's SIGURG): none is
 *                                      interrupted midway and restarted into EEXIST
 *   static_update DEVICE refused NAME  reboot calls that must not reboot anything:
 *                                      bad magic EINVAL, POWER_OFF EPERM, CAD_ON 0,
 *                                      an unknown command EINVAL; and
 *                                      kexec_file_load without a kernel file EBADF
 *   static_update DEVICE load CMDLINE  kexec_file_load(/proc/self/exe, CMDLINE): the
 *                                      next kernel's proc/cmdline
 *
 * DEVICE is "/dev/liveupdate" inside the kernel's userspace, or ROOT/dev/liveupdate.
 * Prints one line per check; exits 0 iff all passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/liveupdate.h>
#include <linux/reboot.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ANON_INODE_FS_MAGIC 0x09041934
#define TOKEN 7
#define SIZE (1u << 20)

static int failed;

static void check(int ok, const char *what)
{
	if (ok)
		printf("ok   %s\n", what);
	else
		printf("FAIL %s (errno %s)\n", what, strerror(errno));
	fflush(stdout);
	failed += !ok;
}

static long luo_ioctl(int fd, unsigned long cmd, void *arg)
{
	return syscall(SYS_ioctl, fd, cmd, arg);
}

static int session_ioctl(int dev, unsigned long cmd, const char *name)
{
	struct liveupdate_ioctl_create_session arg = { .size = sizeof(arg) };

	snprintf((char *)arg.name, sizeof(arg.name), "%s", name);
	return luo_ioctl(dev, cmd, &arg) < 0 ? -1 : arg.fd;
}

static unsigned char pattern(size_t i)
{
	return (unsigned char)(i * 131 + (i >> 12));
}

/* What a real kernel shows for a session fd: its link and its file system. */
static void check_identity(int session, const char *name)
{
	char path[64], link[256], want[256];
	struct statfs st;
	long n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", session);
	n = syscall(SYS_readlinkat, AT_FDCWD, path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = '\0';
	snprintf(want, sizeof(want), "anon_inode:[luo_session] %s", name);
	check(strcmp(link, want) == 0, "the session fd reads as anon_inode:[luo_session] NAME");
	check(syscall(SYS_fstatfs, session, &st) == 0 && st.f_type == ANON_INODE_FS_MAGIC,
	      "fstatfs of the session fd says ANON_INODE_FS_MAGIC");
}

static int stage1(const char *device, const char *name, int hold)
{
	int dev = open(device, O_RDWR | O_CLOEXEC);
	int session = dev < 0 ? -1 : session_ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, name);
	struct liveupdate_session_preserve_fd p = { .size = sizeof(p), .token = TOKEN };
	int mem = (int)syscall(SYS_memfd_create, "static-update", 0);
	unsigned char *data;
	long rc;

	check(dev >= 0, "open the device");
	check(session >= 0, "CREATE_SESSION");
	errno = 0;
	rc = session_ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, name);
	check(rc < 0 && errno == EEXIST, "CREATE_SESSION of the same name -> EEXIST");
	errno = 0;
	check(luo_ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, NULL) < 0 && errno == EFAULT,
	      "PRESERVE_FD with a NULL argument -> EFAULT");
	p.fd = 999;
	errno = 0;
	check(luo_ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, &p) < 0 && errno == EBADF,
	      "PRESERVE_FD of an fd the caller does not hold -> EBADF");
	check(ftruncate(mem, SIZE) == 0, "size the memfd");
	data = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mem, 0);
	for (size_t i = 0; data != MAP_FAILED && i < SIZE; i++)
		data[i] = pattern(i);
	p.fd = mem;
	check(luo_ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, &p) == 0, "PRESERVE_FD the memfd");
	check_identity(session, name);
	close(mem);
	close(dev);
	if (!hold)
		return session;
	pid_t holder = fork();
	if (holder == 0) { /* keeps the session open across the kexec */
		for (int fd = 0; fd < 3; fd++)
			close(fd);
		pause();
		_exit(0);
	}
	printf("holder %d\n", (int)holder);
	close(session);
	return session;
}

static void stage2(const char *device, const char *name)
{
	int dev = open(device, O_RDWR | O_CLOEXEC);
	int session = dev < 0 ? -1 : session_ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, name);
	struct liveupdate_session_retrieve_fd r = { .size = sizeof(r), .token = TOKEN };
	struct liveupdate_session_finish fin = { .size = sizeof(fin) };
	unsigned char *data = MAP_FAILED;
	size_t bad = 0;

	check(session >= 0, "RETRIEVE_SESSION in the next kernel");
	check(luo_ioctl(session, LIVEUPDATE_SESSION_RETRIEVE_FD, &r) == 0 && r.fd >= 0,
	      "RETRIEVE_FD the memfd");
	check(r.fd >= 0 && (fcntl(r.fd, F_GETFD) & FD_CLOEXEC), "the retrieved fd is O_CLOEXEC");
	if (r.fd >= 0)
		data = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, r.fd, 0);
	for (size_t i = 0; data != MAP_FAILED && i < SIZE; i++)
		bad += data[i] != pattern(i);
	check(data != MAP_FAILED && bad == 0, "every byte of the memfd came through");
	check_identity(session, name);
	check(luo_ioctl(session, LIVEUPDATE_SESSION_FINISH, &fin) == 0, "FINISH");
	close(session);
}

static void on_tick(int sig)
{
	(void)sig;
}

static void signals(const char *device, const char *name)
{
	struct sigaction sa = { .sa_handler = on_tick, .sa_flags = SA_RESTART };
	struct itimerval every = { { 0, 50 }, { 0, 50 } }, off = { { 0, 0 }, { 0, 0 } };
	int dev = open(device, O_RDWR | O_CLOEXEC), created = 0;
	char each[64];

	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &every, NULL);
	for (int i = 0; dev >= 0 && i < 300; i++) {
		snprintf(each, sizeof(each), "%s-%d", name, i);
		int s = session_ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, each);

		if (s < 0) {
			printf("    CREATE_SESSION %s: %s\n", each, strerror(errno));
			break;
		}
		created++;
		close(s);
	}
	setitimer(ITIMER_REAL, &off, NULL);
	check(created == 300, "300 CREATE_SESSIONs under a signal every 50 us all succeed");
}

/* Run as PID 1 of a PID namespace of its own: a reboot that got through ends
 * only that namespace. */
static void refused(void)
{
	errno = 0;
	check(syscall(SYS_reboot, 0x12345678, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_KEXEC, NULL) < 0 &&
		      errno == EINVAL, "reboot with a bad magic number -> EINVAL");
	errno = 0;
	check(syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
		      LINUX_REBOOT_CMD_POWER_OFF, NULL) < 0 && errno == EPERM,
	      "reboot(LINUX_REBOOT_CMD_POWER_OFF) -> EPERM: nothing but a kexec is served");
	check(syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_CAD_ON,
		      NULL) == 0, "reboot(LINUX_REBOOT_CMD_CAD_ON) -> 0, changing nothing");
	errno = 0;
	check(syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, 0x12345678, NULL) < 0 &&
		      errno == EINVAL, "reboot with an unknown command -> EINVAL");
	errno = 0;
	check(syscall(SYS_kexec_file_load, -1, -1, 1, "", 0x4 /* KEXEC_FILE_NO_INITRAMFS */) < 0 &&
		      errno == EBADF, "kexec_file_load of no kernel file -> EBADF");
	errno = 0;
	check(syscall(SYS_kexec_file_load, 0, -1, 1, "", 0x100) < 0 && errno == EINVAL,
	      "kexec_file_load with an unknown flag -> EINVAL");
}

/* kexec_file_load records the next kernel's command line (then stage 2 reads it). */
static void load(const char *cmdline)
{
	int image = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);

	check(image >= 0 && syscall(SYS_kexec_file_load, image, -1, strlen(cmdline) + 1, cmdline,
				    0x4 /* KEXEC_FILE_NO_INITRAMFS */) == 0,
	      "kexec_file_load of a file with a command line -> 0");
	close(image);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: static_update DEVICE stage1|stage2|reboot NAME\n");
		return 2;
	}
	if (strcmp(argv[2], "stage1") == 0) {
		stage1(argv[1], argv[3], 1);
	} else if (strcmp(argv[2], "stage2") == 0) {
		stage2(argv[1], argv[3]);
	} else if (strcmp(argv[2], "reboot") == 0) {
		stage1(argv[1], argv[3], 0); /* the session stays open across the reboot */
		if (failed)
			return 1;
		printf("rebooting\n");
		fflush(stdout);
		syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
			LINUX_REBOOT_CMD_KEXEC, NULL);
		printf("reboot returned: %s\n", strerror(errno));
		return 3;
	} else if (strcmp(argv[2], "signals") == 0) {
		signals(argv[1], argv[3]);
	} else if (strcmp(argv[2], "refused") == 0) {
		refused();
	} else if (strcmp(argv[2], "load") == 0) {
		load(argv[3]);
	} else {
		return 2;
	}
	printf("%d failed\n", failed);
	return failed ? 1 : 0;
}
