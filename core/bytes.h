/* The bytes of a kit file, wherever they are kept.
 *
 * Every byte of a kit that stellafs or stellakit reads goes through one of
 * these: source.c (the tar stream, whatever the compression) holds a
 * struct bytes and never a descriptor, and the index cache ties itself to
 * the kit through bytes_identity() rather than fstat.  Today there is one
 * kind, a local regular file or block device (bytes_open_path,
 * bytes_open_fd); an HTTP range reader or an OCI blob is another ops table
 * behind the same calls.
 *
 * An uncompressed kit's reads go straight through here to pread(2): the
 * read is one indirect call into the caller's buffer, no copy. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "err.h"

struct bytes;

struct bytes_ops {
	/* Up to len bytes at off into buf: the number read, short only at
	 * the end of the bytes (0 past it), or a negative errno.  Called
	 * from any number of threads at once. */
	ssize_t (*read_at)(struct bytes *b, void *buf, size_t len, uint64_t off);
	/* Optional: the bytes are about to be read from start to end. */
	void (*advise_sequential)(struct bytes *b);
	/* Optional: a second handle on the same bytes (not on whatever the
	 * name names by now), independent of b's lifetime. */
	int (*dup)(const struct bytes *b, struct bytes **out, struct stella_err *e);
	void (*close)(struct bytes *b);
	/* Optional: the layer above found bytes [off, off+len) bad (they
	 * failed verification).  Forget them wherever they are kept, never
	 * trust where they came from for that range again, and say whether
	 * a retry may get good ones: 0 (another mirror may serve them: read
	 * again) or -EIO (nothing else to try). */
	int (*report_bad)(struct bytes *b, uint64_t off, uint64_t len);
};

/* Implementations embed this first and fill it in. */
struct bytes {
	const struct bytes_ops *ops;
	char *name;         /* for messages: a path, later a URL */
	uint64_t size;
	/* a block device: its size is the device's, larger than the kit on it */
	bool device;
	/* What tells this kit file from a rewritten one without reading it,
	 * for the index cache: for a local file its inode, mtime and ctime
	 * (any rewrite changes the ctime); for a remote one, later, an ETag
	 * or the signed manifest's digest.  Never empty. */
	char identity[96];
};

/* The local kit file PATH, never blocking in open(2) (a FIFO named where a
 * kit is expected would wait for a writer for good): -EINVAL with the
 * reason for anything but a regular file or block device. */
int bytes_open_path(const char *path, struct bytes **out, struct stella_err *e);
/* The kit already open on FD (blocking mode), taken over whatever the
 * outcome; NAME names it in messages. */
int bytes_open_fd(int fd, const char *name, struct bytes **out, struct stella_err *e);
/* -EINVAL, with the reason, unless ST is a regular file or block device. */
int bytes_check_type(const char *name, const struct stat *st, struct stella_err *e);

static inline ssize_t bytes_read_at(struct bytes *b, void *buf, size_t len, uint64_t off)
{
	return b->ops->read_at(b, buf, len, off);
}

/* Exactly len bytes at off: 0, -EIO if the bytes end first, or a negative
 * errno. */
int bytes_read_full(struct bytes *b, void *buf, size_t len, uint64_t off);

static inline void bytes_advise_sequential(struct bytes *b)
{
	if (b->ops->advise_sequential)
		b->ops->advise_sequential(b);
}

static inline int bytes_dup(const struct bytes *b, struct bytes **out, struct stella_err *e)
{
	if (!b->ops->dup)
		return stella_fail(e, -EOPNOTSUPP, "%s: cannot be opened twice", b->name);
	return b->ops->dup(b, out, e);
}

/* -EIO for bytes with nowhere else to get them from (a local file). */
static inline int bytes_report_bad(struct bytes *b, uint64_t off, uint64_t len)
{
	if (!b->ops->report_bad)
		return -EIO;
	return b->ops->report_bad(b, off, len);
}

static inline const char *bytes_name(const struct bytes *b) { return b->name; }
static inline uint64_t bytes_size(const struct bytes *b) { return b->size; }
static inline bool bytes_is_device(const struct bytes *b) { return b->device; }
static inline const char *bytes_identity(const struct bytes *b) { return b->identity; }

void bytes_close(struct bytes *b);
