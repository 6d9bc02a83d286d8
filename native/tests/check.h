/*
 * Minimal check helpers for the C tests: one line per check, a final
 * "N passed, N failed" line, and a nonzero exit status on any failure.
 */
#ifndef LUOFS_TEST_CHECK_H
#define LUOFS_TEST_CHECK_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks_passed, checks_failed;

static void check_report(bool ok, const char *detail, const char *fmt, va_list ap)
{
	printf("%s ", ok ? "ok  " : "FAIL");
	vprintf(fmt, ap);
	if (!ok && detail && *detail)
		printf(": %s", detail);
	printf("\n");
	fflush(stdout);
	if (ok)
		checks_passed++;
	else
		checks_failed++;
}

/* A condition; `fmt` describes what must hold. */
static __attribute__((format(printf, 2, 3), unused)) bool check(bool ok, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	check_report(ok, "", fmt, ap);
	va_end(ap);
	return ok;
}

static const char *errno_name(int err)
{
	const char *name = err ? strerrorname_np(err) : "success";

	return name ? name : "unknown errno";
}

/* A call that returns -1/errno: want 0 means success (rc >= 0). */
static __attribute__((format(printf, 4, 5), unused)) bool
check_errno(long rc, int err, int want, const char *fmt, ...)
{
	char detail[128];
	bool ok = want ? rc == -1 && err == want : rc >= 0;
	va_list ap;

	snprintf(detail, sizeof(detail), "got %s (rc %ld), want %s",
		 rc >= 0 ? "success" : errno_name(err), rc, errno_name(want));
	va_start(ap, fmt);
	check_report(ok, detail, fmt, ap);
	va_end(ap);
	return ok;
}

/* Evaluates `call` once and checks its errno against `want` (0 = success). */
#define EXPECT(want, call, ...)                                       \
	({                                                            \
		errno = 0;                                            \
		long rc_ = (long)(call);                              \
		int err_ = errno;                                     \
		check_errno(rc_, err_, (want), __VA_ARGS__);          \
		errno = err_;                                         \
		rc_;                                                  \
	})

static __attribute__((unused)) void skip(const char *why)
{
	printf("skip %s\n", why);
	fflush(stdout);
}

static __attribute__((unused)) int check_summary(void)
{
	printf("%d passed, %d failed\n", checks_passed, checks_failed);
	fflush(stdout);
	return checks_failed ? 1 : 0;
}

#endif /* LUOFS_TEST_CHECK_H */
