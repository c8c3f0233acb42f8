#include "merklefile.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bounds.h"
#include "merkle.h"

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

uint64_t merklefile_layout(struct merklefile_entry *e, size_t n)
{
	uint64_t off = MERKLEFILE_HEADER + (uint64_t)n * MERKLEFILE_ENTRY;
	for (size_t i = 0; i < n; i++) {
		e[i].offset = off;
		off += e[i].size;
	}
	return off;
}

void merklefile_encode_index(const struct merklefile_entry *e, size_t n, uint8_t *out)
{
	memset(out, 0, MERKLEFILE_HEADER + n * MERKLEFILE_ENTRY);
	memcpy(out, MERKLEFILE_MAGIC, 8);
	out[8] = 1;
	out[12] = MERKLE_BLOCK_LOG;
	put64(out + 16, n);
	for (size_t i = 0; i < n; i++) {
		uint8_t *p = out + MERKLEFILE_HEADER + i * MERKLEFILE_ENTRY;
		memcpy(p, e[i].fsverity, 32);
		put64(p + 32, e[i].data_size);
		put64(p + 40, e[i].offset);
		put64(p + 48, e[i].size);
	}
}

int merklefile_decode_index(const uint8_t *buf, size_t len, uint64_t member_size,
			    struct merklefile_index *idx, struct stella_err *e)
{
	memset(idx, 0, sizeof(*idx));
	if (len < MERKLEFILE_HEADER || memcmp(buf, MERKLEFILE_MAGIC, 8))
		return stella_fail(e, -EBADMSG, "merkle.bin: bad magic");
	if (buf[8] != 1 || buf[9] || buf[10] || buf[11])
		return stella_fail(e, -EBADMSG, "merkle.bin: unsupported version %u", buf[8]);
	if (buf[12] != MERKLE_BLOCK_LOG || buf[13] || buf[14] || buf[15])
		return stella_fail(e, -EBADMSG, "merkle.bin: block size must be 4096");
	uint64_t n = get64(buf + 16);
	if (n > STELLA_ARTIFACTS_MAX || MERKLEFILE_HEADER + n * MERKLEFILE_ENTRY > len)
		return stella_fail(e, -EBADMSG, "merkle.bin: %llu entries do not fit the member",
				   (unsigned long long)n);
	if (n && !(idx->e = calloc(n, sizeof(*idx->e))))
		return -ENOMEM;
	idx->n = n;
	uint64_t expect = MERKLEFILE_HEADER + n * MERKLEFILE_ENTRY;
	for (size_t i = 0; i < n; i++) {
		const uint8_t *p = buf + MERKLEFILE_HEADER + i * MERKLEFILE_ENTRY;
		struct merklefile_entry *x = &idx->e[i];
		memcpy(x->fsverity, p, 32);
		x->data_size = get64(p + 32);
		x->offset = get64(p + 40);
		x->size = get64(p + 48);
		struct merkle_geom g;
		merkle_geom_init(&g, x->data_size);
		const char *why = NULL;
		if (i > 0 && memcmp(idx->e[i - 1].fsverity, x->fsverity, 32) >= 0)
			why = "entries not sorted or not unique";
		else if (get64(p + 56))
			why = "reserved field not zero";
		else if (g.levels == 0 || x->size != merkle_tree_size(&g))
			why = "tree size does not match the data size";
		else if (x->offset != expect)
			why = "trees not laid out back to back";
		if (why) {
			merklefile_index_free(idx);
			return stella_fail(e, -EBADMSG, "merkle.bin: entry %zu: %s", i, why);
		}
		expect += x->size;
	}
	if (expect != member_size) {
		merklefile_index_free(idx);
		return stella_fail(e, -EBADMSG, "merkle.bin: member is %llu bytes, its index describes %llu",
				   (unsigned long long)member_size, (unsigned long long)expect);
	}
	return 0;
}

void merklefile_index_free(struct merklefile_index *idx)
{
	free(idx->e);
	idx->e = NULL;
	idx->n = 0;
}

const struct merklefile_entry *merklefile_find(const struct merklefile_index *idx,
					       const uint8_t fsverity[32])
{
	size_t lo = 0, hi = idx->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = memcmp(fsverity, idx->e[mid].fsverity, 32);
		if (c == 0)
			return &idx->e[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}
