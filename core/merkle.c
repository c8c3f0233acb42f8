#include <errno.h>
#include "merkle.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>

#include "util.h"

void merkle_geom_init(struct merkle_geom *g, uint64_t data_size)
{
	memset(g, 0, sizeof(*g));
	g->data_size = data_size;
	g->data_blocks = (data_size + MERKLE_BLOCK - 1) / MERKLE_BLOCK;
	uint64_t n = g->data_blocks;
	while (n > 1) {
		n = (n + MERKLE_PER_BLOCK - 1) / MERKLE_PER_BLOCK;
		g->level_blocks[g->levels++] = n;
	}
	uint64_t start = 0;
	for (unsigned l = g->levels; l-- > 0;) {
		g->level_start[l] = start;
		start += g->level_blocks[l];
	}
	g->tree_blocks = start;
}

/* EVP_MD_fetch is not free, and EVP_Digest with a fetched md is the cheapest
 * one-shot EVP path; fetch once for the process. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once_ctl = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* No abort on failure: a daemon serving readers must turn it into one
 * failed request, and no caller may compare what `out` holds then. */
int sha256_once(const void *data, size_t len, uint8_t out[32])
{
	pthread_once(&sha256_once_ctl, sha256_fetch);
	unsigned int n = 32;
	if (!sha256_md || !EVP_Digest(data, len, out, &n, sha256_md, NULL))
		return -ENOMEM;
	return 0;
}

int merkle_hash_block(const uint8_t *data, size_t len, uint8_t out[32])
{
	if (len == MERKLE_BLOCK)
		return sha256_once(data, len, out);
	uint8_t pad[MERKLE_BLOCK];
	memcpy(pad, data, len);
	memset(pad + len, 0, MERKLE_BLOCK - len);
	return sha256_once(pad, MERKLE_BLOCK, out);
}

void merkle_parent_slot(const struct merkle_geom *g, unsigned level, uint64_t index,
			uint64_t *tree_block, unsigned *offset)
{
	/* Hashes of level-l blocks are the entries of level l+1... except that
	 * our levels are numbered by what they hash: level 0 holds data-block
	 * hashes.  The hash of data block i lives in level 0; the hash of tree
	 * block i of level l lives in level l+1. */
	*tree_block = g->level_start[level] + index / MERKLE_PER_BLOCK;
	*offset = (unsigned)(index % MERKLE_PER_BLOCK) * MERKLE_HASH;
}

int merkle_build_upper(const struct merkle_geom *g, uint8_t *tree,
		       const uint8_t first_leaf[32], uint8_t root[32])
{
	if (g->data_blocks == 0) {
		memset(root, 0, 32);
		return 0;
	}
	if (g->levels == 0) {
		memcpy(root, first_leaf, 32);
		return 0;
	}
	for (unsigned l = 0; l + 1 < g->levels; l++) {
		for (uint64_t i = 0; i < g->level_blocks[l]; i++) {
			uint64_t tb;
			unsigned off;
			merkle_parent_slot(g, l + 1, i, &tb, &off);
			int r = sha256_once(tree + (g->level_start[l] + i) * MERKLE_BLOCK, MERKLE_BLOCK,
					    tree + tb * MERKLE_BLOCK + off);
			if (r < 0)
				return r;
		}
	}
	return sha256_once(tree + g->level_start[g->levels - 1] * MERKLE_BLOCK, MERKLE_BLOCK, root);
}

int merkle_file_digest(uint64_t data_size, const uint8_t root[32], uint8_t digest[32])
{
	/* struct fsverity_descriptor, little-endian, 256 bytes. */
	uint8_t d[256] = { 0 };
	d[0] = 1;                /* version */
	d[1] = 1;                /* FS_VERITY_HASH_ALG_SHA256 */
	d[2] = MERKLE_BLOCK_LOG; /* log_blocksize */
	d[3] = 0;                /* salt_size */
	for (int i = 0; i < 8; i++)
		d[8 + i] = (uint8_t)(data_size >> (8 * i));
	memcpy(d + 16, root, 32); /* root_hash[64], SHA-256 uses the first 32 */
	return sha256_once(d, sizeof(d), digest);
}

bool merkle_check_tree_block(const struct merkle_geom *g, const uint8_t *tree_block,
			     const uint8_t *expected_hash)
{
	(void)g;
	uint8_t h[32];
	/* a digest that could not be computed matches nothing */
	return sha256_once(tree_block, MERKLE_BLOCK, h) == 0 && memcmp(h, expected_hash, 32) == 0;
}

bool merkle_check_tree(const struct merkle_geom *g, const uint8_t *tree, const uint8_t root[32])
{
	if (g->levels == 0)
		return true;
	if (!merkle_check_tree_block(g, tree + g->level_start[g->levels - 1] * MERKLE_BLOCK, root))
		return false;
	for (unsigned l = g->levels - 1; l-- > 0;) {
		for (uint64_t i = 0; i < g->level_blocks[l]; i++) {
			uint64_t tb;
			unsigned off;
			merkle_parent_slot(g, l + 1, i, &tb, &off);
			if (!merkle_check_tree_block(g, tree + (g->level_start[l] + i) * MERKLE_BLOCK,
						     tree + tb * MERKLE_BLOCK + off))
				return false;
		}
	}
	return true;
}
