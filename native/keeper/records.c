/*
 * Position, size and seals of many open files, for the file keepers (luofs/keeper.py).
 *
 * A live update reads these for every parked file, 10^5 of them at a time; from Python
 * each file costs about 2 µs, almost all of it in building objects around three system
 * calls. Loaded with ctypes; the keeper falls back to Python when this is not built.
 *
 * Each record is 20 bytes, little-endian: u64 position, u64 size, u32 seals (0 for a
 * file that cannot be sealed), the layout of keeper.RECORD, followed by the asker's
 * `pad` bytes (so that a record arrives in the layout the asker stores).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RECORD_SIZE 20

static void put_le(unsigned char *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

/* 0 on success, else -errno of the first file that failed (its index in *failed). */
__attribute__((visibility("default")))
int luofs_file_records(const int *fds, long n, const unsigned char *pad, long pad_len,
		       unsigned char *out, long *failed)
{
	const long stride = RECORD_SIZE + pad_len;

	for (long i = 0; i < n; i++) {
		unsigned char *rec = out + i * stride;
		struct stat st;
		off_t pos = lseek(fds[i], 0, SEEK_CUR);
		int seals;

		if (pos < 0 || fstat(fds[i], &st) < 0) {
			*failed = i;
			return -errno;
		}
		seals = fcntl(fds[i], F_GET_SEALS);
		if (seals < 0)
			seals = 0;
		put_le(rec, (uint64_t)pos, 8);
		put_le(rec + 8, (uint64_t)st.st_size, 8);
		put_le(rec + 16, (uint32_t)seals, 4);
		if (pad_len)
			memcpy(rec + RECORD_SIZE, pad, (size_t)pad_len);
	}
	return 0;
}
