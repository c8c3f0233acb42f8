/* The disk cache of a remote kit's bytes (remote.c), under cache=:
 *
 *   CACHE/remote/urls/<sha256 of the URL>   "KEY SIZE HEAD_LEN VALIDATOR\n": which kit a URL
 *                                           served last (an offline remount finds
 *                                           its cache by the URL it is given)
 *   CACHE/remote/kits/KEY/meta              "stellafs-rcache 1 SIZE CHUNK HEAD_LEN\n"
 *   CACHE/remote/kits/KEY/c<INDEX>          one chunk: a 64-byte header (magic,
 *                                           index, length, sha256 of the data) then
 *                                           the data
 *
 * KEY is the kit's signed manifest's sha256: every mirror of one kit shares
 * its entries.  A chunk file is written under a temporary name and renamed
 * into place, without fsync: after a crash an entry may be missing, or (the
 * rename reached the disk before the data) hold zeros or garbage; every
 * read checks the header and the sha256, and an entry that fails is
 * deleted and fetched again, never served.  A full disk leaves no entry.
 * The bytes a cache serves are verified again above (they are kit bytes
 * like any other): this check only keeps a torn entry from costing a
 * verification failure.
 *
 * Chunks that hold any byte of [0, head_len) are pinned: never evicted,
 * not counted against the bound.  The others are evicted least recently
 * used first (use kept in memory while open; a new open starts from the
 * files' mtimes) once their total passes the bound, down to 90 % of it.
 * A damaged or foreign meta file makes the whole directory be rebuilt
 * (emptied).  An open cache holds a shared flock on its kit's directory;
 * opening one removes other kits' directories that nobody holds, oldest
 * first, until they fit beside it in the bound (rcache.c, "other kits"). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct rcache;

/* The cache of kit KEY (SIZE bytes, cut in CHUNK-byte chunks, head
 * [0, HEAD_LEN) pinned) under DIR, bounded by BOUND bytes of unpinned
 * data; created if missing, rebuilt if its metadata does not match. */
int rcache_open(const char *dir, const char *key, uint64_t size, uint32_t chunk, uint64_t head_len,
		uint64_t bound, struct rcache **out, struct stella_err *e);
void rcache_close(struct rcache *c);

/* Chunk IDX (LEN bytes) into BUF: 0, or -ENOENT (absent, or damaged and
 * now dropped). */
int rcache_get(struct rcache *c, uint64_t idx, void *buf, size_t len);
/* Keep chunk IDX; evicts as needed.  Failures (a full disk) are not
 * errors for the caller: the entry is simply not kept. */
void rcache_put(struct rcache *c, uint64_t idx, const void *buf, size_t len);
/* Whether rcache_put would keep chunk IDX at all: a bound below two
 * chunks keeps the head only. */
bool rcache_keeps(const struct rcache *c, uint64_t idx);
/* Whether chunk IDX is kept (not read: rcache_get may still find it damaged). */
bool rcache_has(struct rcache *c, uint64_t idx);
/* Forget chunk IDX (its bytes failed verification above). */
void rcache_drop(struct rcache *c, uint64_t idx);

/* Bytes kept (pinned included) and reads served. */
void rcache_counts(struct rcache *c, uint64_t *bytes, uint64_t *hits);

/* Remember that URL serves kit KEY (SIZE bytes, head HEAD_LEN), and the
 * validator (ETag, else Last-Modified; "" none) it was served with. */
int rcache_remember_url(const char *dir, const char *url, const char *key, uint64_t size,
			uint64_t head_len, const char *validator);
/* Which kit URL served last: 0 with key[65], size, head_len and (if not
 * NULL) validator[128], or -ENOENT. */
int rcache_lookup_url(const char *dir, const char *url, char key[65], uint64_t *size,
		      uint64_t *head_len, char validator[128]);
