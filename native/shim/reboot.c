/*
 * reboot(LINUX_REBOOT_CMD_KEXEC) becomes `luofs kexec --root $LUOFS_ROOT`.
 *
 * Programs trigger a live update by calling reboot() with the session fds still
 * open (spec/uapi.md §14); here the emulator's kexec is a command, so we run it
 * and wait (run_kexec.c). As on a machine, a kexec that happened never returns:
 * the caller ends with status 0 (inside a luofs userspace the machine has
 * already killed it with the rest of the old userspace). A refused freeze
 * returns -1 with the kernel's errno, and the old kernel keeps serving.
 *
 * No other command reaches the host's reboot(2), whatever LUOFS_ROOT says: a
 * program that falls back to RB_AUTOBOOT when a kexec fails (init systems do)
 * must never reboot the machine it runs on. RESTART, RESTART2, HALT, POWER_OFF
 * and SW_SUSPEND fail with EPERM (as for a process without CAP_SYS_BOOT);
 * CAD_ON/CAD_OFF succeed and change nothing; unknown commands fail with EINVAL,
 * as the kernel's. kexec.c routes syscall(SYS_reboot, ...) here too.
 *
 * Under the seccomp supervisor (LUOFS_SUPERVISED) the call goes to the kernel,
 * i.e. to the supervisor, which follows the same rules.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/reboot.h>
#include <sys/reboot.h>
#include <unistd.h>

#include "shim.h"

SHIM_SLOT(reboot);

SHIM_EXPORT int reboot(int howto)
{
	const char *root = luofs_root_env();
	int err;

	if (root && !luofs_shim_serves(false))
		return SHIM_REAL(reboot)(howto); /* trapped: the supervisor answers */
	switch ((unsigned int)howto) {
	case LINUX_REBOOT_CMD_KEXEC:
		if (!root) {
			err = EPERM; /* no emulator to hand over to: never the host's kexec */
			break;
		}
		err = luofs_run_kexec(root, STDERR_FILENO);
		if (!err)
			_exit(0); /* the old kernel's userspace is over */
		break;
	case LINUX_REBOOT_CMD_CAD_ON:
	case LINUX_REBOOT_CMD_CAD_OFF:
		return 0;
	case LINUX_REBOOT_CMD_RESTART:
	case LINUX_REBOOT_CMD_RESTART2:
	case LINUX_REBOOT_CMD_HALT:
	case LINUX_REBOOT_CMD_POWER_OFF:
	case LINUX_REBOOT_CMD_SW_SUSPEND:
		err = EPERM;
		break;
	default:
		err = EINVAL;
	}
	errno = err;
	return -1;
}
