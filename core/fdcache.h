/* A bounded cache of read-only descriptors of a store's files (blobs and
 * Merkle trees), shared by every open file of every snapshot.
 *
 * A descriptor per open file let any local user who can open files on the
 * mount spend the daemon's descriptors one for one (EMFILE for root's
 * import).  Here a file names its blob; a read borrows the cached
 * descriptor (pinned, so eviction never closes a descriptor in use) and
 * gives it back.  At most fdcache_max() descriptors are open at any time,
 * those being opened included; the least recently used unpinned one is
 * closed to make room.  A blob is content-addressed and every block read is
 * verified, so opening it again by name later is always safe.
 *
 * Process-wide: RLIMIT_NOFILE is per process.  Thread-safe. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

#define FDCACHE_DEFAULT 64

/* The name a store gives a file kept by its digest (a blob by its SHA-256,
 * a tree by its fs-verity digest): "ab/abcdef..." (65+3 bytes). */
void fdcache_digest_name(const uint8_t digest[32], char out[68]);

/* A directory the cache opens names in, and its identity (its descriptor
 * number may be reused by another directory once closed). */
struct fdcache_dir {
	int fd;
	dev_t dev;
	ino_t ino;
};
int fdcache_dir_init(struct fdcache_dir *d, int fd);

/* Where the entry of a file was, to find it again without a lookup.  Read
 * and written only under the cache's lock (several threads read one file). */
struct fdcache_hint {
	uint32_t slot;
	uint64_t gen;
};

/* The bound; set once at start, before any use (later calls are ignored
 * once the cache is in use).  At least 2. */
void fdcache_set_max(unsigned max);
unsigned fdcache_max(void);
/* Descriptors open now (for tests and metrics). */
unsigned fdcache_open_count(void);

/* A descriptor of name under d, open O_RDONLY, pinned: *pin is what to
 * give back to fdcache_put.  Returns the descriptor or a negative errno
 * (the openat's). */
int fdcache_get(const struct fdcache_dir *d, const char *name, struct fdcache_hint *hint, uint32_t *pin);
void fdcache_put(uint32_t pin);
/* Close every unpinned descriptor (after files were deleted: their space
 * is given back now, not at eviction). */
void fdcache_flush(void);
