/* libFuzzer target: what core/http.c makes of a server's response headers
 * (outside input: any mirror, any proxy in between).  Checked on every
 * input:
 *
 *   - http_parse_content_range accepts only what it can stand behind:
 *     first <= last, last < total when both are known, and printing the
 *     result back and parsing that gives the same range;
 *   - http_header_value finds a value inside the line, trimmed;
 *   - http_status_line gives -1 or a three-digit code. */
#include <assert.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *v = (const char *)data;
	struct http_content_range r;
	if (http_parse_content_range(v, size, &r) == 0) {
		assert(r.first == UINT64_MAX ? r.last == UINT64_MAX && r.total != UINT64_MAX : r.first <= r.last);
		assert(r.total == UINT64_MAX || r.first == UINT64_MAX || r.last < r.total);
		char again[96];
		int n;
		if (r.first == UINT64_MAX)
			n = snprintf(again, sizeof(again), "bytes */%" PRIu64, r.total);
		else if (r.total == UINT64_MAX)
			n = snprintf(again, sizeof(again), "bytes %" PRIu64 "-%" PRIu64 "/*", r.first, r.last);
		else
			n = snprintf(again, sizeof(again), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, r.first, r.last, r.total);
		struct http_content_range r2;
		assert(http_parse_content_range(again, (size_t)n, &r2) == 0);
		assert(r2.first == r.first && r2.last == r.last && r2.total == r.total);
	}
	const char *names[] = { "Content-Range", "ETag", "WWW-Authenticate" };
	for (size_t i = 0; i < 3; i++) {
		const char *val;
		size_t vn;
		if (http_header_value(v, size, names[i], &val, &vn)) {
			assert(val >= v && val + vn <= v + size);
			assert(vn == 0 || (val[0] != ' ' && val[vn - 1] != '\n' && val[vn - 1] != '\r'));
		}
	}
	int st = http_status_line(v, size);
	assert(st == -1 || (st >= 0 && st <= 999));
	return 0;
}
