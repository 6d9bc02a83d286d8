/*
 * One notification: what the supervisor answers for each trapped system call.
 *
 *   ioctl (type 0xBA)   on an emulated fd: the shim's transport, issued on our
 *                       copy of the caller's fd; on any other fd: continue
 *   reboot              KEXEC: `luofs kexec`; on success the caller is killed,
 *                       never resumed (a kexec does not return); on failure
 *                       reboot() fails with the freeze's errno. No reboot
 *                       reaches the host: RESTART(2), HALT, POWER_OFF and
 *                       SW_SUSPEND fail with EPERM, CAD_ON/OFF do nothing,
 *                       unknown commands are EINVAL (the shim's rules).
 *   kexec_load,         the kernel's checks (shim/kexec_rules.c), then `luofs
 *   kexec_file_load     kexec --load [--cmdline C]`: the next kernel's command line
 *   readlink(at)        of /proc/{self,thread-self,PID}/fd/N for an emulated fd:
 *                       its link as on a real system; any other path: continue
 *   fstatfs, statfs     of an emulated fd (statfs: of /proc/self/fd/N): the real
 *                       tree's type; anything else: continue
 *   ftruncate,          on a memfd LUO holds preserved (its user.luo.frozen mark):
 *   fallocate           EPERM, but ftruncate to its own size; anything else: continue
 *
 * "Continue" (SECCOMP_USER_NOTIF_FLAG_CONTINUE) lets the kernel run the call as
 * if it had never been trapped, so a trapped readlink of /proc/self/exe (static
 * glibc's start-up) costs one round trip to us and nothing else.
 *
 * Unhappy paths: a caller that is gone (killed while waiting, the notification
 * no longer valid) gets nothing done on its behalf; the caller's bad pointers
 * give EFAULT as the kernel's copy_to_user would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/reboot.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "../shim/shim.h"
#include "supervisor.h"

#define CAP_SYS_BOOT_BIT 22
#define CONTINUE 1 /* a handler's verdict: let the call run as it is */

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

struct answer {
	int64_t val;
	int error;   /* 0 or a negative errno */
	bool silent; /* the caller is being killed: never resume it */
};

/* Does the caller hold CAP_SYS_BOOT (reboot's and kexec's first check)? */
static bool has_cap_sys_boot(const struct target *t)
{
	unsigned long long caps;

	return target_status(t, "CapEff: %llx", &caps) && (caps >> CAP_SYS_BOOT_BIT) & 1;
}

static int serve_ioctl(struct target *t, const struct seccomp_data *d, struct answer *a)
{
	struct luofs_caller caller;
	struct luofs_fd file;
	int ours, err;

	if (!target_fd_emulated(t, (int)d->args[0]))
		return CONTINUE; /* a real LUO device, another driver's type 0xBA, or EBADF */
	ours = target_getfd(t, (int)d->args[0]);
	if (ours < 0)
		return CONTINUE; /* closed meanwhile: the kernel says EBADF itself */
	if (luofs_classify(ours, &file) == LUOFS_FD_FOREIGN) {
		close(ours);
		return CONTINUE; /* swapped for another file meanwhile */
	}
	target_as_caller(t, &caller);
	/* The kernel's ioctl takes an unsigned int cmd: upper bits are dropped. */
	err = luofs_transport_ioctl(&caller, &file, ours, (uint32_t)d->args[1],
				    (void *)(uintptr_t)d->args[2]);
	close(ours);
	a->error = err;
	return 0;
}

/* reboot(2)'s checks in the kernel's order (capability, magic numbers, command):
 * 1 for a kexec to perform, else what the call returns (0 or -errno). */
static int reboot_verdict(const struct target *t, const struct seccomp_data *d)
{
	uint32_t magic1 = (uint32_t)d->args[0], magic2 = (uint32_t)d->args[1];

	if (!has_cap_sys_boot(t))
		return -EPERM;
	if (magic1 != LINUX_REBOOT_MAGIC1 ||
	    (magic2 != LINUX_REBOOT_MAGIC2 && magic2 != LINUX_REBOOT_MAGIC2A &&
	     magic2 != LINUX_REBOOT_MAGIC2B && magic2 != LINUX_REBOOT_MAGIC2C))
		return -EINVAL;
	switch ((uint32_t)d->args[2]) {
	case LINUX_REBOOT_CMD_KEXEC:
		return luofs_root_env() ? 1 : -EPERM;
	case LINUX_REBOOT_CMD_CAD_ON:
	case LINUX_REBOOT_CMD_CAD_OFF:
		return 0; /* Ctrl-Alt-Del's meaning: nothing to change in an emulator */
	case LINUX_REBOOT_CMD_RESTART:
	case LINUX_REBOOT_CMD_RESTART2:
	case LINUX_REBOOT_CMD_HALT:
	case LINUX_REBOOT_CMD_POWER_OFF:
	case LINUX_REBOOT_CMD_SW_SUSPEND:
		return -EPERM; /* a program under luofs never reboots the host */
	default:
		return -EINVAL; /* as the kernel answers an unknown command */
	}
}

static int serve_reboot(struct supervisor *sv, struct target *t, const struct seccomp_data *d,
			struct answer *a)
{
	int verdict = reboot_verdict(t, d), err, out;
	pid_t tgid;

	if (verdict != 1) {
		a->error = verdict;
		return 0;
	}
	tgid = target_tgid(t);
	/* What luofs kexec says goes where the shim's would: the caller's stderr. */
	out = target_getfd(t, STDERR_FILENO);
	err = luofs_run_kexec(luofs_root_env(), out >= 0 ? out : STDERR_FILENO);
	if (out >= 0)
		close(out);
	if (err) {
		a->error = -err;
		return 0;
	}
	/* A kexec never returns: the program ends as the old kernel's userspace does.
	 * Whoever waits for it learns why before it sees the death. */
	(void)!write(sv->note_fd, &tgid, sizeof(tgid)); /* EPIPE: nobody waits; end it still */
	syscall(SYS_pidfd_send_signal, t->pidfd, SIGKILL, NULL, 0);
	a->silent = true;
	return 0;
}

/* kexec_file_load's fds are the caller's: a regular file open for reading, as the
 * kernel wants it, judged through /proc without taking the file. */
static int caller_fd_errno(void *ctx, int fd)
{
	struct target *t = ctx;
	char path[64], info[256];
	struct stat st;
	unsigned int flags = 0;
	ssize_t n;
	int f;

	snprintf(path, sizeof(path), "/proc/%d/fdinfo/%d", (int)t->tid, fd);
	f = fd >= 0 ? open(path, O_RDONLY | O_CLOEXEC) : -1;
	if (f < 0)
		return EBADF;
	n = read(f, info, sizeof(info) - 1);
	close(f);
	info[n > 0 ? n : 0] = '\0';
	char *at = strstr(info, "flags:");
	if (!at || sscanf(at, "flags: %o", &flags) != 1 ||
	    (flags & O_ACCMODE) == O_WRONLY || (flags & O_PATH))
		return EBADF;
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)t->tid, fd);
	if (stat(path, &st) != 0)
		return EBADF;
	return S_ISREG(st.st_mode) ? 0 : EINVAL;
}

/* A load records the next kernel's command line (`luofs kexec --load`), as the shim's. */
static int serve_kexec_load(struct target *t, const struct seccomp_data *d, struct answer *a)
{
	char buf[LUOFS_COMMAND_LINE_SIZE];
	const char *args[4];
	int err, out;

	if (!has_cap_sys_boot(t)) {
		a->error = -EPERM;
		return 0;
	}
	if (d->nr == __NR_kexec_file_load)
		err = luofs_kexec_file_load_args(t->tid, caller_fd_errno, t, (int)d->args[0],
						 (int)d->args[1], d->args[2],
						 (const void *)(uintptr_t)d->args[3], d->args[4],
						 buf, args);
	else
		err = luofs_kexec_load_args(d->args[1], d->args[3], args);
	if (!err && args[0]) {
		if (!luofs_root_env()) {
			a->error = -EPERM; /* nothing is ever loaded into the host's kernel */
			return 0;
		}
		out = target_getfd(t, STDERR_FILENO);
		err = luofs_run_kexec_args(luofs_root_env(), args, out >= 0 ? out : STDERR_FILENO);
		if (out >= 0)
			close(out);
	}
	a->error = -err;
	return 0;
}

/* The fd N a path names as /proc/{self,thread-self,<caller>}/fd/N (relative to
 * dirfd, an open /proc/<caller>/fd, when `at`), or -1. */
static int proc_fd_of_path(struct target *t, const void *user_path, int dirfd, bool at)
{
	char path[PATH_MAX], link[PATH_MAX], proc[64];
	size_t got = luofs_peek(t->tid, path, user_path, sizeof(path) - 1);
	ssize_t n;

	path[got] = '\0';
	if (strnlen(path, got) == got)
		return -1; /* unreadable or unterminated: the kernel says EFAULT/ENAMETOOLONG */
	if (path[0] == '/') {
		if (strncmp(path, "/proc/", 6) != 0)
			return -1;
		if (strncmp(path + 6, "self/", 5) == 0 || strncmp(path + 6, "thread-self/", 12) == 0)
			return luofs_proc_fd_number(path, 0);
		return luofs_proc_fd_number(path, target_tgid(t));
	}
	if (!at || dirfd < 0 || luofs_parse_fd(path) < 0)
		return -1;
	/* readlinkat(open("/proc/self/fd"), "N"): where does the caller's dirfd point? */
	snprintf(proc, sizeof(proc), "/proc/%d/fd/%d", (int)t->tid, dirfd);
	n = readlink(proc, link, sizeof(link) - 1);
	if (n < 0)
		return -1;
	link[n] = '\0';
	return luofs_proc_fd_dir(link, target_tgid(t)) ? luofs_parse_fd(path) : -1;
}

static int serve_readlink(struct target *t, const struct seccomp_data *d, bool at,
			  struct answer *a)
{
	char shown[PATH_MAX];
	void *buf = (void *)(uintptr_t)d->args[at ? 2 : 1];
	int bufsiz = (int)d->args[at ? 3 : 2];
	int fd = proc_fd_of_path(t, (const void *)(uintptr_t)d->args[at ? 1 : 0],
				 at ? (int)d->args[0] : AT_FDCWD, at);
	int ours;
	ssize_t len;

	if (fd < 0 || bufsiz <= 0 || !target_fd_emulated(t, fd))
		return CONTINUE;
	ours = target_getfd(t, fd);
	if (ours < 0)
		return CONTINUE;
	len = luofs_fd_link(ours, shown, (size_t)bufsiz < sizeof(shown) ? (size_t)bufsiz
									: sizeof(shown));
	close(ours);
	if (len == -2)
		return CONTINUE;
	if (!target_reply(t, buf, shown, (size_t)len))
		a->error = -EFAULT;
	else
		a->val = len;
	return 0;
}

/* fstatfs(fd) and statfs("/proc/self/fd/N") of an emulated file. */
static int serve_statfs(struct target *t, const struct seccomp_data *d, bool by_path,
			struct answer *a)
{
	struct statfs st;
	int fd = by_path ? proc_fd_of_path(t, (const void *)(uintptr_t)d->args[0], AT_FDCWD, false)
			 : (int)d->args[0];
	int ours = fd >= 0 && target_fd_emulated(t, fd) ? target_getfd(t, fd) : -1;
	bool done;

	if (ours < 0)
		return CONTINUE;
	if (luofs_emulated_fs_type(ours) == 0 || fstatfs(ours, &st) != 0) {
		close(ours);
		return CONTINUE;
	}
	ADJUST_STATFS(ours, &st);
	close(ours);
	done = target_reply(t, (void *)(uintptr_t)d->args[1], &st, sizeof(st));
	a->error = done ? 0 : -EFAULT;
	return 0;
}

/* The frozen-memfd rule (shim/frozen.c): on a memfd the emulator marks preserved,
 * ftruncate to another size and fallocate are EPERM; anything else continues. */
static int serve_frozen(struct target *t, const struct seccomp_data *d, struct answer *a)
{
	char path[64];
	struct stat st;

	snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)t->tid, (int)d->args[0]);
	if (getxattr(path, LUOFS_FROZEN_XATTR, NULL, 0) < 0)
		return CONTINUE;
	if (d->nr == __NR_ftruncate && stat(path, &st) == 0 && st.st_size == (off_t)d->args[1])
		return CONTINUE;
	a->error = -EPERM;
	return 0;
}

static int dispatch(struct supervisor *sv, struct target *t, const struct seccomp_data *d,
		    struct answer *a)
{
	switch (d->nr) {
	case __NR_ioctl:
		return serve_ioctl(t, d, a);
	case __NR_reboot:
		return serve_reboot(sv, t, d, a);
	case __NR_kexec_load:
	case __NR_kexec_file_load:
		return serve_kexec_load(t, d, a);
#ifdef __NR_readlink
	case __NR_readlink:
		return serve_readlink(t, d, false, a);
#endif
	case __NR_readlinkat:
		return serve_readlink(t, d, true, a);
	case __NR_ftruncate:
	case __NR_fallocate:
		return serve_frozen(t, d, a);
	case __NR_fstatfs:
		return serve_statfs(t, d, false, a);
	case __NR_statfs:
		return serve_statfs(t, d, true, a);
	}
	return CONTINUE;
}

bool supervise_init(struct supervisor *sv, int listener, int note_fd)
{
	struct seccomp_notif_sizes sizes;

	*sv = (struct supervisor){ .listener = listener, .note_fd = note_fd };
	if (syscall(__NR_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0)
		return false;
	/* The kernel may know larger structs than our headers: use its sizes. */
	sv->notif_size = sizes.seccomp_notif > sizeof(*sv->notif) ? sizes.seccomp_notif
								   : sizeof(*sv->notif);
	sv->resp_size = sizes.seccomp_notif_resp > sizeof(*sv->resp) ? sizes.seccomp_notif_resp
									 : sizeof(*sv->resp);
	sv->notif = calloc(1, sv->notif_size);
	sv->resp = calloc(1, sv->resp_size);
	return sv->notif && sv->resp;
}

bool supervise_one(struct supervisor *sv)
{
	struct answer a = { 0, 0, false };
	struct target t;
	bool valid;
	int verdict;

	memset(sv->notif, 0, sv->notif_size);
	if (ioctl(sv->listener, SECCOMP_IOCTL_NOTIF_RECV, sv->notif) != 0)
		return errno == EINTR || errno == ENOENT; /* ENOENT: the caller died meanwhile */
	memset(sv->resp, 0, sv->resp_size);
	sv->resp->id = sv->notif->id;
	if (!target_open(&t, sv->listener, sv->notif))
		return true; /* gone: nobody to answer */
	verdict = dispatch(sv, &t, &sv->notif->data, &a);
	if (verdict == CONTINUE) {
		sv->resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
	} else {
		sv->resp->val = a.val;
		sv->resp->error = a.error;
	}
	valid = target_valid(&t);
	target_close(&t);
	if (valid && !a.silent)
		ioctl(sv->listener, SECCOMP_IOCTL_NOTIF_SEND, sv->resp); /* ENOENT: it just died */
	return true;
}
