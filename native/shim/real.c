/*
 * The libc definitions behind the functions we interpose.
 *
 * Resolved lazily rather than in a constructor, because other libraries'
 * constructors may call open() before ours has run. dlsym is thread-safe, and
 * racing threads all store the same pointer, so an atomic load/store is all
 * the synchronisation needed (see shim_real() in shim.h).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>

#include "shim.h"

/* Stands in for a function the C library lacks (an old or unusual libc): the
 * caller sees -1/ENOSYS rather than a jump to address 0. All interposed
 * functions but fopen return an int or ssize_t, and fopen always exists. */
static long missing_function(void)
{
	errno = ENOSYS;
	return -1;
}

void *shim_real_resolve(void **slot, const char *name)
{
	void *fn = dlsym(RTLD_NEXT, name);

	if (!fn)
		fn = (void *)missing_function;
	__atomic_store_n(slot, fn, __ATOMIC_RELEASE);
	return fn;
}
