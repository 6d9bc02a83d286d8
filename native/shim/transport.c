/*
 * One ioctl on an emulated fd, carried to the daemon as the Python client does
 * it (luofs/client.py `ioctl()`), so both clients exercise the same rules.
 *
 * CREATE_SESSION and RETRIEVE_SESSION on the device return a session fd: the
 * request travels as the name of a file created in ROOT/.luofs, and the new
 * open file *is* the session fd (a FUSE file whose last close the kernel
 * reports, which is what makes dup/fork/SCM_RIGHTS work without any table).
 * Every other request travels as the name of an xattr read with fgetxattr on
 * the fd itself; the value is the reply, its errno the ioctl's errno. Both
 * operations tell the daemon which thread is calling.
 *
 * The caller is this process for the shim. The seccomp supervisor passes its own
 * copies of the caller's files instead (`fd`, and through `take_fd` the fd a
 * PRESERVE carries), so the daemon finds the files it checks in the thread that
 * asks; fds that come back are then installed in the caller (`install`) before
 * their numbers are written into its struct.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "shim.h"

#define CMD_CREATE_SESSION 0xBA00u
#define CMD_RETRIEVE_SESSION 0xBA01u
#define CMD_RETRIEVE_FD 0xBA41u
#define CMD_V2_FD_RESTORE 0xC010BA02u /* RFC v2 _IOWR(0xBA, 2, 16): returns an fd */
#define CMD_GET_NAME 0xBA43u
#define CMD_PRESERVE_FD 0xBA40u
#define CMD_V2_FD_PRESERVE 0xC010BA00u /* RFC v2 _IOWR(0xBA, 0, 16): carries an fd */
#define PRESERVE_FD_OFFSET 4           /* struct liveupdate_session_preserve_fd's `fd` */
#define SESSION_STRUCT_SIZE 72 /* struct liveupdate_ioctl_{create,retrieve}_session */
#define SESSION_FD_OFFSET 4    /* its `fd` field */
#define XATTR_NAME_MAX_LEN 256

SHIM_SLOT(open);

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* The errno the kernel gives when the caller has no fd left: it allocates the
 * fd after the dispatch checks and before the name checks (spec §4), so only
 * the daemon can say whether EMFILE or an earlier error wins. */
static int ask_with_full_table(int fd, struct luofs_request *req)
{
	char name[XATTR_NAME_MAX_LEN];
	uint8_t reply[LUOFS_REPLY_MAX];

	req->flags |= LUOFS_REQ_FD_TABLE_FULL;
	if (!luofs_request_name(req, LUOFS_XATTR_PREFIX, name, sizeof(name)))
		return -EMFILE;
	if (fgetxattr(fd, name, reply, sizeof(reply)) < 0)
		return -errno;
	return -EMFILE;
}

void luofs_self(struct luofs_caller *caller)
{
	*caller = (struct luofs_caller){ .pid = getpid() };
}

/* copy_to_user into the caller, if it is still the caller (see `alive`). */
static bool reply_to(const struct luofs_caller *caller, void *user_arg, const void *data,
		     size_t len)
{
	if (caller->alive && !caller->alive(caller))
		return false;
	return luofs_poke(caller->pid, user_arg, data, len);
}

/* Hands our new fd to the caller once its struct is known to be writable: the
 * kernel never installs an fd it cannot report. Returns the caller's number for
 * it, or -errno (our fd closed). */
static int hand_over(const struct luofs_caller *caller, int fd, void *user_arg, size_t len)
{
	uint8_t probe[LUOFS_REPLY_MAX];

	if (!caller->install)
		return fd;
	if (luofs_peek(caller->pid, probe, user_arg, len) < len ||
	    !reply_to(caller, user_arg, probe, len)) {
		close(fd);
		return -EFAULT;
	}
	return caller->install(caller, fd);
}

static int session_returning_ioctl(const struct luofs_caller *caller, int fd,
				   struct luofs_request *req, void *user_arg)
{
	const char *root = luofs_root_env(); /* what the fd was classified against */
	char path[PATH_MAX];
	size_t prefix_len;
	uint8_t reply[SESSION_STRUCT_SIZE];
	size_t reply_len;
	int session_fd;

	if (!root)
		return -ENOENT;
	if (caller->table_full && caller->table_full(caller))
		return ask_with_full_table(fd, req);
	/* Only a create name must be new each time (no dentry is reused); a getxattr
	 * name stays the same for the same request, which lets the kernel memoize. */
	req->nonce = luofs_nonce();
	prefix_len = (size_t)snprintf(path, sizeof(path), "%s%s", root, LUOFS_REQUEST_DIR);
	if (prefix_len >= sizeof(path) ||
	    !luofs_request_name(req, LUOFS_CREATE_PREFIX, path + prefix_len,
				sizeof(path) - prefix_len))
		return -ENAMETOOLONG;
	/* O_CLOEXEC: the kernel allocates session fds close-on-exec. */
	session_fd = SHIM_REAL(open)(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (session_fd < 0) {
		int err = errno;

		return err == EMFILE ? ask_with_full_table(fd, req) : -err;
	}

	/* The kernel copies back min(size, struct size) bytes: the caller's own
	 * struct with `fd` filled in. */
	reply_len = req->arg_len < sizeof(reply) ? req->arg_len : sizeof(reply);
	memcpy(reply, req->arg, reply_len);
	session_fd = hand_over(caller, session_fd, user_arg, reply_len);
	if (session_fd < 0)
		return session_fd;
	if (reply_len >= SESSION_FD_OFFSET + 4)
		put_le32(reply + SESSION_FD_OFFSET, (uint32_t)session_fd);
	if (!reply_to(caller, user_arg, reply, reply_len)) {
		/* As the kernel: the fd is never installed, so the session is
		 * released again. (An installed one is the caller's now.) */
		if (!caller->install)
			close(session_fd);
		return -EFAULT;
	}
	return 0;
}

/* Where a request carries an fd of the caller's (PRESERVE), and its value there. */
struct carried_fd {
	int at; /* offset in the struct, or -1 */
	uint8_t theirs[4];
};

static int carried_fd_offset(uint32_t cmd, size_t arg_len)
{
	if (cmd == CMD_PRESERVE_FD && arg_len >= PRESERVE_FD_OFFSET + 4)
		return PRESERVE_FD_OFFSET;
	if (cmd == CMD_V2_FD_PRESERVE && arg_len >= 4)
		return 0;
	return -1;
}

static int xattr_ioctl(const struct luofs_caller *caller, int fd, struct luofs_request *req,
		       void *user_arg, const struct carried_fd *carried)
{
	char name[XATTR_NAME_MAX_LEN];
	uint8_t raw[LUOFS_REPLY_MAX], data[LUOFS_REPLY_MAX];
	struct luofs_reply reply;
	ssize_t len;
	int ours = -1, new_fd = -1, err;

	if (req->cmd == CMD_RETRIEVE_FD || req->cmd == CMD_V2_FD_RESTORE) {
		bool table_full;
		int theirs = luofs_reply_socket(&ours, &table_full);

		if (caller->table_full && caller->table_full(caller))
			table_full = true;
		else if (theirs >= 0)
			luofs_reply_drain(ours);
		if (table_full)
			req->flags |= LUOFS_REQ_FD_TABLE_FULL;
		else if (theirs >= 0)
			req->reply_fd = theirs;
	}
	if (!luofs_request_name(req, LUOFS_XATTR_PREFIX, name, sizeof(name)))
		return -EIO;
	len = fgetxattr(fd, name, raw, sizeof(raw));
	if (len < 0)
		return -errno;
	err = luofs_reply_parse(raw, (size_t)len, &reply);
	if (err)
		return err;
	memcpy(data, reply.data, reply.data_len);
	/* The kernel copies back the caller's struct: its fd, not the copy we sent. */
	if (carried->at >= 0 && (size_t)carried->at + 4 <= reply.data_len)
		memcpy(data + carried->at, carried->theirs, 4);

	if (reply.flags & LUOFS_REPLY_FD_SENT) {
		new_fd = ours >= 0 ? luofs_reply_recv_fd(ours) : -EIO;
		if (new_fd < 0)
			return new_fd;
		if (reply.fd_offset < 0 || (size_t)reply.fd_offset + 4 > reply.data_len) {
			close(new_fd); /* the caller could never learn its number */
			return -EIO;
		}
		new_fd = hand_over(caller, new_fd, user_arg, reply.data_len);
		if (new_fd < 0)
			return new_fd;
		put_le32(data + reply.fd_offset, (uint32_t)new_fd);
	}
	if (reply.data_len && !reply_to(caller, user_arg, data, reply.data_len)) {
		if (new_fd >= 0 && !caller->install)
			close(new_fd); /* (an installed one is the caller's now) */
		return -EFAULT;
	}
	return 0;
}

int luofs_transport_ioctl(const struct luofs_caller *caller, const struct luofs_fd *file, int fd,
			  uint32_t cmd, void *user_arg)
{
	struct luofs_request req = {
		.flags = 0, .cmd = cmd, .file_fd = fd, .reply_fd = -1, .nonce = 0,
	};

	struct carried_fd carried = { .at = -1 };
	int err;

	luofs_request_load(&req, caller->pid, user_arg);
	if (caller->take_fd) {
		carried.at = carried_fd_offset(cmd, req.arg_len);
		if (carried.at >= 0) {
			memcpy(carried.theirs, req.arg + carried.at, 4);
			caller->take_fd(caller, req.arg + carried.at);
		}
	}
	if (file->kind == LUOFS_FD_DEVICE &&
	    (cmd == CMD_CREATE_SESSION || cmd == CMD_RETRIEVE_SESSION))
		err = session_returning_ioctl(caller, fd, &req, user_arg);
	else
		err = xattr_ioctl(caller, fd, &req, user_arg, &carried);
	/* "This kernel is gone": FUSE says ECONNABORTED for a request the unmount
	 * cut short and ENOTCONN afterwards; callers see ENOTCONN. */
	return err == -ECONNABORTED ? -ENOTCONN : err;
}

int luofs_session_name(const struct luofs_fd *file, int fd, char name[64])
{
	/* struct liveupdate_session_get_name, built by hand: the shim does not
	 * depend on the public header it emulates. */
	uint8_t arg[SESSION_STRUCT_SIZE] = { 0 };
	struct luofs_caller self;
	int err;

	luofs_self(&self);
	put_le32(arg, sizeof(arg));
	err = luofs_transport_ioctl(&self, file, fd, CMD_GET_NAME, arg);
	if (err)
		return err;
	memcpy(name, arg + 8, 64);
	name[63] = '\0';
	return 0;
}
