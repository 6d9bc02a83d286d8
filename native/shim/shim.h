/*
 * libluofs-shim: internal interfaces between the shim's small modules.
 *
 * The shim makes unmodified programs written for /dev/liveupdate talk to a
 * luofs FUSE daemon instead (DESIGN.md "C contract"). Everything here is
 * hidden (-fvisibility=hidden); only the libc functions we interpose are
 * exported, marked SHIM_EXPORT.
 */
#ifndef LUOFS_SHIM_H
#define LUOFS_SHIM_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SHIM_EXPORT __attribute__((visibility("default")))

/* libc declares path arguments nonnull, which lets the compiler delete our NULL
 * checks; but programs do pass NULL, and the kernel answers EFAULT rather than
 * crashing. Hiding the pointer's origin keeps the checks. */
static inline const char *shim_path(const char *path)
{
	__asm__("" : "+r"(path));
	return path;
}

#define LUOFS_DEVICE_PATH "/dev/liveupdate"
#define LUOFS_ROOT_ENV "LUOFS_ROOT"
/* Set by luofs-supervise for the programs it serves: reboot, readlink and statfs
 * then reach the supervisor, so both kinds of program see the same answers. The
 * shim keeps its faster ioctl path unless the value is "all" (then it only
 * redirects paths, and the supervisor serves every call: how tests run it). */
#define LUOFS_SUPERVISED_ENV "LUOFS_SUPERVISED"

/* ---- real.c: the next definition of an interposed function -------------------- */

/* dlsym(RTLD_NEXT, name) once per slot; safe to race (every racer stores the
 * same pointer); a stub failing with ENOSYS if no later object defines `name`.
 * Inline, because ioctl()'s fast path is this load and a jump. */
void *shim_real_resolve(void **slot, const char *name);
static inline void *shim_real(void **slot, const char *name)
{
	void *fn = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

	return __builtin_expect(fn != NULL, 1) ? fn : shim_real_resolve(slot, name);
}
#define SHIM_REAL(fn) ((__typeof__(&fn))shim_real(&shim_slot_##fn, #fn))
#define SHIM_SLOT(fn) static void *shim_slot_##fn

/* ---- open.c --------------------------------------------------------------------- */

/* "$LUOFS_ROOT/dev/liveupdate" in buf for exactly "/dev/liveupdate" while
 * LUOFS_ROOT is set; otherwise path itself. */
const char *shim_redirect(const char *path, char *buf, size_t size);

/* ---- root.c: is an fd one of the emulator's files? --------------------------- */

enum luofs_fd_kind {
	LUOFS_FD_FOREIGN, /* not on the mount of $LUOFS_ROOT: libc handles it */
	LUOFS_FD_DEVICE,  /* $LUOFS_ROOT/dev/liveupdate */
	LUOFS_FD_OTHER,   /* any other file of the mount (session fds, sysfs files) */
};

struct luofs_fd {
	enum luofs_fd_kind kind;
};

/* Classifies fd by its st_dev/st_ino (never by a table: session fds travel over
 * SCM_RIGHTS and survive exec). Never blocks on the daemon for the fd itself. */
enum luofs_fd_kind luofs_classify(int fd, struct luofs_fd *out);
/* The same for the file at path (a /proc/PID/fd/N link is followed, never opened:
 * no FUSE request, no flush of another file system's file). */
enum luofs_fd_kind luofs_classify_path(const char *path, struct luofs_fd *out);

/* $LUOFS_ROOT, or NULL when unset or empty (the shim then stays out of the way). */
const char *luofs_root_env(void);
/* Does the shim serve ioctl (`ioctl`) or reboot, readlink and statfs (!`ioctl`)
 * itself, rather than leave them to the kernel, i.e. to a supervisor? */
bool luofs_shim_serves(bool ioctl);

/* The realpath of the root last classified against (what /proc/self/fd links of
 * its files start with); false if there is none or it does not fit. */
bool luofs_root_real(char *out, size_t size);

/* ---- usermem.c: the kernel's copy_from_user/copy_to_user on pid's memory ------ */

/* Copies the longest readable prefix of pid's [src, src+len) to dst; never faults. */
size_t luofs_peek(pid_t pid, void *dst, const void *src, size_t len);
/* Writes all of src to pid's dst; false (and nothing reliable written) if dst faults. */
bool luofs_poke(pid_t pid, void *dst, const void *src, size_t len);
/* Scans pid's [src, src+len): 1 if a nonzero byte comes first, -1 if a fault
 * comes first, 0 if all bytes are readable and zero (check_zeroed_user). */
int luofs_scan_zero(pid_t pid, const void *src, size_t len);

/* ---- frame.c: request and reply frames (luofs/uapi/frames.py) ----------------- */

#define LUOFS_FRAME_VERSION 1
#define LUOFS_REQ_HEADER 20
#define LUOFS_MAX_ARG 96
#define LUOFS_REPLY_HEADER 8
#define LUOFS_XATTR_PREFIX "user.luo."
#define LUOFS_CREATE_PREFIX "luo."
#define LUOFS_REQUEST_DIR "/.luofs/"
#define LUOFS_REPLY_MAX 256

enum {
	LUOFS_REQ_ARG_FAULT = 0x01,     /* the u32 size could not be read */
	LUOFS_REQ_COPY_FAULT = 0x02,    /* reading `size` bytes faulted */
	LUOFS_REQ_TAIL_NONZERO = 0x04,  /* a nonzero byte lies past the carried bytes */
	LUOFS_REQ_FD_TABLE_FULL = 0x08, /* the caller has no free fd */
	LUOFS_REQ_ROOM_FOR_REPLY = 0x10, /* the getxattr buffer holds any reply */
};

enum { LUOFS_REPLY_FD_SENT = 0x01 };

struct luofs_request {
	uint8_t flags;
	uint32_t cmd;
	int32_t file_fd;
	int32_t reply_fd;
	uint32_t nonce;
	uint8_t arg[LUOFS_MAX_ARG];
	size_t arg_len;
};

struct luofs_reply {
	uint8_t flags;
	int16_t fd_offset;
	const uint8_t *data;
	size_t data_len;
};

/* Reads the caller's struct (in pid's memory) as the kernel would and fills
 * arg/arg_len/flags. */
void luofs_request_load(struct luofs_request *req, pid_t pid, const void *user_arg);
/* prefix + lowercase hex of the frame, NUL-terminated; false if out is too small. */
bool luofs_request_name(const struct luofs_request *req, const char *prefix, char *out,
			size_t outsz);
/* 0, or -EIO for a reply that is not a well-formed frame. */
int luofs_reply_parse(const uint8_t *buf, size_t len, struct luofs_reply *out);
uint32_t luofs_nonce(void);

/* ---- reply_socket.c: where returned fds arrive -------------------------------- */

/* This thread's socket pair (recreated after fork, or if the program closed it).
 * Returns the end to pass as reply_fd, or -1 with *table_full set when the
 * caller has no free fd. *ours receives the end to recvmsg from. */
int luofs_reply_socket(int *ours, bool *table_full);
/* Discards anything a previous, interrupted request left in the socket. */
void luofs_reply_drain(int ours);
/* One fd from the socket (MSG_CMSG_CLOEXEC), or -errno. */
int luofs_reply_recv_fd(int ours);

/* ---- transport.c: one ioctl through the daemon -------------------------------- */

/* Whose ioctl the transport carries. The shim serves its own process (`luofs_self`);
 * the seccomp supervisor serves another one, issuing the request on its own copies
 * of the caller's files, so it fills in the hooks. */
struct luofs_caller {
	pid_t pid; /* whose memory the ioctl's argument lives in */
	/* NULL: learn it from EMFILE. Else true when the caller has no free fd. */
	bool (*table_full)(const struct luofs_caller *caller);
	/* NULL: fds we receive are already the caller's. Else installs our fd in the
	 * caller (consuming ours) and returns its number there, or -errno. */
	int (*install)(const struct luofs_caller *caller, int fd);
	/* NULL: fd numbers in the struct are ours already. Else replaces the caller's
	 * fd (a little-endian s32 at arg_fd) by our copy of it, or by -1 if the
	 * caller holds no such fd; the copy stays open until the request is over. */
	void (*take_fd)(const struct luofs_caller *caller, uint8_t *arg_fd);
	/* NULL: always. Else false once `pid` may no longer be the caller (it died
	 * and its id could name another process): nothing is written to it then. */
	bool (*alive)(const struct luofs_caller *caller);
	void *data;
};

/* The caller of the shim: this process. */
void luofs_self(struct luofs_caller *caller);

/* Issues cmd on an emulated fd with the caller's struct at user_arg, copies the
 * reply back and returns 0 or -errno, exactly as ioctl(2) would. */
int luofs_transport_ioctl(const struct luofs_caller *caller, const struct luofs_fd *file, int fd,
			  uint32_t cmd, void *user_arg);

/* The session's name via GET_NAME into name[64]; 0 or -errno. */
int luofs_session_name(const struct luofs_fd *file, int fd, char name[64]);

/* ---- identity.c: what an emulated fd reads as --------------------------------- */

#define ANON_INODE_FS_MAGIC 0x09041934
#define TMPFS_MAGIC 0x01021994
#define SYSFS_MAGIC 0x62656572
#define DEBUGFS_MAGIC 0x64626720
#define PROC_SUPER_MAGIC 0x9fa0
#define STATFS_VALID 0x0020 /* the kernel's ST_VALID: f_flags is meaningful */

/* Digits only, no sign, fits an int; else -1. */
int luofs_parse_fd(const char *s);
/* N for "/proc/self/fd/N", "/proc/thread-self/fd/N" or "/proc/<pid>/fd/N", else -1. */
int luofs_proc_fd_number(const char *path, pid_t pid);
/* Is `link` (where a dirfd points) pid's /proc/<pid>/fd or one of its task/<tid>/fd? */
bool luofs_proc_fd_dir(const char *link, pid_t pid);
/* readlink(2) of /proc/self/fd/<fd> as the real system shows it: truncated
 * silently, no NUL; -2 when fd is not an emulated file. */
ssize_t luofs_fd_link(int fd, char *buf, size_t bufsiz);
/* The f_type the real tree would report for fd, or 0 to leave fstatfs alone. */
long luofs_emulated_fs_type(int fd);

/* Fills what simple_statfs() reports for pseudo file systems. */
#define FAKE_STATFS(buf, type)                         \
	do {                                           \
		memset((buf), 0, sizeof(*(buf)));      \
		(buf)->f_type = (type);                \
		(buf)->f_bsize = 4096;                 \
		(buf)->f_frsize = 4096;                \
		(buf)->f_namelen = 255;                \
		(buf)->f_flags = STATFS_VALID;         \
	} while (0)

/* fstatfs's answer for fd as the real tree gives it (struct statfs or statfs64). */
#define ADJUST_STATFS(fd, buf)                           \
	do {                                             \
		long type_ = luofs_emulated_fs_type(fd); \
		if (type_ == ANON_INODE_FS_MAGIC)        \
			FAKE_STATFS(buf, type_);         \
		else if (type_)                          \
			(buf)->f_type = type_;           \
	} while (0)

/* ---- run_kexec.c: the emulator's live update ------------------------------------- */

/* Runs `luofs kexec --root root` with its output on out_fd (the caller's stderr)
 * and waits: 0, or the errno reboot() reports. */
int luofs_run_kexec(const char *root, int out_fd);
/* The same with more arguments (NULL-terminated), e.g. `--load --cmdline C` for
 * kexec_file_load (kexec.c). */
int luofs_run_kexec_args(const char *root, const char *const extra[], int out_fd);

/* kexec_file_load(2)/kexec_load(2) checked as the kernel does (kexec_rules.c): 0
 * and the `luofs kexec` arguments (args[0] == NULL: nothing to do), or an errno.
 * `fd_errno(ctx, fd)`: 0 for a regular file open for reading, else its errno. */
#define LUOFS_COMMAND_LINE_SIZE 2048
int luofs_kexec_file_load_args(pid_t pid, int (*fd_errno)(void *ctx, int fd), void *ctx,
			       int kernel_fd, int initrd_fd, unsigned long cmdline_len,
			       const void *cmdline, unsigned long flags,
			       char buf[LUOFS_COMMAND_LINE_SIZE], const char *args[4]);
int luofs_kexec_load_args(unsigned long nr_segments, unsigned long flags, const char *args[2]);

/* A memfd LUO holds preserved (frozen.c): its xattr mark, set and cleared by the
 * emulator's memfd handler. */
#define LUOFS_FROZEN_XATTR "user.luo.frozen"
bool luofs_frozen(int fd);

#endif /* LUOFS_SHIM_H */
