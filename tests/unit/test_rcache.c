/* rcache.c, the disk cache of remote kit bytes: entries read back as
 * written; a torn entry (cut short), a damaged one (a flipped byte, a
 * header for another chunk, zeros where a crash left the rename without
 * the data) and leftovers of interrupted writes are dropped, never
 * served; the bound holds, least recently used out first, down to the
 * low-water mark, the head's chunks pinned; damaged or foreign metadata
 * empties the kit's directory; the URL map finds a kit by its URL; other
 * kits' directories that no open cache holds go, oldest first, when they
 * do not fit beside a kit opened, and those held open stay. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "rcache.h"

#define CH 4096u
static char dir[] = "/tmp/stella-test-rcache.XXXXXX";
static const char *key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void fill(uint8_t *b, uint64_t idx)
{
	for (size_t i = 0; i < CH; i++)
		b[i] = (uint8_t)(idx * 31 + i * 7);
}

static void entry_path(uint64_t idx, char *p, size_t n)
{
	snprintf(p, n, "%s/remote/kits/%s/c%llu", dir, key, (unsigned long long)idx);
}

static bool exists(uint64_t idx)
{
	char p[512];
	entry_path(idx, p, sizeof(p));
	return access(p, F_OK) == 0;
}

static void test_roundtrip_and_damage(void)
{
	struct rcache *c;
	struct stella_err e = { 0 };
	CHECK(rcache_open(dir, key, 64 * CH, CH, CH, 1 << 30, &c, &e) == 0);
	uint8_t b[CH], got[CH];
	for (uint64_t i = 0; i < 8; i++) {
		fill(b, i);
		rcache_put(c, i, b, CH);
	}
	fill(b, 3);
	CHECK(rcache_get(c, 3, got, CH) == 0 && !memcmp(b, got, CH));
	CHECK(rcache_get(c, 9, got, CH) == -ENOENT);
	uint64_t bytes, hits;
	rcache_counts(c, &bytes, &hits);
	CHECK(bytes == 8 * CH && hits == 1);

	char p[512];
	/* torn: cut short */
	entry_path(1, p, sizeof(p));
	CHECK(truncate(p, 64 + CH / 2) == 0);
	CHECK(rcache_get(c, 1, got, CH) == -ENOENT);
	CHECK(!exists(1));
	/* a flipped byte in the data */
	entry_path(2, p, sizeof(p));
	int fd = open(p, O_RDWR);
	uint8_t x;
	CHECK(pread(fd, &x, 1, 64 + 100) == 1);
	x ^= 0xff;
	CHECK(pwrite(fd, &x, 1, 64 + 100) == 1);
	close(fd);
	CHECK(rcache_get(c, 2, got, CH) == -ENOENT && !exists(2));
	/* another chunk's file under this name */
	char p4[512];
	entry_path(4, p4, sizeof(p4));
	entry_path(5, p, sizeof(p));
	CHECK(rename(p4, p) == 0);
	CHECK(rcache_get(c, 5, got, CH) == -ENOENT && !exists(5));
	/* zeros: the rename reached the disk, the data did not */
	entry_path(6, p, sizeof(p));
	fd = open(p, O_WRONLY | O_TRUNC);
	static uint8_t zeros[64 + CH];
	CHECK(write(fd, zeros, sizeof(zeros)) == (ssize_t)sizeof(zeros));
	close(fd);
	CHECK(rcache_get(c, 6, got, CH) == -ENOENT && !exists(6));
	/* dropped on report */
	rcache_drop(c, 7);
	CHECK(rcache_get(c, 7, got, CH) == -ENOENT && !exists(7));
	rcache_close(c);

	/* a reopen finds what is left, removes a leftover temporary file and
	 * a stray name */
	snprintf(p, sizeof(p), "%s/remote/kits/%s/.tmp.c9.1.1", dir, key);
	fd = open(p, O_WRONLY | O_CREAT, 0600);
	close(fd);
	char stray[512];
	snprintf(stray, sizeof(stray), "%s/remote/kits/%s/c999999", dir, key);
	fd = open(stray, O_WRONLY | O_CREAT, 0600);
	CHECK(write(fd, zeros, sizeof(zeros)) == (ssize_t)sizeof(zeros));
	close(fd);
	CHECK(rcache_open(dir, key, 64 * CH, CH, CH, 1 << 30, &c, &e) == 0);
	CHECK(access(p, F_OK) != 0 && access(stray, F_OK) != 0);
	fill(b, 3);
	CHECK(rcache_get(c, 3, got, CH) == 0 && !memcmp(b, got, CH));
	rcache_counts(c, &bytes, &hits);
	CHECK(bytes == 2 * CH);   /* 0 and 3 */
	rcache_close(c);

	/* damaged metadata: the directory is emptied */
	snprintf(p, sizeof(p), "%s/remote/kits/%s/meta", dir, key);
	fd = open(p, O_WRONLY | O_TRUNC);
	CHECK(write(fd, "garbage", 7) == 7);
	close(fd);
	CHECK(rcache_open(dir, key, 64 * CH, CH, CH, 1 << 30, &c, &e) == 0);
	CHECK(!exists(0) && !exists(3));
	CHECK(rcache_get(c, 3, got, CH) == -ENOENT);
	rcache_close(c);
	/* a different size (another kit under the same key cannot be, but a
	 * different chunk size or head can): rebuilt too */
	CHECK(rcache_open(dir, key, 64 * CH, CH, CH, 1 << 30, &c, &e) == 0);
	fill(b, 3);
	rcache_put(c, 3, b, CH);
	rcache_close(c);
	CHECK(rcache_open(dir, key, 64 * CH, CH, 2 * CH, 1 << 30, &c, &e) == 0);
	CHECK(!exists(3));
	rcache_close(c);
}

static void test_bound(void)
{
	struct rcache *c;
	struct stella_err e = { 0 };
	/* head: chunks 0 and 1 (head_len 1.5 chunks), pinned; bound 10 chunks */
	CHECK(rcache_open(dir, key, 1000 * CH, CH, CH + CH / 2, 10 * CH, &c, &e) == 0);
	uint8_t b[CH], got[CH];
	for (uint64_t i = 0; i < 13; i++) {
		fill(b, i);
		rcache_put(c, i, b, CH);
		/* chunk 2 is the hot one: read after every write */
		if (i >= 2)
			CHECK(rcache_get(c, 2, got, CH) == 0);
	}
	uint64_t bytes, hits;
	rcache_counts(c, &bytes, &hits);
	/* 11 unpinned chunks put: over the bound of 10, evicted down to 9 */
	CHECK(bytes <= 2 * CH + 10 * CH);
	CHECK(exists(0) && exists(1) && exists(2));
	CHECK(!exists(3));   /* the least recently used */
	for (uint64_t i = 13; i < 100; i++) {
		fill(b, i);
		rcache_put(c, i, b, CH);
	}
	rcache_counts(c, &bytes, &hits);
	CHECK(bytes <= 12 * CH);
	CHECK(exists(0) && exists(1) && exists(99));
	size_t n = 0;
	for (uint64_t i = 2; i < 100; i++)
		n += exists(i);
	CHECK(n <= 10 && n >= 9);
	rcache_close(c);
}

static void test_urls(void)
{
	char k[65];
	uint64_t size, head;
	char v[128];
	CHECK(rcache_lookup_url(dir, "http://127.0.0.1:1/kit.tar", k, &size, &head, v) == -ENOENT);
	CHECK(rcache_remember_url(dir, "http://127.0.0.1:1/kit.tar", key, 12345, 678,
				  "Wed, 15 Jan 2025 00:00:00 GMT") == 0);
	CHECK(rcache_lookup_url(dir, "http://127.0.0.1:1/kit.tar", k, &size, &head, v) == 0);
	CHECK(!strcmp(k, key) && size == 12345 && head == 678);
	CHECK_STR(v, "Wed, 15 Jan 2025 00:00:00 GMT");
	CHECK(rcache_remember_url(dir, "http://127.0.0.1:1/kit.tar", key, 12345, 678, "") == 0);
	CHECK(rcache_lookup_url(dir, "http://127.0.0.1:1/kit.tar", k, &size, &head, v) == 0 && v[0] == 0);
	CHECK(rcache_lookup_url(dir, "http://127.0.0.1:2/kit.tar", k, &size, &head, NULL) == -ENOENT);
}

static bool kit_dir(const char *k)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/remote/kits/%s", dir, k);
	return access(p, F_OK) == 0;
}

/* Kit K with N chunks kept, then closed (or left open in *held). */
static void kit_with(const char *k, unsigned n, uint64_t bound, struct rcache **held)
{
	struct rcache *c;
	struct stella_err e = { 0 };
	CHECK(rcache_open(dir, k, 64 * CH, CH, 0, bound, &c, &e) == 0);
	uint8_t b[CH];
	for (uint64_t i = 0; i < n; i++) {
		fill(b, i);
		rcache_put(c, i, b, CH);
	}
	if (held)
		*held = c;
	else
		rcache_close(c);
}

static void test_other_kits(void)
{
	const char *a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
	const char *b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
	const char *c = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
	/* room for both: a stays beside b */
	kit_with(a, 4, 32 * CH, NULL);
	kit_with(b, 4, 32 * CH, NULL);
	CHECK(kit_dir(a) && kit_dir(b));
	/* c's bound leaves no room for a and b, the older one goes first */
	sleep(1); /* mtimes in seconds: b newer than a */
	{
		struct rcache *t;
		struct stella_err e = { 0 };
		CHECK(rcache_open(dir, b, 64 * CH, CH, 0, 32 * CH, &t, &e) == 0);
		uint8_t x[CH];
		fill(x, 9);
		rcache_put(t, 9, x, CH);
		rcache_close(t);
	}
	kit_with(c, 2, 6 * CH, NULL);
	CHECK(!kit_dir(a) && kit_dir(b) && kit_dir(c));
	/* a kit held open is never removed, however little room is left */
	struct rcache *hb;
	kit_with(b, 0, 32 * CH, &hb);
	kit_with(a, 0, CH, NULL);
	CHECK(kit_dir(b) && !kit_dir(c) && kit_dir(a));
	uint8_t got[CH], want[CH];
	fill(want, 3);
	CHECK(rcache_get(hb, 3, got, CH) == 0 && !memcmp(got, want, CH));
	rcache_close(hb);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	test_roundtrip_and_damage();
	test_bound();
	test_urls();
	test_other_kits();
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	CHECK(system(cmd) == 0);
	return CHECK_DONE();
}
