/* hex, base64 and RFC 3339 helpers. */
#include "check.h"
#include "util.h"

int main(void)
{
	uint8_t out[64];
	char *s = base64_encode((const uint8_t *)"hello", 5);
	CHECK_STR(s, "aGVsbG8=");
	free(s);
	CHECK(base64_decode("aGVsbG8=", 8, out, sizeof(out)) == 5 && !memcmp(out, "hello", 5));
	CHECK(base64_decode("aGVsbA==", 8, out, sizeof(out)) == 4);
	CHECK(base64_decode("aGVsbG8", 7, out, sizeof(out)) < 0);     /* not a multiple of 4 */
	CHECK(base64_decode("aGV=bG8=", 8, out, sizeof(out)) < 0);    /* padding in the middle */
	CHECK(base64_decode("a!VsbG8=", 8, out, sizeof(out)) < 0);    /* stray character */
	CHECK(base64_decode("", 0, out, sizeof(out)) < 0);
	CHECK(base64_decode("aGVsbG8=", 8, out, 3) < 0);             /* no room */

	CHECK(hex_decode("00ff", out, 2) == 0 && out[0] == 0 && out[1] == 0xff);
	CHECK(hex_decode("0g", out, 1) < 0);
	CHECK(hex_decode("001", out, 2) < 0);

	int64_t t;
	CHECK(time_parse("1970-01-01T00:00:00Z", &t) == 0 && t == 0);
	CHECK(time_parse("2025-01-15T00:00:00Z", &t) == 0 && t == 1736899200);
	CHECK(time_parse("2024-02-29T12:00:00.5Z", &t) == 0);
	CHECK(time_parse("2025-01-15T01:00:00+01:00", &t) == 0 && t == 1736899200);
	CHECK(time_parse("2025-02-29T00:00:00Z", &t) < 0);  /* not a leap year */
	CHECK(time_parse("2025-13-45T00:00:00Z", &t) < 0);
	CHECK(time_parse("2025-01-15", &t) < 0);
	CHECK(time_parse("2025-01-15T00:00:00", &t) < 0);   /* no zone */
	CHECK(time_parse("2025-01-15T00:00:00Zjunk", &t) < 0);
	CHECK(time_parse("0506-01-15T00:00:00Z", &t) < 0);      /* before 1970: refused */
	CHECK(time_parse("1970-01-01T00:00:00+01:00", &t) < 0); /* ... also by offset */
	CHECK(time_parse("9999-12-31T23:59:59Z", &t) == 0);
	CHECK(time_parse("9999-12-31T23:00:00-05:00", &t) < 0); /* year 10000 */
	char buf[32];
	time_format(1736899200, buf);
	CHECK_STR(buf, "2025-01-15T00:00:00Z");
	return CHECK_DONE();
}
