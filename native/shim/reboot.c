/*
 * reboot(LINUX_REBOOT_CMD_KEXEC) becomes `luofs kexec --root $LUOFS_ROOT`.
 *
 * Programs trigger a live update by calling reboot() with the session fds still
 * open (spec/uapi.md §14); here the emulator's kexec is a command, so we run it
 * and wait (run_kexec.c). On success the call returns 0: unlike the real kernel,
 * the caller lives on (its old session fds are dead, as DESIGN.md describes). The
 * seccomp supervisor runs the same command but never lets the caller return;
 * under it (LUOFS_SUPERVISED) the call goes to the kernel, i.e. to it.
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

	if (howto != (int)LINUX_REBOOT_CMD_KEXEC || !luofs_shim_serves(false))
		return SHIM_REAL(reboot)(howto);
	err = luofs_run_kexec(root, STDERR_FILENO);
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}
