/* fs-verity Merkle trees: SHA-256, 4096-byte blocks, no salt.
 *
 * The tree is laid out exactly as fs-verity stores it (and as `fsverity
 * digest` computes it): level 0 holds the hashes of the data blocks, each
 * higher level the hashes of the blocks of the level below, every level padded
 * with zeros to whole blocks, and the levels stored top level first.  The root
 * hash is the hash of the single top block; a file of one block has no tree
 * and its root is that block's hash; an empty file's root is all zeros.  The
 * file digest that manifests carry ("sha256:<hex>") is the SHA-256 of the
 * 256-byte fsverity_descriptor naming the root and the data size. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#define MERKLE_BLOCK      4096u
#define MERKLE_BLOCK_LOG  12
#define MERKLE_HASH       32u
#define MERKLE_PER_BLOCK  (MERKLE_BLOCK / MERKLE_HASH)
#define MERKLE_MAX_LEVELS 8   /* 128^8 blocks: more than any 64-bit size */

struct merkle_geom {
	uint64_t data_size;
	uint64_t data_blocks;
	unsigned levels;                          /* 0: at most one data block */
	uint64_t level_blocks[MERKLE_MAX_LEVELS]; /* level 0 hashes data blocks */
	uint64_t level_start[MERKLE_MAX_LEVELS];  /* first block of each level in the tree */
	uint64_t tree_blocks;
};

void merkle_geom_init(struct merkle_geom *g, uint64_t data_size);
static inline uint64_t merkle_tree_size(const struct merkle_geom *g)
{
	return g->tree_blocks * MERKLE_BLOCK;
}

/* SHA-256 over len bytes, one-shot, with a cached algorithm handle.  Safe to
 * call from many threads.  0, or -ENOMEM when OpenSSL could not (it
 * allocates a context per call): then `out` holds nothing to compare. */
__attribute__((warn_unused_result)) int sha256_once(const void *data, size_t len, uint8_t out[32]);
/* SHA-256 of one data block, zero-padded to MERKLE_BLOCK when len is short. */
__attribute__((warn_unused_result)) int merkle_hash_block(const uint8_t *data, size_t len, uint8_t out[32]);

/* Hash levels 1.. of a tree whose level 0 is filled in, and return the root.
 * first_leaf is the hash of data block 0 (used when the tree has no level). */
__attribute__((warn_unused_result)) int merkle_build_upper(const struct merkle_geom *g, uint8_t *tree,
							   const uint8_t first_leaf[32], uint8_t root[32]);

/* The fs-verity file digest for a root and size. */
__attribute__((warn_unused_result)) int merkle_file_digest(uint64_t data_size, const uint8_t root[32],
							   uint8_t digest[32]);

/* Check one hash block (index within the tree) against its parent entry, or
 * against the root for the top block.  Returns true when it matches. */
bool merkle_check_tree_block(const struct merkle_geom *g, const uint8_t *tree_block,
			     const uint8_t *expected_hash);

/* Where the hash of block `index` of `level` is kept: the tree block holding
 * it (index within the tree) and the byte offset inside that block.  Level
 * `levels` means the root. */
void merkle_parent_slot(const struct merkle_geom *g, unsigned level, uint64_t index,
			uint64_t *tree_block, unsigned *offset);

/* Check that a whole stored tree matches root: every block against its
 * parent.  Used on manifest/merkle.bin trees before trusting them. */
bool merkle_check_tree(const struct merkle_geom *g, const uint8_t *tree, const uint8_t root[32]);
