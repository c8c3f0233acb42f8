/* Where a kit's head ends in the kit file (kithead.h). */
#include "kithead.h"

#include <string.h>

#include "kitread.h"

/* The head's members come first and all live under manifest/ (the
 * manifest, its signatures, merkle.bin, and in kit format 1.1 the index):
 * the end, in the tar stream, of the last of them, tar padding included. */
#define HEAD_MEMBERS_MAX 8

static int stream_end(struct source *src, uint64_t *end, struct stella_err *e)
{
	struct kitread *kr = NULL;
	int r = kitread_open_source(src, &kr, e);
	if (r < 0)
		return r;
	struct kit_member m;
	*end = 0;
	for (int i = 0; i < HEAD_MEMBERS_MAX; i++) {
		if ((r = kitread_next(kr, &m, e)) <= 0 || strncmp(m.name, "manifest/", 9))
			break;
		*end = (m.data_offset + m.size + 511) & ~UINT64_C(511);
	}
	kitread_close(kr);
	return r < 0 ? r : 0;
}

int kit_head_extent(const struct source *src, uint64_t *head_len, struct stella_err *e)
{
	struct source *d = NULL;
	int r = source_dup(src, &d, e);
	if (r < 0)
		return r;
	uint64_t end = 0;
	r = stream_end(d, &end, e);
	source_close(d);
	if (r < 0)
		return r;
	uint64_t size = source_file_size(src);
	if (source_compression(src) == KIT_COMPRESS_NONE) {
		*head_len = end < size ? end : size;
		return 0;
	}
	/* stream bytes before a seek point's out come from file bytes before
	 * its in (a gzip point may still use bits of the byte before in) */
	const struct source_point *pts;
	size_t n = source_points(src, &pts);
	*head_len = size;
	for (size_t i = 0; i < n; i++)
		if (pts[i].out >= end) {
			*head_len = pts[i].in + 1 < size ? pts[i].in + 1 : size;
			break;
		}
	return 0;
}
