/* merklefile.c: the header and index of manifest/merkle.bin laid out and
 * encoded byte for byte as merklefile.h documents it (little-endian,
 * entries sorted by digest, trees back to back after the index), decoded
 * back to the same entries and found by digest; a header or index out of
 * place (magic, version, block size, order, duplicates, a tree outside the
 * member or of the wrong size) is -EBADMSG. */
#include <stdlib.h>

#include "check.h"
#include "merkle.h"
#include "merklefile.h"

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static struct merklefile_entry entry(uint8_t fill, uint64_t data_size)
{
	struct merklefile_entry x = { .data_size = data_size };
	memset(x.fsverity, fill, 32);
	struct merkle_geom g;
	merkle_geom_init(&g, data_size);
	x.size = merkle_tree_size(&g);
	return x;
}

static int decode(const uint8_t *buf, size_t len, uint64_t total, struct merklefile_index *idx)
{
	struct stella_err e = { 0 };
	memset(idx, 0, sizeof(*idx));
	int r = merklefile_decode_index(buf, len, total, idx, &e);
	if (r == -EBADMSG)
		CHECK(e.msg[0] != 0);
	return r;
}

int main(void)
{
	struct merklefile_entry es[2] = { entry(0x11, 3 * 4096 + 17), entry(0xee, 200 * 4096) };
	CHECK(es[0].size == 4096 && es[1].size == 3 * 4096);
	uint64_t total = merklefile_layout(es, 2);
	size_t hl = MERKLEFILE_HEADER + 2 * MERKLEFILE_ENTRY;
	CHECK(es[0].offset == hl && es[1].offset == hl + 4096);
	CHECK(total == hl + 4 * 4096);
	uint8_t *buf = calloc(1, hl);
	merklefile_encode_index(es, 2, buf);
	CHECK(!memcmp(buf, "STLMRKL1", 8));
	CHECK(buf[8] == 1 && buf[9] == 0 && buf[12] == 12 && le64(buf + 16) == 2);
	const uint8_t *p = buf + MERKLEFILE_HEADER + MERKLEFILE_ENTRY;
	CHECK(p[0] == 0xee && p[31] == 0xee);
	CHECK(le64(p + 32) == 200 * 4096 && le64(p + 40) == hl + 4096 && le64(p + 48) == 3 * 4096 && le64(p + 56) == 0);

	struct merklefile_index idx;
	CHECK(decode(buf, hl, total, &idx) == 0);
	CHECK(idx.n == 2);
	uint8_t d[32];
	memset(d, 0xee, 32);
	const struct merklefile_entry *f = merklefile_find(&idx, d);
	CHECK(f && f->data_size == 200 * 4096 && f->offset == hl + 4096 && f->size == 3 * 4096);
	memset(d, 0x12, 32);
	CHECK(merklefile_find(&idx, d) == NULL);
	merklefile_index_free(&idx);

	uint8_t *bad = malloc(hl);
	struct { size_t at; uint8_t v; } pokes[] = {
		{ 0, 'X' },                                          /* magic */
		{ 8, 2 },                                            /* version */
		{ 12, 13 },                                          /* block size */
		{ MERKLEFILE_HEADER + MERKLEFILE_ENTRY, 0x10 },      /* order: second digest now below the first */
		{ MERKLEFILE_HEADER + 48 + 1, 0x20 },                /* first tree's size: not its data's */
	};
	for (size_t i = 0; i < sizeof(pokes) / sizeof(pokes[0]); i++) {
		memcpy(bad, buf, hl);
		bad[pokes[i].at] = pokes[i].v;
		int r = decode(bad, hl, total, &idx);
		if (r != -EBADMSG)
			fprintf(stderr, "  poke %zu: %d\n", i, r);
		CHECK(r == -EBADMSG);
		merklefile_index_free(&idx);
	}
	/* duplicates */
	memcpy(bad, buf, hl);
	memset(bad + MERKLEFILE_HEADER + MERKLEFILE_ENTRY, 0x11, 32);
	CHECK(decode(bad, hl, total, &idx) == -EBADMSG);
	merklefile_index_free(&idx);
	/* a member shorter than its trees */
	CHECK(decode(buf, hl, total - 4096, &idx) == -EBADMSG);
	merklefile_index_free(&idx);
	/* an index cut short */
	CHECK(decode(buf, hl - 1, total, &idx) == -EBADMSG);
	merklefile_index_free(&idx);
	free(bad);
	free(buf);
	return CHECK_DONE();
}
