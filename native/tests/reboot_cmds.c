/*
 * reboot_cmds: reboot(2), kexec_file_load(2) and kexec_load(2) as a program sees
 * them under the shim (issue 13). Run it in a PID namespace of its own
 * (scripts/test-native-reboot.sh uses unshare -p -f --mount-proc): should the
 * shim ever let a call through, the kernel then ends that namespace, never the
 * host.
 *
 *   reboot_cmds errnos        every command but KEXEC, and the loads' errno paths
 *   reboot_cmds load CMDLINE  kexec_file_load with CMDLINE (the script checks that
 *                             the next kernel's proc/cmdline is CMDLINE)
 *   reboot_cmds kexec         a session with a memfd, then reboot(KEXEC): must not
 *                             return (prints its summary first)
 *   reboot_cmds refused       the same where the freeze refuses: -1 with the
 *                             kernel's errno (EBUSY), and the session still works
 *   reboot_cmds no-root       without LUOFS_ROOT nothing reaches the host either
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/liveupdate.h>
#include <linux/reboot.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "check.h"
#include "names.h"

#define KEXEC_FILE_UNLOAD 0x1
#define KEXEC_FILE_ON_CRASH 0x2
#define KEXEC_FILE_NO_INITRAMFS 0x4
#define KEXEC_ON_CRASH 0x1

static long file_load(int kernel, int initrd, const char *cmdline, unsigned long len,
		      unsigned long flags)
{
	return syscall(SYS_kexec_file_load, kernel, initrd, len, cmdline, flags);
}

static void walk_reboot_commands(void)
{
	EXPECT(EPERM, reboot(RB_AUTOBOOT), "reboot(RB_AUTOBOOT) never reboots the host");
	EXPECT(EPERM, reboot(RB_HALT_SYSTEM), "reboot(RB_HALT_SYSTEM)");
	EXPECT(EPERM, reboot(RB_POWER_OFF), "reboot(RB_POWER_OFF)");
	EXPECT(EPERM, reboot(RB_SW_SUSPEND), "reboot(RB_SW_SUSPEND)");
	EXPECT(0, reboot(RB_DISABLE_CAD), "reboot(RB_DISABLE_CAD) succeeds and changes nothing");
	EXPECT(0, reboot(RB_ENABLE_CAD), "reboot(RB_ENABLE_CAD)");
	EXPECT(EINVAL, reboot(0x12345678), "an unknown command");
	EXPECT(EPERM, syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
			       LINUX_REBOOT_CMD_RESTART2, "firmware"),
	       "syscall(SYS_reboot, RESTART2) goes through the shim too");
	EXPECT(EINVAL, syscall(SYS_reboot, 0xdeadbeef, LINUX_REBOOT_MAGIC2,
				LINUX_REBOOT_CMD_RESTART, NULL),
	       "syscall(SYS_reboot) with a wrong magic");
}

static void walk_load_errnos(void)
{
	static const char unterminated[3] = { 'a', '=', '1' };
	static char long_line[4096];
	int kernel = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	int dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int wronly = open("/dev/null", O_WRONLY | O_CLOEXEC);
	int nf = KEXEC_FILE_NO_INITRAMFS;

	memset(long_line, 'x', sizeof(long_line) - 1);
	EXPECT(EINVAL, file_load(kernel, -1, "", 1, 0x100), "kexec_file_load with unknown flags");
	EXPECT(EBADF, file_load(-1, -1, "", 1, nf), "kexec_file_load of fd -1");
	EXPECT(EBADF, file_load(wronly, -1, "", 1, nf), "kexec_file_load of a write-only fd");
	EXPECT(EINVAL, file_load(dir, -1, "", 1, nf), "kexec_file_load of a directory");
	EXPECT(EBADF, file_load(kernel, -1, "", 1, 0),
	       "kexec_file_load without NO_INITRAMFS needs an initrd fd");
	EXPECT(EINVAL, file_load(kernel, -1, unterminated, 3, nf),
	       "a command line that does not end in NUL");
	EXPECT(EINVAL, file_load(kernel, -1, long_line, sizeof(long_line), nf),
	       "a command line longer than COMMAND_LINE_SIZE");
	EXPECT(EFAULT, file_load(kernel, -1, (const char *)8, 4, nf),
	       "a command line at an unmapped address");
	EXPECT(0, file_load(-1, -1, NULL, 0, KEXEC_FILE_UNLOAD), "KEXEC_FILE_UNLOAD");
	EXPECT(0, file_load(kernel, -1, "crash", 6, nf | KEXEC_FILE_ON_CRASH),
	       "a crash kernel loads (and never runs here)");
	EXPECT(EINVAL, syscall(SYS_kexec_load, 0UL, 17UL, NULL, 0UL),
	       "kexec_load with more than KEXEC_SEGMENT_MAX segments");
	EXPECT(EINVAL, syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0x10UL), "kexec_load, unknown flags");
	EXPECT(EINVAL, syscall(SYS_kexec_load, 0UL, 0UL, NULL, 3UL << 16),
	       "kexec_load for another architecture");
	EXPECT(0, syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0UL), "kexec_load of no segments unloads");
	EXPECT(0, syscall(SYS_kexec_load, 0UL, 1UL, NULL, (unsigned long)KEXEC_ON_CRASH),
	       "kexec_load of a crash kernel");
	EXPECT(ENOSYS, syscall(-1L), "other numbers still reach the kernel (-1: ENOSYS)");
	EXPECT(0, syscall(SYS_kexec_file_load, kernel, -1, 0UL, NULL, (unsigned long)nf),
	       "kexec_file_load with no command line at all");
	EXPECT(0, file_load(-1, -1, NULL, 0, KEXEC_FILE_UNLOAD), "and unload it again");
	check(syscall(SYS_getpid) == getpid(), "syscall(SYS_getpid) is forwarded untouched");
	close(kernel);
	close(dir);
	close(wronly);
}

static int load(const char *cmdline)
{
	int kernel = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);

	EXPECT(0, file_load(kernel, -1, cmdline, strlen(cmdline) + 1, KEXEC_FILE_NO_INITRAMFS),
	       "kexec_file_load with \"%s\"", cmdline);
	close(kernel);
	return check_summary();
}

/* A session holding a memfd: what makes a freeze carry (or refuse) something. */
static int session_with_memfd(void)
{
	struct liveupdate_ioctl_create_session cs = { .size = sizeof(cs), .fd = -1 };
	struct liveupdate_session_preserve_fd pf = { .size = sizeof(pf), .token = 1 };
	int dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);

	snprintf((char *)cs.name, sizeof(cs.name), "%s", name_of("reboot"));
	pf.fd = memfd_create("reboot_cmds", MFD_CLOEXEC);
	check(dev >= 0 && ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &cs) == 0 &&
	      ioctl(cs.fd, LIVEUPDATE_SESSION_PRESERVE_FD, &pf) == 0,
	      "a session %s with a memfd", name_of("reboot"));
	return cs.fd;
}

static int kexec(bool refused)
{
	struct liveupdate_session_get_name gn = { .size = sizeof(gn) };
	int session = session_with_memfd(), rc;

	if (checks_failed)
		return check_summary();
	if (refused) {
		EXPECT(EBUSY, reboot(LINUX_REBOOT_CMD_KEXEC),
		       "reboot(KEXEC) when the freeze refuses returns the kernel's errno");
		check(ioctl(session, LIVEUPDATE_SESSION_GET_NAME, &gn) == 0,
		      "the old kernel keeps serving: the session still works");
		return check_summary();
	}
	printf("reboot(LINUX_REBOOT_CMD_KEXEC) next: ");
	check_summary();
	fflush(stdout);
	rc = reboot(LINUX_REBOOT_CMD_KEXEC);
	check(false, "reboot(KEXEC) returned %d (%s): a kexec must never return", rc,
	      errno_name(errno));
	return check_summary();
}

static int no_root(void)
{
	int kernel = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);

	EXPECT(EPERM, reboot(LINUX_REBOOT_CMD_KEXEC), "no LUOFS_ROOT: reboot(KEXEC)");
	EXPECT(EPERM, reboot(RB_AUTOBOOT), "no LUOFS_ROOT: reboot(RB_AUTOBOOT)");
	EXPECT(EPERM, file_load(kernel, -1, "", 1, KEXEC_FILE_NO_INITRAMFS),
	       "no LUOFS_ROOT: kexec_file_load");
	EXPECT(EPERM, syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0UL), "no LUOFS_ROOT: kexec_load");
	close(kernel);
	return check_summary();
}

int main(int argc, char **argv)
{
	static char prefix[24];

	snprintf(prefix, sizeof(prefix), "rc%d", (int)getpid());
	name_prefix = prefix;
	if (argc == 2 && !strcmp(argv[1], "errnos")) {
		walk_reboot_commands();
		walk_load_errnos();
		return check_summary();
	}
	if (argc == 2 && !strcmp(argv[1], "no-root"))
		return no_root();
	if (argc == 3 && !strcmp(argv[1], "load"))
		return load(argv[2]);
	if (argc == 2 && (!strcmp(argv[1], "kexec") || !strcmp(argv[1], "refused")))
		return kexec(!strcmp(argv[1], "refused"));
	fprintf(stderr, "usage: reboot_cmds errnos | load CMDLINE | kexec | refused | no-root\n");
	return 64;
}
