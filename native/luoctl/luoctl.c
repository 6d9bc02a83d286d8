/*
 * luoctl: drive /dev/liveupdate from shell scripts.
 *
 * Written only against <linux/liveupdate.h> and ioctl(), like any real program:
 * it runs unchanged on a kernel with LUO, and under the luofs shim.
 *
 * A session lives only while its fd is open, so one luoctl process runs a
 * whole sequence of steps on the session it creates or retrieves, and `hold`
 * keeps it open for as long as the script needs (see usage()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/liveupdate.h>
#include <linux/reboot.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <unistd.h>

#define EXIT_FAILED 1
#define EXIT_USAGE 2

static const char usage_text[] =
	"usage: luoctl STEP [ARG]... [STEP [ARG]...]...\n"
	"\n"
	"Runs the steps in order, in one process. A session lives only while its fd is\n"
	"open, so the steps share one: create or retrieve makes a session current, and\n"
	"later steps act on it. Earlier sessions stay open until luoctl exits.\n"
	"\n"
	"Steps:\n"
	"  create NAME          open /dev/liveupdate, create session NAME, close the device\n"
	"  retrieve NAME        open /dev/liveupdate, retrieve session NAME, close the device\n"
	"  preserve TOKEN FILE  preserve FILE (opened read-write) under TOKEN\n"
	"  preserve TOKEN -     preserve a new memfd filled with all of stdin under TOKEN\n"
	"  get TOKEN            retrieve TOKEN's file and copy its bytes (from offset 0)\n"
	"                       to stdout\n"
	"  finish               finish the session (LIVEUPDATE_SESSION_FINISH)\n"
	"  name                 print the session's name (LIVEUPDATE_SESSION_GET_NAME)\n"
	"  close                close the session fd now\n"
	"  hold                 print \"held NAME\" on stdout, then keep every session open\n"
	"                       until SIGTERM, SIGINT or SIGHUP; then go on with the next\n"
	"                       step (so `hold finish` finishes when told)\n"
	"  hold-until-eof       like hold, but also stop when stdin reaches EOF (for\n"
	"                       coprocesses; a background job's stdin is /dev/null)\n"
	"  kexec                reboot(LINUX_REBOOT_CMD_KEXEC) with the sessions open\n"
	"                       (under the luofs shim: `luofs kexec`)\n"
	"\n"
	"TOKEN is a u64, decimal or 0x-prefixed hex.\n"
	"\n"
	"Examples:\n"
	"  echo data | luoctl create vm preserve 1 - hold &   # kill %1 ends it\n"
	"  luoctl create vm preserve 1 - kexec < image.bin\n"
	"  luoctl retrieve vm get 1 finish > image.bin\n"
	"\n"
	"Exit status: 0 on success; 1 when a step fails (the message names the ioctl\n"
	"or call and strerror(errno)); 2 on a usage error.\n";

struct state {
	int session;       /* current session fd, or -1 */
	bool stdin_used;   /* consumed by `preserve TOKEN -` */
};

static __attribute__((format(printf, 1, 2), noreturn)) void usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "luoctl: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n(luoctl --help lists the steps)\n");
	exit(EXIT_USAGE);
}

static void fail(const char *what, const char *detail)
{
	int err = errno;

	fprintf(stderr, "luoctl: %s%s%s: %s\n", what, detail ? " " : "", detail ? detail : "",
		strerror(err));
	exit(EXIT_FAILED);
}

static uint64_t parse_token(const char *s)
{
	char *end;
	uint64_t v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s || *end || *s == '-')
		usage_error("bad token '%s' (a u64, decimal or 0x-hex)", s);
	return v;
}

static int open_session(unsigned long request, const char *what, const char *name)
{
	struct liveupdate_ioctl_create_session arg;
	int dev, err;

	dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		fail("open", "/dev/liveupdate");
	memset(&arg, 0, sizeof(arg));
	arg.size = sizeof(arg);
	arg.fd = -1;
	memcpy(arg.name, name, strlen(name));
	if (ioctl(dev, request, &arg) < 0) {
		err = errno;
		close(dev);
		errno = err;
		fail(what, name);
	}
	/* The device is exclusive; sessions live on without it (spec §5). */
	close(dev);
	return arg.fd;
}

static int memfd_from_stdin(void)
{
	char buf[65536];
	ssize_t n;
	int fd = memfd_create("luoctl", MFD_CLOEXEC);

	if (fd < 0)
		fail("memfd_create", NULL);
	while ((n = read(STDIN_FILENO, buf, sizeof(buf))) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fail("read", "stdin");
		}
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(fd, buf + off, (size_t)(n - off));

			if (w < 0)
				fail("write", "memfd");
			off += w;
		}
	}
	return fd;
}

static void step_preserve(struct state *st, const char *token, const char *file)
{
	struct liveupdate_session_preserve_fd arg;
	char detail[64];
	int fd;

	if (strcmp(file, "-") == 0) {
		fd = memfd_from_stdin();
		st->stdin_used = true;
	} else {
		fd = open(file, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			fail("open", file);
	}
	memset(&arg, 0, sizeof(arg));
	arg.size = sizeof(arg);
	arg.fd = fd;
	arg.token = parse_token(token);
	snprintf(detail, sizeof(detail), "(token %s)", token);
	if (ioctl(st->session, LIVEUPDATE_SESSION_PRESERVE_FD, &arg) < 0)
		fail("LIVEUPDATE_SESSION_PRESERVE_FD", detail);
	/* LUO holds its own reference from now on (spec §9). */
	close(fd);
}

static void step_get(struct state *st, const char *token)
{
	struct liveupdate_session_retrieve_fd arg;
	char buf[65536], detail[64];
	off_t off = 0;
	ssize_t n;

	memset(&arg, 0, sizeof(arg));
	arg.size = sizeof(arg);
	arg.fd = -1;
	arg.token = parse_token(token);
	snprintf(detail, sizeof(detail), "(token %s)", token);
	if (ioctl(st->session, LIVEUPDATE_SESSION_RETRIEVE_FD, &arg) < 0)
		fail("LIVEUPDATE_SESSION_RETRIEVE_FD", detail);
	/* pread: the file position is carried across the update and is not ours
	 * to move. */
	while ((n = pread(arg.fd, buf, sizeof(buf), off)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fail("pread", "retrieved file");
		}
		if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n)
			fail("write", "stdout");
		off += n;
	}
	if (fflush(stdout) != 0)
		fail("write", "stdout");
	close(arg.fd);
}

static void step_finish(struct state *st)
{
	struct liveupdate_session_finish arg = { .size = sizeof(arg), .reserved = 0 };

	if (ioctl(st->session, LIVEUPDATE_SESSION_FINISH, &arg) < 0)
		fail("LIVEUPDATE_SESSION_FINISH", NULL);
}

static void session_name(const struct state *st, char *out)
{
	struct liveupdate_session_get_name arg;

	memset(&arg, 0, sizeof(arg));
	arg.size = sizeof(arg);
	if (ioctl(st->session, LIVEUPDATE_SESSION_GET_NAME, &arg) < 0)
		fail("LIVEUPDATE_SESSION_GET_NAME", NULL);
	memcpy(out, arg.name, LIVEUPDATE_SESSION_NAME_LENGTH);
	out[LIVEUPDATE_SESSION_NAME_LENGTH - 1] = '\0';
}

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig) { stop_signal = sig; }

static void step_hold(struct state *st, bool until_eof)
{
	static const int stops[] = { SIGTERM, SIGINT, SIGHUP };
	struct sigaction sa = { .sa_handler = on_stop }, old[3];
	sigset_t block, orig;
	char name[LIVEUPDATE_SESSION_NAME_LENGTH] = "";
	bool watch_stdin = until_eof && !st->stdin_used;

	sigemptyset(&block);
	for (int i = 0; i < 3; i++) {
		sigaddset(&block, stops[i]);
		sigaction(stops[i], &sa, &old[i]);
	}
	/* Blocked until ppoll, which unblocks atomically: no lost signal. */
	sigprocmask(SIG_BLOCK, &block, &orig);
	if (st->session >= 0)
		session_name(st, name);
	printf("held %s\n", name);
	fflush(stdout);

	stop_signal = 0;
	while (!stop_signal) {
		struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
		char buf[4096];
		int n = ppoll(&pfd, watch_stdin ? 1 : 0, NULL, &orig);

		if (n < 0 && errno != EINTR)
			fail("ppoll", NULL);
		if (n > 0 && pfd.revents) {
			ssize_t r = read(STDIN_FILENO, buf, sizeof(buf));

			if (r <= 0)
				break; /* EOF (or a broken stdin): the script is done */
		}
	}
	for (int i = 0; i < 3; i++)
		sigaction(stops[i], &old[i], NULL);
	sigprocmask(SIG_SETMASK, &orig, NULL);
}

static void step_kexec(void)
{
	fflush(NULL);
	if (reboot(LINUX_REBOOT_CMD_KEXEC) < 0)
		fail("reboot", "(LINUX_REBOOT_CMD_KEXEC)");
}

struct step {
	const char *name;
	int nargs;
	bool needs_session;
	const char *arg_help;
};

static const struct step steps[] = {
	{ "create", 1, false, "a NAME" },
	{ "retrieve", 1, false, "a NAME" },
	{ "preserve", 2, true, "TOKEN and FILE (or -)" },
	{ "get", 1, true, "a TOKEN" },
	{ "finish", 0, true, NULL },
	{ "name", 0, true, NULL },
	{ "close", 0, true, NULL },
	{ "hold", 0, false, NULL },
	{ "hold-until-eof", 0, false, NULL },
	{ "kexec", 0, false, NULL },
};

static const struct step *find_step(const char *name)
{
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
		if (!strcmp(steps[i].name, name))
			return &steps[i];
	return NULL;
}

/* The whole command line is checked before anything runs, so a typo in a late
 * step never leaves a half-done sequence behind. */
static void validate(int argc, char **argv)
{
	bool have_session = false;

	for (int i = 1; i < argc; i++) {
		const struct step *step = find_step(argv[i]);

		if (!step)
			usage_error("unknown step '%s'", argv[i]);
		if (i + step->nargs >= argc)
			usage_error("'%s' needs %s", step->name, step->arg_help);
		if (step->needs_session && !have_session)
			usage_error("'%s' needs a session: create or retrieve one first", step->name);
		if (!strcmp(step->name, "create") || !strcmp(step->name, "retrieve")) {
			if (strlen(argv[i + 1]) >= LIVEUPDATE_SESSION_NAME_LENGTH)
				usage_error("session name '%s' is longer than 63 bytes", argv[i + 1]);
			have_session = true;
		} else if (!strcmp(step->name, "close")) {
			have_session = false;
		} else if (!strcmp(step->name, "preserve") || !strcmp(step->name, "get")) {
			parse_token(argv[i + 1]);
		}
		i += step->nargs;
	}
}

int main(int argc, char **argv)
{
	struct state st = { .session = -1, .stdin_used = false };
	char name[LIVEUPDATE_SESSION_NAME_LENGTH];

	if (argc < 2) {
		fputs(usage_text, stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
		fputs(usage_text, stdout);
		return 0;
	}
	validate(argc, argv);
	for (int i = 1; i < argc; i++) {
		const struct step *step = find_step(argv[i]);
		const char *a1 = step->nargs > 0 ? argv[i + 1] : NULL;
		const char *a2 = step->nargs > 1 ? argv[i + 2] : NULL;

		if (!strcmp(step->name, "create")) {
			/* The previous session stays open: only exit closes it. */
			st.session = open_session(LIVEUPDATE_IOCTL_CREATE_SESSION,
						  "LIVEUPDATE_IOCTL_CREATE_SESSION", a1);
		} else if (!strcmp(step->name, "retrieve")) {
			st.session = open_session(LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
						  "LIVEUPDATE_IOCTL_RETRIEVE_SESSION", a1);
		} else if (!strcmp(step->name, "preserve")) {
			step_preserve(&st, a1, a2);
		} else if (!strcmp(step->name, "get")) {
			step_get(&st, a1);
		} else if (!strcmp(step->name, "finish")) {
			step_finish(&st);
		} else if (!strcmp(step->name, "name")) {
			session_name(&st, name);
			printf("%s\n", name);
			fflush(stdout);
		} else if (!strcmp(step->name, "close")) {
			close(st.session);
			st.session = -1;
		} else if (!strcmp(step->name, "hold") || !strcmp(step->name, "hold-until-eof")) {
			step_hold(&st, step->name[4] == '-');
		} else if (!strcmp(step->name, "kexec")) {
			step_kexec();
		}
		i += step->nargs;
	}
	return 0;
}
