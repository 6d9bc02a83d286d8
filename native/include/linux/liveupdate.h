/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * luofs: the mainline (G2) user ABI of /dev/liveupdate, written from
 * spec/uapi.md §2-§3 so that code written against the kernel's
 * <linux/liveupdate.h> compiles unchanged against this one.
 *
 * Every argument struct starts with its own u32 `size` (the iommufd
 * convention), which is why all commands are plain _IO numbers: the kernel
 * reads `size` first, rejects sizes below the struct, and accepts larger
 * structs whose extra bytes are zero. Numbers, names, sizes and offsets are
 * pinned by native/tests/abi_asserts.c.
 */
#ifndef _UAPI_LIVEUPDATE_H
#define _UAPI_LIVEUPDATE_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define LIVEUPDATE_IOCTL_TYPE 0xBA

/* Includes the terminating NUL: a session name has 1..63 characters. */
#define LIVEUPDATE_SESSION_NAME_LENGTH 64

/* Commands issued on /dev/liveupdate. */
enum {
	LIVEUPDATE_CMD_BASE = 0x00,
	LIVEUPDATE_CMD_CREATE_SESSION = LIVEUPDATE_CMD_BASE,
	LIVEUPDATE_CMD_RETRIEVE_SESSION = 0x01,
};

/* Commands issued on a session fd. */
enum {
	LIVEUPDATE_CMD_SESSION_BASE = 0x40,
	LIVEUPDATE_CMD_SESSION_PRESERVE_FD = LIVEUPDATE_CMD_SESSION_BASE,
	LIVEUPDATE_CMD_SESSION_RETRIEVE_FD = 0x41,
	LIVEUPDATE_CMD_SESSION_FINISH = 0x42,
	LIVEUPDATE_CMD_SESSION_GET_NAME = 0x43,
};

/* ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION): a new, empty outgoing session. */
struct liveupdate_ioctl_create_session {
	__u32 size;  /* in: sizeof(struct liveupdate_ioctl_create_session) */
	__s32 fd;    /* out: the session fd (O_CLOEXEC) */
	__u8 name[LIVEUPDATE_SESSION_NAME_LENGTH]; /* in: NUL-terminated, 1..63 chars */
};

#define LIVEUPDATE_IOCTL_CREATE_SESSION \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_CREATE_SESSION)

/* ioctl(LIVEUPDATE_IOCTL_RETRIEVE_SESSION): a session the previous kernel handed over. */
struct liveupdate_ioctl_retrieve_session {
	__u32 size;  /* in: sizeof(struct liveupdate_ioctl_retrieve_session) */
	__s32 fd;    /* out: the session fd (O_CLOEXEC) */
	__u8 name[LIVEUPDATE_SESSION_NAME_LENGTH]; /* in: the name it was created with */
};

#define LIVEUPDATE_IOCTL_RETRIEVE_SESSION \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_RETRIEVE_SESSION)

/* ioctl(LIVEUPDATE_SESSION_PRESERVE_FD): hand a file to an outgoing session. */
struct liveupdate_session_preserve_fd {
	__u32 size;  /* in: sizeof(struct liveupdate_session_preserve_fd) */
	__s32 fd;    /* in: the file to preserve (a memfd) */
	__aligned_u64 token; /* in: the key to retrieve it with; unique per session */
};

#define LIVEUPDATE_SESSION_PRESERVE_FD \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_PRESERVE_FD)

/* ioctl(LIVEUPDATE_SESSION_RETRIEVE_FD): get a preserved file back after the update. */
struct liveupdate_session_retrieve_fd {
	__u32 size;  /* in: sizeof(struct liveupdate_session_retrieve_fd) */
	__s32 fd;    /* out: the restored file (O_CLOEXEC) */
	__aligned_u64 token; /* in: the token given at preservation */
};

#define LIVEUPDATE_SESSION_RETRIEVE_FD \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_RETRIEVE_FD)

/* ioctl(LIVEUPDATE_SESSION_FINISH): release what a retrieved session still holds. */
struct liveupdate_session_finish {
	__u32 size;     /* in: sizeof(struct liveupdate_session_finish) */
	__u32 reserved; /* in: should be zero (the kernel does not check it) */
};

#define LIVEUPDATE_SESSION_FINISH \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_FINISH)

/* ioctl(LIVEUPDATE_SESSION_GET_NAME): the session's full name. */
struct liveupdate_session_get_name {
	__u32 size;     /* in: sizeof(struct liveupdate_session_get_name) */
	__u32 reserved; /* in: must be zero */
	__u8 name[LIVEUPDATE_SESSION_NAME_LENGTH]; /* out: NUL-terminated */
};

#define LIVEUPDATE_SESSION_GET_NAME \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_GET_NAME)

#endif /* _UAPI_LIVEUPDATE_H */
