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

/* $LUOFS_ROOT, or NULL when unset or empty (the shim then stays out of the way). */
const char *luofs_root_env(void);

/* The realpath of the root last classified against (what /proc/self/fd links of
 * its files start with); false if there is none or it does not fit. */
bool luofs_root_real(char *out, size_t size);

/* ---- usermem.c: the kernel's copy_from_user/copy_to_user on our own memory --- */

/* Copies the longest readable prefix of [src, src+len) to dst; never faults. */
size_t shim_peek(void *dst, const void *src, size_t len);
/* Writes all of src to dst; false (and nothing reliable written) if dst faults. */
bool shim_poke(void *dst, const void *src, size_t len);
/* Scans [src, src+len): 1 if a nonzero byte comes first, -1 if a fault comes
 * first, 0 if all bytes are readable and zero (the kernel's check_zeroed_user). */
int shim_scan_zero(const void *src, size_t len);

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

/* Reads the caller's struct as the kernel would and fills arg/arg_len/flags. */
void luofs_request_load(struct luofs_request *req, const void *user_arg);
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

/* Issues cmd on an emulated fd with the caller's struct at user_arg, copies the
 * reply back and returns 0 or -errno, exactly as ioctl(2) would. */
int luofs_transport_ioctl(const struct luofs_fd *file, int fd, uint32_t cmd, void *user_arg);

/* The session's name via GET_NAME into name[64]; 0 or -errno. */
int luofs_session_name(const struct luofs_fd *file, int fd, char name[64]);

#endif /* LUOFS_SHIM_H */
