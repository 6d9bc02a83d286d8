/*
 * The emulator's kexec: `luofs kexec --root ROOT` (or $LUOFS_BIN), run and
 * waited for on behalf of a program's reboot(LINUX_REBOOT_CMD_KEXEC).
 *
 * posix_spawnp rather than fork+exec: it is safe in multi-threaded callers
 * (no atfork handlers, no copied locks) and reports a failed exec as an error
 * instead of a child exit status that could be mistaken for luofs's own.
 *
 * Exit status → errno, following what `luofs kexec` does (luofs/cli.py
 * cmd_kexec): when the freeze refuses, it exits with the errno itself, which
 * is what reboot() must return (spec §14 step 2); its own failures exit 1.
 *   0            success
 *   2..133       that errno (EBUSY, EINVAL, …). Caveat: argparse also exits 2
 *                on a usage error, which then reads as ENOENT.
 *   1, other statuses, or death by a signal: EIO
 * A luofs that cannot be started gives the exec errno (ENOENT, EACCES, …).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shim.h"

#define KEXEC_ERRNO_MAX 133

extern char **environ;

static int status_to_errno(int status)
{
	int code;

	if (!WIFEXITED(status))
		return EIO;
	code = WEXITSTATUS(status);
	if (code == 0)
		return 0;
	if (code >= 2 && code <= KEXEC_ERRNO_MAX)
		return code;
	return EIO;
}

int luofs_run_kexec(const char *root, int out_fd)
{
	return luofs_run_kexec_args(root, NULL, out_fd);
}

int luofs_run_kexec_args(const char *root, const char *const extra[], int out_fd)
{
	const char *bin = getenv("LUOFS_BIN");
	char *argv[8] = { "luofs", "kexec", "--root", (char *)root };
	posix_spawn_file_actions_t actions;
	pid_t pid;
	int status, err;

	for (size_t i = 0; extra && extra[i]; i++) {
		if (4 + i >= sizeof(argv) / sizeof(argv[0]) - 1)
			return E2BIG;
		argv[4 + i] = (char *)extra[i];
	}
	if (!bin || !*bin)
		bin = "luofs";
	/* luofs reports on stdout; a reboot() must not write into the caller's
	 * output (luoctl ... kexec > data), so its stdout goes to stderr. */
	err = posix_spawn_file_actions_init(&actions);
	if (err)
		return err;
	posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
	if (out_fd != STDERR_FILENO)
		posix_spawn_file_actions_adddup2(&actions, out_fd, STDERR_FILENO);
	err = strchr(bin, '/') ? posix_spawn(&pid, bin, &actions, NULL, argv, environ)
			       : posix_spawnp(&pid, bin, &actions, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&actions);
	if (err)
		return err;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return EIO; /* e.g. ECHILD: a SIGCHLD handler reaped it */
	}
	return status_to_errno(status);
}
