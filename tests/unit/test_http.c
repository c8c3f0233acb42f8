/* http.c's pure parsers, the part of a response a server controls:
 * Content-Range values (ranges, unsatisfied, unknown total, the malformed
 * and the overflowing refused), header lines matched by name whatever the
 * case, values trimmed, and status lines. */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "http.h"

static int cr(const char *s, struct http_content_range *r)
{
	return http_parse_content_range(s, strlen(s), r);
}

static void test_content_range(void)
{
	struct http_content_range r;
	CHECK(cr("bytes 0-1023/5058560", &r) == 0);
	CHECK(r.first == 0 && r.last == 1023 && r.total == 5058560);
	CHECK(cr("  bytes 10-10/11 \r\n", &r) == 0 && r.first == 10 && r.last == 10 && r.total == 11);
	CHECK(cr("BYTES 1-2/3", &r) == 0);
	CHECK(cr("bytes */4096", &r) == 0 && r.first == UINT64_MAX && r.total == 4096);
	CHECK(cr("bytes 5-9/*", &r) == 0 && r.first == 5 && r.total == UINT64_MAX);
	CHECK(cr("bytes 18446744073709551614-18446744073709551614/18446744073709551615", &r) < 0);
	const char *bad[] = {
		"", "bytes", "bytes ", "bytes 0-1", "bytes 0-1/", "bytes 2-1/10", "bytes 0-10/10",
		"bytes */*", "bytes -1/10", "bytes 0--1/10", "bytes 0-1/10x", "bites 0-1/10",
		"bytes 0-1/99999999999999999999999", "bytes=0-1/10", "bytes 0 -1/10", "bytes 0-1/ 10",
		"bytes 00000000000000000000001-2/10",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (cr(bad[i], &r) == 0)
			fprintf(stderr, "accepted: '%s'\n", bad[i]);
		CHECK(cr(bad[i], &r) < 0);
	}
}

static void test_header(void)
{
	const char *v;
	size_t n;
	const char *l = "content-range:   bytes 0-1/2  \r\n";
	CHECK(http_header_value(l, strlen(l), "Content-Range", &v, &n));
	CHECK(n == strlen("bytes 0-1/2") && !memcmp(v, "bytes 0-1/2", n));
	l = "Content-Ranges: x\r\n";
	CHECK(!http_header_value(l, strlen(l), "Content-Range", &v, &n));
	l = "ETag:\r\n";
	CHECK(http_header_value(l, strlen(l), "ETag", &v, &n) && n == 0);
	l = "ETag";
	CHECK(!http_header_value(l, strlen(l), "ETag", &v, &n));
}

static void test_status(void)
{
	const char *l = "HTTP/1.1 206 Partial Content\r\n";
	CHECK(http_status_line(l, strlen(l)) == 206);
	l = "HTTP/2 200 \r\n";
	CHECK(http_status_line(l, strlen(l)) == 200);
	l = "HTTP/1.1 2x6 Partial\r\n";
	CHECK(http_status_line(l, strlen(l)) == -1);
	l = "Content-Type: x/y\r\n";
	CHECK(http_status_line(l, strlen(l)) == -1);
	l = "HTTP/1.1 2066 x\r\n";
	CHECK(http_status_line(l, strlen(l)) == -1);
}

int main(void)
{
	test_content_range();
	test_header();
	test_status();
	return CHECK_DONE();
}
