/* libFuzzer target: manifest_parse on arbitrary bytes; whatever parses must
 * survive a canonical round trip (write, parse again, write the same bytes).
 * And the streaming parser, fed the same bytes in pieces, must agree with
 * it: refuse what it refuses, accept what it accepts (or hand back a valid
 * manifest whose artifacts are not sorted), and give the same top level
 * and the same artifacts in the same order. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct seen {
	const struct manifest *whole; /* NULL: the whole parser refused */
	size_t n;
	bool differs;
};

static int compare(void *ctx, size_t i, const struct artifact *a, struct stella_err *e)
{
	struct seen *s = ctx;
	(void)e;
	if (i != s->n++)
		s->differs = true;
	if (!s->whole)
		return 0;
	const struct artifact *b = i < s->whole->nartifacts ? &s->whole->artifacts[i] : NULL;
	if (!b || strcmp(a->name, b->name) || a->type != b->type || a->mode != b->mode || a->size != b->size ||
	    memcmp(a->sha256, b->sha256, 32) || memcmp(a->fsverity, b->fsverity, 32) ||
	    a->captured_at != b->captured_at || (a->target == NULL) != (b->target == NULL) ||
	    (a->target && strcmp(a->target, b->target)))
		s->differs = true;
	return 0;
}

static void differential(const char *buf, size_t size, int whole_r, const struct manifest *whole)
{
	struct stella_err e = {0};
	struct seen s = { .whole = whole };
	struct manifest_stream *ms;
	if (manifest_stream_new(compare, &s, 0, &ms, &e) != 0)
		abort();
	size_t chunk = 1 + size % 61;
	int r = 0;
	for (size_t at = 0; r == 0 && at < size; at += chunk)
		r = manifest_stream_feed(ms, buf + at, size - at < chunk ? size - at : chunk);
	struct manifest *m = NULL;
	if (r == 0)
		r = manifest_stream_finish(ms, &m, &e);
	bool unsorted = manifest_stream_unsorted(ms);
	manifest_stream_free(ms);
	if (r == -EDOM && unsorted) {
		manifest_free(m);
		return; /* the caller falls back to the whole parser */
	}
	if ((r == 0) != (whole_r == 0) || (r < 0 && r != whole_r && whole_r != -ENOMEM)) {
		fprintf(stderr, "parsers disagree: whole %d, stream %d (%s)\n", whole_r, r, e.msg);
		abort();
	}
	if (r == 0) {
		char *a = NULL, *b = NULL;
		size_t al = 0, bl = 0;
		if (s.differs || s.n != whole->nartifacts || m->nlisted != whole->nartifacts ||
		    manifest_write_identity(m, &a, &al) || manifest_write_identity(whole, &b, &bl) || al != bl ||
		    memcmp(a, b, al)) {
			fprintf(stderr, "parsers accept different manifests\n");
			abort();
		}
		free(a);
		free(b);
	}
	manifest_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* manifest_parse needs buf[len] readable. */
	char *buf = malloc(size + 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';

	struct stella_err e = {0};
	struct manifest *m = NULL;
	int whole_r = manifest_parse(buf, size, &m, &e);
	differential(buf, size, whole_r, whole_r == 0 ? m : NULL);
	if (whole_r == 0) {
		char *out = NULL;
		size_t olen = 0;
		if (manifest_write(m, &out, &olen) != 0) {
			fprintf(stderr, "manifest_write failed on a parsed manifest\n");
			abort();
		}
		struct stella_err e2 = {0};
		struct manifest *m2 = NULL;
		if (manifest_parse(out, olen, &m2, &e2) != 0) {
			fprintf(stderr, "round trip: re-parse failed: %s\n%.*s\n", e2.msg, (int)olen, out);
			abort();
		}
		char *out2 = NULL;
		size_t olen2 = 0;
		if (manifest_write(m2, &out2, &olen2) != 0) {
			fprintf(stderr, "manifest_write failed on the re-parsed manifest\n");
			abort();
		}
		if (olen != olen2 || memcmp(out, out2, olen) != 0) {
			fprintf(stderr, "round trip: writer not canonical\n--- first\n%s\n--- second\n%s\n", out, out2);
			abort();
		}
		free(out2);
		manifest_free(m2);
		free(out);
		manifest_free(m);
	}
	free(buf);
	return 0;
}
