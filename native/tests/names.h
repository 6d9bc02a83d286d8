/*
 * Session names for the C tests: "<prefix>-<suffix>", so parallel runs and the phases
 * of one test agree without clashing. Set `name_prefix` first.
 */
#ifndef LUOFS_TEST_NAMES_H
#define LUOFS_TEST_NAMES_H

#include <linux/liveupdate.h>
#include <stdio.h>

static const char *name_prefix = "t";

/* Eight rotating buffers: a call may use a few names at once. */
static __attribute__((unused)) const char *name_of(const char *suffix)
{
	static char buf[8][LIVEUPDATE_SESSION_NAME_LENGTH];
	static int next;
	char *out = buf[next++ % 8];

	snprintf(out, LIVEUPDATE_SESSION_NAME_LENGTH, "%s-%s", name_prefix, suffix);
	return out;
}

#endif /* LUOFS_TEST_NAMES_H */
