/*
 * copy_from_user / copy_to_user for the process that issued an ioctl: our own
 * (the shim), or a supervised one (the seccomp supervisor reads and writes its
 * caller's memory).
 *
 * The kernel turns a bad ioctl argument into EFAULT; a library that simply
 * dereferenced it would crash the program instead. process_vm_readv/writev
 * report a fault as an error, never as a signal. Ranges are split
 * at page boundaries, so a partial transfer ends exactly at the first page
 * that faults, which gives the readable prefix the kernel would have seen.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "shim.h"

#define PAGE_SPLIT_IOVS 4 /* pages per transfer: more than SCAN_CHUNK or LUOFS_MAX_ARG can span */
#define SCAN_CHUNK 4096

static size_t page_size(void)
{
	static long cached;
	long size = __atomic_load_n(&cached, __ATOMIC_RELAXED);

	if (!size) {
		size = sysconf(_SC_PAGESIZE);
		if (size <= 0)
			size = 4096;
		__atomic_store_n(&cached, size, __ATOMIC_RELAXED);
	}
	return (size_t)size;
}

/* Splits [addr, addr+len) at page boundaries; returns the number of iovecs. */
static int split_pages(const void *addr, size_t len, struct iovec *iov, int max)
{
	uintptr_t p = (uintptr_t)addr;
	size_t page = page_size();
	int n = 0;

	while (len && n < max) {
		size_t in_page = page - (p % page);
		size_t take = len < in_page ? len : in_page;

		iov[n].iov_base = (void *)p;
		iov[n].iov_len = take;
		n++;
		p += take;
		len -= take;
	}
	return n;
}

/* One transfer of at most PAGE_SPLIT_IOVS pages; returns bytes moved (a prefix). */
static size_t transfer(pid_t pid, void *local, const void *remote, size_t len, bool write)
{
	struct iovec remote_iov[PAGE_SPLIT_IOVS];
	struct iovec local_iov = { .iov_base = local, .iov_len = len };
	int n = split_pages(remote, len, remote_iov, PAGE_SPLIT_IOVS);
	size_t covered = 0;
	ssize_t done;

	for (int i = 0; i < n; i++)
		covered += remote_iov[i].iov_len;
	local_iov.iov_len = covered;
	if (write)
		done = process_vm_writev(pid, &local_iov, 1, remote_iov, n, 0);
	else
		done = process_vm_readv(pid, &local_iov, 1, remote_iov, n, 0);
	if (done < 0 && (errno == ENOSYS || errno == EPERM) && pid == getpid()) {
		/* A seccomp policy forbids the calls: trust the pointer, as a
		 * plain library would. Documented in native/README.md. */
		if (write)
			memcpy((void *)remote, local, covered);
		else
			memcpy(local, remote, covered);
		return covered;
	}
	return done < 0 ? 0 : (size_t)done;
}

size_t luofs_peek(pid_t pid, void *dst, const void *src, size_t len)
{
	size_t done = 0;
	int saved = errno;

	while (done < len) {
		size_t got = transfer(pid, (char *)dst + done, (const char *)src + done, len - done,
				      false);
		done += got;
		if (!got)
			break;
	}
	errno = saved;
	return done;
}

bool luofs_poke(pid_t pid, void *dst, const void *src, size_t len)
{
	size_t done = 0;
	int saved = errno;

	while (done < len) {
		size_t put = transfer(pid, (void *)((const char *)src + done), (char *)dst + done,
				      len - done, true);
		done += put;
		if (!put)
			break;
	}
	errno = saved;
	return done == len;
}

int luofs_scan_zero(pid_t pid, const void *src, size_t len)
{
	unsigned char buf[SCAN_CHUNK];
	const char *p = src;

	while (len) {
		size_t want = len < sizeof(buf) ? len : sizeof(buf);
		size_t got = luofs_peek(pid, buf, p, want);

		for (size_t i = 0; i < got; i++)
			if (buf[i])
				return 1;
		if (got < want)
			return -1;
		p += got;
		len -= got;
	}
	return 0;
}
