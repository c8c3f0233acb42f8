/* mapview.c: a file read through the mapping gives the file's bytes; after
 * a whole pass, the trimmer drops the pages from our resident set (RssFile
 * in /proc/self/status falls back, within a bounded wait) while the bytes
 * still read right; an empty file maps to nothing. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "mapview.h"

#define SIZE (64u << 20)

static char path[] = "/tmp/stella-test-mapview.XXXXXX";

static uint8_t byte_at(size_t i) { return (uint8_t)((i * 2654435761u) >> 11); }

static long rss_file_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "RssFile: %ld kB", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

static int pass(const struct mapview *v)
{
	int bad = 0;
	const uint8_t *p = v->base;
	for (size_t i = 0; i < v->size; i++)
		bad += p[i] != byte_at(i);
	return bad;
}

int main(void)
{
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	uint8_t *buf = malloc(1 << 20);
	CHECK(buf != NULL);
	for (size_t off = 0; off < SIZE; off += 1 << 20) {
		for (size_t i = 0; i < 1 << 20; i++)
			buf[i] = byte_at(off + i);
		CHECK(write(fd, buf, 1 << 20) == 1 << 20);
	}
	free(buf);
	long before = rss_file_kib();
	struct mapview v;
	CHECK(mapview_open(fd, SIZE, &v) == 0);
	CHECK(v.size == SIZE && v.trimming);
	CHECK(pass(&v) == 0);
	/* the trimmer runs every MAPVIEW_TRIM_MS: within 2 s the 64 MiB read
	 * are out of our RSS (a busy machine may delay it, never forever) */
	long after = -1;
	for (int i = 0; i < 200; i++) {
		after = rss_file_kib();
		if (after >= 0 && after < before + 16 * 1024)
			break;
		usleep(10000);
	}
	CHECK(after >= 0 && after < before + 16 * 1024);
	CHECK(pass(&v) == 0);   /* dropped pages come back with the same bytes */
	mapview_close(&v);
	CHECK(v.base == NULL);

	CHECK(mapview_open(fd, 0, &v) == 0);
	CHECK(v.base == NULL && v.size == 0);
	mapview_close(&v);
	close(fd);
	unlink(path);
	return CHECK_DONE();
}
