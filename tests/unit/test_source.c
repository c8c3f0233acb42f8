/* source.c: the tar stream of gzip and zstd kits read sequentially (seek
 * points recorded on the way) and then at random offsets, against the bytes
 * GNU gzip and zstd themselves compressed; concatenated members and frames;
 * garbage after the stream and truncation refused; bytes reported bad
 * (source_report_bad) reach the kit's bytes as the file range they were
 * decoded from, and what was decoded from them is decoded again. */
#include <stdbool.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "bytes.h"
#include "check.h"
#include "source.h"

#define SIZE (23u << 20) /* several gzip seek points */

static char dir[] = "/tmp/stella-test-source.XXXXXX";
static uint8_t *data;

static uint8_t byte_at(uint64_t i)
{
	/* compressible but not trivially: a slowly varying pseudo-random text */
	uint64_t x = (i / 64) * 2654435761u;
	return (uint8_t)('a' + ((x >> 7) ^ (i % 7)) % 26);
}

static void sh(const char *cmd)
{
	CHECK(system(cmd) == 0);
}

static void check_file(const char *path, enum kit_compression comp)
{
	struct source *s;
	struct stella_err e = { 0 };
	CHECK(source_open(path, &s, &e) == 0);
	if (!s)
		return;
	CHECK(source_compression(s) == comp);
	uint8_t *buf = malloc(1 << 20);
	uint64_t off = 0;
	ssize_t n;
	bool same = true;
	while ((n = source_stream_read(s, buf, 1 << 20, &e)) > 0) {
		if (off + (uint64_t)n > 2 * (uint64_t)SIZE || memcmp(buf, data + off, (size_t)n))
			same = false;
		off += (uint64_t)n;
	}
	CHECK(n == 0);
	CHECK(same);
	CHECK(off == 2 * (uint64_t)SIZE);
	const struct source_point *pts;
	size_t np = source_points(s, &pts);
	if (comp == KIT_COMPRESS_GZIP)
		CHECK(np >= 5);
	/* Random reads, backwards and forwards, across member boundaries. */
	uint64_t offs[] = { 2 * (uint64_t)SIZE - 4096, 0, 17u << 20, SIZE - 100, SIZE, 5, 40u << 20, 1234567 };
	for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		memset(buf, 0, 4096);
		CHECK(source_pread(s, buf, 4096, offs[i], &e) == 0);
		CHECK(memcmp(buf, data + offs[i], 4096) == 0);
	}
	/* Sequential preads reuse a cursor. */
	for (uint64_t o = 3u << 20; o < (5u << 20); o += 131072) {
		CHECK(source_pread(s, buf, 131072, o, &e) == 0);
		CHECK(memcmp(buf, data + o, 131072) == 0);
	}
	memset(&e, 0, sizeof(e));
	CHECK(source_pread(s, buf, 4096, 2 * (uint64_t)SIZE - 100, &e) < 0);
	free(buf);
	source_close(s);
}

/* Many threads reading at random offsets at once: each cursor must keep its
 * own state (a shared scratch buffer once corrupted concurrent inflates). */
struct racer {
	struct source *s;
	unsigned seed;
	int bad;
};

static void *race(void *arg)
{
	struct racer *r = arg;
	uint8_t *buf = malloc(65536);
	for (int i = 0; i < 60; i++) {
		r->seed = r->seed * 1103515245 + 12345;
		uint64_t off = (r->seed >> 4) % (2 * (uint64_t)SIZE - 65536);
		size_t len = 1 + (r->seed >> 8) % 65536;
		struct stella_err e = { 0 };
		if (source_pread(r->s, buf, len, off, &e) < 0 || memcmp(buf, data + off, len))
			r->bad++;
	}
	free(buf);
	return NULL;
}

static void check_concurrent(const char *path)
{
	struct source *s;
	struct stella_err e = { 0 };
	CHECK(source_open(path, &s, &e) == 0);
	uint8_t *buf = malloc(1 << 20);
	while (source_stream_read(s, buf, 1 << 20, &e) > 0)
		;
	free(buf);
	pthread_t t[6];
	struct racer r[6];
	for (int i = 0; i < 6; i++) {
		r[i] = (struct racer){ .s = s, .seed = (unsigned)i * 7919u + 1 };
		pthread_create(&t[i], NULL, race, &r[i]);
	}
	for (int i = 0; i < 6; i++) {
		pthread_join(t[i], NULL);
		CHECK(r[i].bad == 0);
	}
	source_close(s);
}

static void refused(const char *path, const char *needle)
{
	struct source *s;
	struct stella_err e = { 0 };
	CHECK(source_open(path, &s, &e) == 0);
	uint8_t *buf = malloc(1 << 20);
	ssize_t n;
	while ((n = source_stream_read(s, buf, 1 << 20, &e)) > 0)
		;
	CHECK(n == -EBADMSG);
	if (!strstr(e.msg, needle)) {
		fprintf(stderr, "%s: \"%s\" lacks \"%s\"\n", path, e.msg, needle);
		check_failures++;
	}
	free(buf);
	source_close(s);
}

/* Local bytes that remember what was reported bad, and say "read again". */
struct spy {
	struct bytes b;
	struct bytes *inner;
	uint64_t off, len;
	int reports;
};

static ssize_t spy_read_at(struct bytes *b, void *buf, size_t len, uint64_t off)
{
	return bytes_read_at(((struct spy *)b)->inner, buf, len, off);
}

static int spy_report_bad(struct bytes *b, uint64_t off, uint64_t len)
{
	struct spy *s = (struct spy *)b;
	s->off = off;
	s->len = len;
	s->reports++;
	return 0;
}

static void spy_close(struct bytes *b)
{
	bytes_close(((struct spy *)b)->inner);
	free(b->name);
	free(b);
}

static const struct bytes_ops spy_ops = { .read_at = spy_read_at, .report_bad = spy_report_bad, .close = spy_close };

static void check_report(const char *path, enum kit_compression comp)
{
	struct stella_err e = { 0 };
	struct spy *sp = calloc(1, sizeof(*sp));
	CHECK(bytes_open_path(path, &sp->inner, &e) == 0);
	sp->b.ops = &spy_ops;
	sp->b.name = strdup(path);
	sp->b.size = bytes_size(sp->inner);
	snprintf(sp->b.identity, sizeof(sp->b.identity), "spy");
	struct source *s;
	CHECK(source_open_bytes(&sp->b, &s, &e) == 0);
	uint8_t *buf = malloc(1 << 20);
	ssize_t n;
	while ((n = source_stream_read(s, buf, 1 << 20, &e)) > 0)
		;
	CHECK(n == 0);
	uint64_t off = (17u << 20) + 5, len = 8192;
	CHECK(source_pread(s, buf, len, off, &e) == 0);
	CHECK(source_report_bad(s, off, len) == 0);
	CHECK(sp->reports == 1);
	if (comp == KIT_COMPRESS_NONE) {
		CHECK(sp->off == off && sp->len == len);
	} else {
		/* seek point to seek point: what the kit file holds for them */
		const struct source_point *pts;
		size_t np = source_points(s, &pts), i = 0;
		while (i + 1 < np && pts[i + 1].out <= off)
			i++;
		size_t j = i;
		while (j + 1 < np && pts[j + 1].out < off + len)
			j++;
		uint64_t in = pts[i].in - (pts[i].bits ? 1 : 0);
		uint64_t end = j + 1 < np ? pts[j + 1].in : source_file_size(s);
		CHECK(sp->off == in && sp->off + sp->len == end);
		CHECK(sp->len < source_file_size(s));
	}
	/* read again: decoded again, the same bytes */
	memset(buf, 0, len);
	CHECK(source_pread(s, buf, len, off, &e) == 0);
	CHECK(memcmp(buf, data + off, len) == 0);
	free(buf);
	source_close(s);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	data = malloc(2 * (size_t)SIZE);
	for (uint64_t i = 0; i < 2 * (uint64_t)SIZE; i++)
		data[i] = byte_at(i);
	char path[256], cmd[1024];
	snprintf(path, sizeof(path), "%s/plain", dir);
	FILE *f = fopen(path, "wb");
	/* two halves, so that the compressed files can be two members/frames */
	fwrite(data, 1, SIZE, f);
	fclose(f);
	snprintf(path, sizeof(path), "%s/plain2", dir);
	f = fopen(path, "wb");
	fwrite(data + SIZE, 1, SIZE, f);
	fclose(f);

	snprintf(cmd, sizeof(cmd), "cd %s && gzip -nc plain > a.gz && gzip -nc plain2 > b.gz && cat a.gz b.gz > k.gz && "
		 "zstd -q -c plain > a.zst && zstd -q -c plain2 > b.zst && cat a.zst b.zst > k.zst && "
		 "cat plain plain2 > k.tar", dir);
	sh(cmd);
	snprintf(path, sizeof(path), "%s/k.gz", dir);
	check_file(path, KIT_COMPRESS_GZIP);
	snprintf(path, sizeof(path), "%s/k.zst", dir);
	check_file(path, KIT_COMPRESS_ZSTD);
	snprintf(path, sizeof(path), "%s/k.tar", dir);
	check_file(path, KIT_COMPRESS_NONE);
	snprintf(path, sizeof(path), "%s/k.gz", dir);
	check_report(path, KIT_COMPRESS_GZIP);
	snprintf(path, sizeof(path), "%s/k.zst", dir);
	check_report(path, KIT_COMPRESS_ZSTD);
	snprintf(path, sizeof(path), "%s/k.tar", dir);
	check_report(path, KIT_COMPRESS_NONE);
	snprintf(path, sizeof(path), "%s/k.gz", dir);
	check_concurrent(path);
	snprintf(path, sizeof(path), "%s/k.zst", dir);
	check_concurrent(path);

	snprintf(cmd, sizeof(cmd), "cd %s && cp a.gz g1.gz && echo garbage >> g1.gz && "
		 "cp a.zst g2.zst && echo garbage >> g2.zst && "
		 "head -c 100000 a.gz > t1.gz && head -c 100000 a.zst > t2.zst", dir);
	sh(cmd);
	snprintf(path, sizeof(path), "%s/g1.gz", dir);
	refused(path, "trailing garbage");
	snprintf(path, sizeof(path), "%s/g2.zst", dir);
	refused(path, "trailing garbage");
	snprintf(path, sizeof(path), "%s/t1.gz", dir);
	refused(path, "truncated");
	snprintf(path, sizeof(path), "%s/t2.zst", dir);
	refused(path, "truncated");

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	sh(cmd);
	free(data);
	return CHECK_DONE();
}
