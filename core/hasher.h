/* Streaming digests of one file's bytes: the plain SHA-256 and the fs-verity
 * Merkle tree, computed together in one pass.
 *
 * The plain SHA-256 is inherently sequential, the Merkle leaves are not, so
 * the caller's thread hashes the stream while worker threads hash the 4 KiB
 * leaves of the chunks already handed over: on two cores both digests cost
 * about one SHA-256 pass instead of two.  The caller fills chunk buffers the
 * hasher owns (no copy), in order. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "merkle.h"

#define HASHER_CHUNK (1u << 20)

struct hasher;

struct hasher_result {
	uint8_t sha256[32];
	uint8_t fsverity[32];   /* fs-verity file digest */
	uint8_t root[32];       /* Merkle root hash */
	struct merkle_geom geom;
	const uint8_t *tree;    /* merkle_tree_size(&geom) bytes, owned by the hasher
				 * until the next hasher_begin */
};

/* threads == 0: choose from the number of CPUs. */
int hasher_new(struct hasher **out, unsigned threads);
void hasher_free(struct hasher *h);
static inline void hasher_freep(struct hasher **h) { hasher_free(*h); }

/* Start a file of exactly size bytes. */
int hasher_begin(struct hasher *h, uint64_t size);
/* The buffer for the next chunk; fill HASHER_CHUNK bytes (fewer only for the
 * file's last chunk) and hand it over with hasher_put. */
uint8_t *hasher_buf(struct hasher *h);
void hasher_put(struct hasher *h, size_t len);
/* Wait for the workers, finish both digests.  -EIO if fewer or more bytes than
 * announced were put. */
int hasher_end(struct hasher *h, struct hasher_result *res);

/* The SHA-256 of everything FD holds, read with pread (no shared offset):
 * 0, -ENOMEM, or the read's negative errno. */
int sha256_fd(int fd, uint8_t out[32]);
