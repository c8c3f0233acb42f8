/* Untrusted text in outputs: core/escape.h's three styles. */
#include <stdlib.h>

#include "check.h"
#include "err.h"
#include "escape.h"

static char logged[1024];

static void capture(int prio, const char *line)
{
	(void)prio;
	snprintf(logged, sizeof(logged), "%s", line);
}

static const char *esc(const char *s, enum escape_style st)
{
	static char buf[8][256];
	static int i;
	char *b = buf[i++ % 8];
	size_t n = escape(s, st, b, sizeof(buf[0]));
	return n < sizeof(buf[0]) ? b : "(cut)";
}

int main(void)
{
	/* text: one visible, unambiguous line */
	CHECK_STR(esc("plain-name_1.0", ESCAPE_TEXT), "plain-name_1.0");
	CHECK_STR(esc("a\nb\tc\rd", ESCAPE_TEXT), "a\\nb\\tc\\rd");
	CHECK_STR(esc("back\\slash \"q\"", ESCAPE_TEXT), "back\\\\slash \"q\"");
	CHECK_STR(esc("\x1b[31m\x7f\x01", ESCAPE_TEXT), "\\x1b[31m\\x7f\\x01");
	CHECK_STR(esc("données/αβγ", ESCAPE_TEXT), "données/αβγ");
	CHECK_STR(esc("c1:\xc2\x9b", ESCAPE_TEXT), "c1:\\u009b");            /* U+009B CSI */
	CHECK_STR(esc("bidi:\xe2\x80\xae", ESCAPE_TEXT), "bidi:\\u202e");    /* U+202E */
	CHECK_STR(esc("ls:\xe2\x80\xa8", ESCAPE_TEXT), "ls:\\u2028");
	CHECK_STR(esc("bad:\xff\xc3", ESCAPE_TEXT), "bad:\\xff\\xc3");       /* not UTF-8, cut sequence */
	CHECK_STR(esc("overlong:\xc0\xaf", ESCAPE_TEXT), "overlong:\\xc0\\xaf");
	CHECK_STR(esc("surrogate:\xed\xa0\x80", ESCAPE_TEXT), "surrogate:\\xed\\xa0\\x80");
	CHECK_STR(esc("emoji:\xf0\x9f\x98\x80", ESCAPE_TEXT), "emoji:\xf0\x9f\x98\x80");
	/* json: exact when UTF-8 (the writer escapes the rest), \xHH for other bytes */
	CHECK_STR(esc("a\nb\\\"", ESCAPE_JSON), "a\nb\\\"");
	CHECK_STR(esc("bad:\xff", ESCAPE_JSON), "bad:\\xff");
	/* prometheus: \\ \" \n as the format says, other controls visible */
	CHECK_STR(esc("a\nb\\c\"d", ESCAPE_PROM), "a\\nb\\\\c\\\"d");
	CHECK_STR(esc("\x1b\t\xff", ESCAPE_PROM), "\\\\x1b\\\\x09\\\\xff");
	/* the size asked, and a cut only between whole escapes */
	char small[6];
	CHECK(escape("ab\ncd", ESCAPE_TEXT, small, sizeof(small)) == 6);
	CHECK_STR(small, "ab\\nc");
	CHECK(escape("a\x01", ESCAPE_TEXT, small, 4) == 5);
	CHECK_STR(small, "a");
	CHECK(escape("x", ESCAPE_TEXT, NULL, 0) == 1);
	char *d = escape_dup("\n", ESCAPE_TEXT);
	CHECK_STR(d, "\\n");
	free(d);
	/* log lines quote names too: one line, no terminal escapes */
	stella_log_set(capture);
	stella_log(3, "integrity failure: %s", "a\nb\x1b[31m\tc");
	CHECK_STR(logged, "integrity failure: a\\nb\\x1b[31m\\tc");
	stella_log_set(NULL);
	return CHECK_DONE();
}
