/*
 * luofs-supervise: the seccomp user-notification supervisor's internal seams.
 *
 * The supervisor serves, for any binary (static, Go, raw syscalls), the system
 * calls the LD_PRELOAD shim serves for dynamic ones: ioctls of type 0xBA on
 * emulated fds, reboot(LINUX_REBOOT_CMD_KEXEC), kexec_load/kexec_file_load, and
 * the readlink/fstatfs answers that tell a session fd apart. It links the
 * shim's transport (the C files of native/shim), so both speak to the daemon the same way.
 */
#ifndef LUOFS_SUPERVISOR_H
#define LUOFS_SUPERVISOR_H

#include <linux/seccomp.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- filter.c ------------------------------------------------------------------ */

/* Installs the narrow filter in the calling process; returns the listener fd or
 * -errno (EBUSY: the process already has a listener, i.e. is supervised). */
int supervise_install_filter(void);

/* ---- serve.c ------------------------------------------------------------------- */

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

struct supervisor {
	int listener;
	int note_fd; /* where the pid of each process a kexec ends is written first */
	struct seccomp_notif *notif;
	struct seccomp_notif_resp *resp;
	size_t notif_size, resp_size;
};

/* Allocates the notification buffers for `listener`; false on failure (errno). */
bool supervise_init(struct supervisor *sv, int listener, int note_fd);
/* Receives (blocking) and answers one notification; false when the listener is gone. */
bool supervise_one(struct supervisor *sv);

/* ---- caller.c: one notification's calling thread ---------------------------------- */

#define SUPERVISE_MAX_TAKEN 4

struct target {
	int listener;
	uint64_t id;     /* the notification: valid while the caller waits in it */
	pid_t tid;       /* the calling thread (in our PID namespace) */
	int pidfd;       /* for that thread, opened and checked against `id` */
	int taken[SUPERVISE_MAX_TAKEN]; /* our copies of fds a request carries */
	int ntaken;
};

/* Opens a pidfd for the notification's thread and checks that the notification
 * is still pending (so the pidfd names the caller, not a reused tid). */
bool target_open(struct target *t, int listener, const struct seccomp_notif *n);
/* Is the caller's fd a file of the emulator? Looked at through /proc, not taken:
 * a copy of a file elsewhere, once closed, would be flushed as if the caller
 * had closed it (on another FUSE file system, a request of its own). */
bool target_fd_emulated(const struct target *t, int fd);
/* Our copy of the caller's fd (same open file description), or -errno. */
int target_getfd(const struct target *t, int fd);
/* Is the notification still pending (the caller alive and waiting)? */
bool target_valid(const struct target *t);
/* copy_to_user into the caller while its notification is pending; false if it
 * is gone or the address faults. */
bool target_reply(const struct target *t, void *user_addr, const void *data, size_t len);
/* Closes the pidfd and every copy taken. */
void target_close(struct target *t);
/* Scans the caller's /proc/TID/status for the line `format` (one sscanf
 * conversion into value) matches; false if none does. */
bool target_status(const struct target *t, const char *format, void *value);
/* The thread group (process) id of the caller; 0 if unknown. */
pid_t target_tgid(const struct target *t);

/* The transport hooks (native/shim/shim.h struct luofs_caller) for this caller. */
struct luofs_caller;
void target_as_caller(struct target *t, struct luofs_caller *caller);

#endif /* LUOFS_SUPERVISOR_H */
