/*
 * Request and reply frames, byte for byte as luofs/uapi/frames.py defines them.
 *
 * Request: "LU", u8 version, u8 flags, u32 cmd, s32 file_fd, s32 reply_fd,
 * u32 nonce, then min(max(size, 4), 96) bytes of the caller's struct (none if
 * even `size` could not be read). Reply: "LR", u8 version, u8 flags,
 * s16 fd_offset, u16 reserved, then the bytes to copy back. Little-endian.
 *
 * The request travels hex-encoded in a file or xattr name, so the daemon learns
 * the caller's identity from the FUSE request itself (DESIGN.md "Known
 * constraint").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <sys/ioctl.h>

#include "shim.h"

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void luofs_request_load(struct luofs_request *req, pid_t pid, const void *user_arg)
{
	uint8_t head[4];
	uint32_t size;
	size_t want;

	req->arg_len = 0;
	if (_IOC_SIZE(req->cmd)) {
		/* RFC v2: the number encodes the argument's size and direction; the
		 * kernel copies exactly that much in (for _IOW/_IOWR) or faults. */
		size_t in = (_IOC_DIR(req->cmd) & _IOC_WRITE) ? _IOC_SIZE(req->cmd) : 0;

		if (in > LUOFS_MAX_ARG)
			in = LUOFS_MAX_ARG;
		/* A read-only command copies nothing in, but an unreadable pointer
		 * still decides EFAULT where a mainline kernel reads `size`. */
		if (in ? luofs_peek(pid, req->arg, user_arg, in) < in
		       : luofs_peek(pid, head, user_arg, sizeof(head)) < sizeof(head))
			req->flags |= LUOFS_REQ_ARG_FAULT;
		else
			req->arg_len = in;
		return;
	}
	if (luofs_peek(pid, head, user_arg, sizeof(head)) < sizeof(head)) {
		req->flags |= LUOFS_REQ_ARG_FAULT;
		return;
	}
	size = get_le32(head);
	want = size < 4 ? 4 : size > LUOFS_MAX_ARG ? LUOFS_MAX_ARG : size;
	req->arg_len = luofs_peek(pid, req->arg, user_arg, want);
	if (req->arg_len < want) {
		/* Carry the readable prefix: the daemon still needs `size` to
		 * order EINVAL (size too small) before EFAULT. */
		req->flags |= LUOFS_REQ_COPY_FAULT;
		return;
	}
	if (size > want) {
		/* The kernel's check_zeroed_user: the first nonzero byte or the
		 * first fault, whichever comes first, decides E2BIG or EFAULT. */
		int r = luofs_scan_zero(pid, (const void *)((uintptr_t)user_arg + want), size - want);

		if (r > 0)
			req->flags |= LUOFS_REQ_TAIL_NONZERO;
		else if (r < 0)
			req->flags |= LUOFS_REQ_COPY_FAULT;
	}
}

bool luofs_request_name(const struct luofs_request *req, const char *prefix, char *out,
			size_t outsz)
{
	static const char hex[] = "0123456789abcdef";
	uint8_t frame[LUOFS_REQ_HEADER + LUOFS_MAX_ARG];
	size_t len = LUOFS_REQ_HEADER + req->arg_len;
	size_t pos = 0;

	frame[0] = 'L';
	frame[1] = 'U';
	frame[2] = LUOFS_FRAME_VERSION;
	/* Every buffer the shim passes is LUOFS_REPLY_MAX bytes: room for any reply. */
	frame[3] = req->flags | LUOFS_REQ_ROOM_FOR_REPLY;
	put_le32(frame + 4, req->cmd);
	put_le32(frame + 8, (uint32_t)req->file_fd);
	put_le32(frame + 12, (uint32_t)req->reply_fd);
	put_le32(frame + 16, req->nonce);
	for (size_t i = 0; i < req->arg_len; i++)
		frame[LUOFS_REQ_HEADER + i] = req->arg[i];

	while (prefix[pos]) {
		if (pos + 1 >= outsz)
			return false;
		out[pos] = prefix[pos];
		pos++;
	}
	if (pos + 2 * len + 1 > outsz)
		return false;
	for (size_t i = 0; i < len; i++) {
		out[pos++] = hex[frame[i] >> 4];
		out[pos++] = hex[frame[i] & 0xf];
	}
	out[pos] = '\0';
	return true;
}

int luofs_reply_parse(const uint8_t *buf, size_t len, struct luofs_reply *out)
{
	if (len < LUOFS_REPLY_HEADER || buf[0] != 'L' || buf[1] != 'R' ||
	    buf[2] != LUOFS_FRAME_VERSION || buf[6] != 0 || buf[7] != 0)
		return -EIO;
	out->flags = buf[3];
	out->fd_offset = (int16_t)(uint16_t)(buf[4] | buf[5] << 8);
	out->data = buf + LUOFS_REPLY_HEADER;
	out->data_len = len - LUOFS_REPLY_HEADER;
	return 0;
}

uint32_t luofs_nonce(void)
{
	/* Random per request (never a per-process sequence): a forked child
	 * must not repeat its parent's request names. */
	static uint32_t counter;
	uint32_t nonce;
	struct timespec ts;

	if (getrandom(&nonce, sizeof(nonce), GRND_NONBLOCK) == (ssize_t)sizeof(nonce))
		return nonce;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint32_t)ts.tv_nsec ^ (uint32_t)gettid() << 16 ^
	       __atomic_add_fetch(&counter, 0x9e3779b9u, __ATOMIC_RELAXED);
}
