/* libFuzzer target: source.c (raw, gzip, zstd kit files) -- one stream pass
 * to the end, then random reads at offsets derived from the input, which
 * must return the same bytes the stream pass did. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memfile.h"
#include "source.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define STREAM_MAX (16u << 20)   /* stop a decompression bomb here */

static uint64_t take64(const uint8_t *data, size_t size, size_t *pos)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | (size ? data[(*pos)++ % size] : 0);
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = memfile_put(data, size);
	struct source *s = NULL;
	struct stella_err e = {0};
	if (source_open(path, &s, &e) != 0)
		return 0;

	uint8_t *stream = malloc(STREAM_MAX);
	if (!stream)
		abort();
	size_t got = 0;
	bool complete = false;
	while (got < STREAM_MAX) {
		size_t want = STREAM_MAX - got < 65536 ? STREAM_MAX - got : 65536;
		ssize_t n = source_stream_read(s, stream + got, want, &e);
		if (n < 0)
			break;
		if (n == 0) {
			complete = true;
			break;
		}
		if ((size_t)n > want)
			abort();
		got += (size_t)n;
	}
	if (complete && source_compression(s) != KIT_COMPRESS_NONE && source_stream_size(s) != got) {
		fprintf(stderr, "stream size %llu != bytes read %zu\n",
			(unsigned long long)source_stream_size(s), got);
		abort();
	}

	/* Random reads inside what the stream pass reached must match it. */
	size_t pos = 0;
	uint8_t buf[8192];
	for (int i = 0; got && i < 4; i++) {
		uint64_t off = take64(data, size, &pos) % got;
		size_t len = (size_t)(take64(data, size, &pos) % sizeof buf) + 1;
		if (len > got - off)
			len = got - off;
		e = (struct stella_err){0};
		if (source_pread(s, buf, len, off, &e) == 0 && memcmp(buf, stream + off, len) != 0) {
			fprintf(stderr, "source_pread(%zu @ %llu) differs from the stream pass\n", len,
				(unsigned long long)off);
			abort();
		}
	}
	/* And one past the end: must fail or be refused, never crash. */
	e = (struct stella_err){0};
	(void)source_pread(s, buf, 16, (uint64_t)got + take64(data, size, &pos) % 4096, &e);

	const struct source_point *pts;
	(void)source_points(s, &pts);
	free(stream);
	source_close(s);
	return 0;
}
