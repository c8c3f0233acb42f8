/* fs-verity digests against values printed by `fsverity digest` (fsverity-utils)
 * for the same generated contents, through both the one-shot block API and
 * the threaded streaming hasher, plus tree self-checks. */
#include <stdlib.h>

#include "check.h"
#include "hasher.h"
#include "merkle.h"
#include "util.h"

struct vec {
	const char *what;
	size_t size;
	int pattern;
	const char *fsverity;
};

static uint8_t byte_at(int pattern, size_t i)
{
	switch (pattern) {
	case 0: return 0;
	case 1: return 'a';
	case 2: return 'x';
	case 3: return (uint8_t)(i % 251);
	default: return (uint8_t)((i * 7) % 253);
	}
}

static const struct vec vecs[] = {
	{ "empty", 0, 0, "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95" },
	{ "one byte", 1, 1, "bce75948b9e7510293f8f2720412af9697c1479281323f3f220623fb8e94b557" },
	{ "one block of zeros", 4096, 0, "babc284ee4ffe7f449377fbf6692715b43aec7bc39c094a95878904d34bac97e" },
	{ "one block + 1", 4097, 2, "f54d7eca1ac49ae471f4abedb0d9309f0b84a51ec5c1733e3abb2aaf9f66c4ad" },
	{ "1 MiB + 1", (1u << 20) + 1, 3, "89f2376c7699bfe271478a8e3356d434d4a35784edce47fac74c8e5bc7456c1d" },
	{ "128 blocks + 1 (two levels)", 128 * 4096 + 1, 4, "7fa9bade0ca7daa7a9fcb6548e8a0caa9c83c9c75ada6804523f2937b1cd6716" },
};

static void run_vec(struct hasher *h, const struct vec *v, size_t feed)
{
	uint8_t *data = malloc(v->size + 1);
	for (size_t i = 0; i < v->size; i++)
		data[i] = byte_at(v->pattern, i);
	CHECK(hasher_begin(h, v->size) == 0);
	for (size_t off = 0; off < v->size;) {
		size_t n = v->size - off < feed ? v->size - off : feed;
		uint8_t *buf = hasher_buf(h);
		memcpy(buf, data + off, n);
		hasher_put(h, n);
		off += n;
	}
	struct hasher_result r;
	CHECK(hasher_end(h, &r) == 0);
	char hex[65];
	hex_encode(r.fsverity, 32, hex);
	CHECK_STR(hex, v->fsverity);

	uint8_t sha[32];
	CHECK(sha256_once(data, v->size, sha) == 0);
	CHECK(memcmp(sha, r.sha256, 32) == 0);
	/* The stored tree must check out against its root, and a flipped byte in
	 * any level must not. */
	CHECK(merkle_check_tree(&r.geom, r.tree, r.root));
	if (r.geom.levels) {
		uint8_t *copy = malloc(merkle_tree_size(&r.geom));
		memcpy(copy, r.tree, merkle_tree_size(&r.geom));
		copy[merkle_tree_size(&r.geom) - 5] ^= 1;
		CHECK(!merkle_check_tree(&r.geom, copy, r.root));
		free(copy);
	}
	free(data);
}

int main(void)
{
	struct merkle_geom g;
	merkle_geom_init(&g, 0);
	CHECK(g.levels == 0 && g.tree_blocks == 0);
	merkle_geom_init(&g, 4096);
	CHECK(g.levels == 0);
	merkle_geom_init(&g, 4097);
	CHECK(g.levels == 1 && g.tree_blocks == 1);
	merkle_geom_init(&g, 128 * 4096 + 1);
	CHECK(g.levels == 2 && g.level_blocks[0] == 2 && g.level_blocks[1] == 1);
	CHECK(g.level_start[1] == 0 && g.level_start[0] == 1); /* top level first */
	merkle_geom_init(&g, 1ull << 30);
	CHECK(g.levels == 3 && g.tree_blocks == 2048 + 16 + 1);

	/* Single-threaded and threaded hashers, whole chunks and odd feeds. */
	for (unsigned threads = 0; threads <= 3; threads += 3) {
		struct hasher *h;
		CHECK(hasher_new(&h, threads) == 0);
		for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++)
			run_vec(h, &vecs[i], HASHER_CHUNK);
		hasher_free(h);
	}

	/* Announcing one size and feeding another is an error, not a digest. */
	struct hasher *h;
	CHECK(hasher_new(&h, 1) == 0);
	CHECK(hasher_begin(h, 10) == 0);
	memset(hasher_buf(h), 1, 5);
	hasher_put(h, 5);
	struct hasher_result r;
	CHECK(hasher_end(h, &r) == -EIO);
	hasher_free(h);
	return CHECK_DONE();
}
