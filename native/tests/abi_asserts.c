/*
 * Compile-time pins of include/linux/liveupdate.h against spec/uapi.md §2-§3:
 * request numbers, struct sizes, field offsets and alignment. Built as an
 * object file with -std=c11 -pedantic, so the header also stays plain C; any
 * drift fails the build of native/ (and therefore `make test`).
 */
#include <stddef.h>
#include <linux/liveupdate.h>

#define SIZE(type, n) _Static_assert(sizeof(struct type) == (n), #type " size")
#define OFF(type, field, n) \
	_Static_assert(offsetof(struct type, field) == (n), #type "." #field " offset")
#define ALIGN(type, n) _Static_assert(_Alignof(struct type) == (n), #type " alignment")
#define NUM(name, n) _Static_assert((name) == (n), #name " value")

NUM(LIVEUPDATE_IOCTL_TYPE, 0xBA);
NUM(LIVEUPDATE_SESSION_NAME_LENGTH, 64);
NUM(LIVEUPDATE_IOCTL_CREATE_SESSION, 0xBA00);
NUM(LIVEUPDATE_IOCTL_RETRIEVE_SESSION, 0xBA01);
NUM(LIVEUPDATE_SESSION_PRESERVE_FD, 0xBA40);
NUM(LIVEUPDATE_SESSION_RETRIEVE_FD, 0xBA41);
NUM(LIVEUPDATE_SESSION_FINISH, 0xBA42);
NUM(LIVEUPDATE_SESSION_GET_NAME, 0xBA43);
NUM(LIVEUPDATE_CMD_CREATE_SESSION, 0x00);
NUM(LIVEUPDATE_CMD_RETRIEVE_SESSION, 0x01);
NUM(LIVEUPDATE_CMD_SESSION_PRESERVE_FD, 0x40);
NUM(LIVEUPDATE_CMD_SESSION_RETRIEVE_FD, 0x41);
NUM(LIVEUPDATE_CMD_SESSION_FINISH, 0x42);
NUM(LIVEUPDATE_CMD_SESSION_GET_NAME, 0x43);
/* _IO: no direction and no size bits. */
NUM(_IOC_DIR(LIVEUPDATE_SESSION_GET_NAME), _IOC_NONE);
NUM(_IOC_SIZE(LIVEUPDATE_SESSION_PRESERVE_FD), 0);

SIZE(liveupdate_ioctl_create_session, 72);
OFF(liveupdate_ioctl_create_session, size, 0);
OFF(liveupdate_ioctl_create_session, fd, 4);
OFF(liveupdate_ioctl_create_session, name, 8);
ALIGN(liveupdate_ioctl_create_session, 4);

SIZE(liveupdate_ioctl_retrieve_session, 72);
OFF(liveupdate_ioctl_retrieve_session, size, 0);
OFF(liveupdate_ioctl_retrieve_session, fd, 4);
OFF(liveupdate_ioctl_retrieve_session, name, 8);

SIZE(liveupdate_session_preserve_fd, 16);
OFF(liveupdate_session_preserve_fd, size, 0);
OFF(liveupdate_session_preserve_fd, fd, 4);
OFF(liveupdate_session_preserve_fd, token, 8);
ALIGN(liveupdate_session_preserve_fd, 8);

SIZE(liveupdate_session_retrieve_fd, 16);
OFF(liveupdate_session_retrieve_fd, size, 0);
OFF(liveupdate_session_retrieve_fd, fd, 4);
OFF(liveupdate_session_retrieve_fd, token, 8);
ALIGN(liveupdate_session_retrieve_fd, 8);

SIZE(liveupdate_session_finish, 8);
OFF(liveupdate_session_finish, size, 0);
OFF(liveupdate_session_finish, reserved, 4);

SIZE(liveupdate_session_get_name, 72);
OFF(liveupdate_session_get_name, size, 0);
OFF(liveupdate_session_get_name, reserved, 4);
OFF(liveupdate_session_get_name, name, 8);

/* Field types: signedness matters to callers comparing fd with -1. */
_Static_assert((__typeof__(((struct liveupdate_ioctl_create_session *)0)->fd))-1 < 0,
	       "create_session.fd is signed");
_Static_assert((__typeof__(((struct liveupdate_session_preserve_fd *)0)->token))-1 > 0,
	       "preserve_fd.token is unsigned");
_Static_assert(sizeof(((struct liveupdate_session_get_name *)0)->name[0]) == 1, "name is bytes");
