/* manifest/merkle.bin: the files' Merkle trees, shipped inside the kit so
 * that a reader can verify a block deep inside a large file without first
 * hashing everything before it.  Layout (all integers little-endian):
 *
 *   0   8  magic "STLMRKL1"
 *   8   4  format version, 1
 *   12  4  log2 of the block size, 12
 *   16  8  number of entries N
 *   24  N x 64-byte entries, sorted by digest, digests unique:
 *          32  fs-verity file digest of the file the tree belongs to
 *           8  data size of that file
 *           8  offset of the tree from the start of merkle.bin
 *           8  size of the tree (whole 4096-byte blocks)
 *           8  reserved, zero
 *   then the trees, in entry order, back to back, in fs-verity layout.
 *
 * Only files larger than one block have a tree.  Nothing here is trusted: a
 * tree is used only after its top block hashes to a root whose descriptor
 * digest is the manifest's signed fsverity value. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "err.h"

#define MERKLEFILE_MAGIC "STLMRKL1"
#define MERKLEFILE_HEADER 24u
#define MERKLEFILE_ENTRY 64u

struct merklefile_entry {
	uint8_t fsverity[32];
	uint64_t data_size;
	uint64_t offset;
	uint64_t size;
	uint8_t tree_sha256[32];  /* filled while streaming (verify) */
	bool used;
};

struct merklefile_index {
	size_t n;
	struct merklefile_entry *e;
};

/* Lay out entries (sorted by digest, unique) and write header + index into
 * out (MERKLEFILE_HEADER + n * MERKLEFILE_ENTRY bytes); returns total size of
 * the member. */
uint64_t merklefile_layout(struct merklefile_entry *e, size_t n);
void merklefile_encode_index(const struct merklefile_entry *e, size_t n, uint8_t *out);

/* Parse and check header + index from the first bytes of the member.
 * member_size is the member's size.  -EBADMSG on anything out of place. */
int merklefile_decode_index(const uint8_t *buf, size_t len, uint64_t member_size,
			    struct merklefile_index *idx, struct stella_err *e);
void merklefile_index_free(struct merklefile_index *idx);
const struct merklefile_entry *merklefile_find(const struct merklefile_index *idx,
					       const uint8_t fsverity[32]);
