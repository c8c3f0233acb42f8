#include "escape.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The length of the valid UTF-8 sequence at s (1-4) and its code point, or
 * 0 when s does not start one (overlong forms and surrogates included). */
static size_t utf8_seq(const unsigned char *s, uint32_t *cp)
{
	unsigned char c = s[0];
	size_t n;
	uint32_t v, min;
	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf)
		n = 2, v = c & 0x1f, min = 0x80;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3, v = c & 0x0f, min = 0x800;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4, v = c & 0x07, min = 0x10000;
	else
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0; /* a NUL ends the string here too */
		v = v << 6 | (s[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return n;
}

/* Code points a terminal or a reader takes for structure, not text: C1
 * controls, the line and paragraph separators, bidirectional controls. */
static bool format_char(uint32_t cp)
{
	return (cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 || cp == 0x200e || cp == 0x200f ||
	       (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

struct out {
	char *p;
	size_t cap;
	size_t len;    /* what the whole result needs */
	size_t fit;    /* what was written: whole pieces only */
	bool full;     /* a piece did not fit: nothing more is written */
};

static void put(struct out *o, const char *piece, size_t n)
{
	if (!o->full && o->fit + n < o->cap) {
		memcpy(o->p + o->fit, piece, n);
		o->fit += n;
	} else {
		o->full = true;
	}
	o->len += n;
}

size_t escape(const char *s, enum escape_style style, char *out, size_t cap)
{
	struct out o = { .p = out, .cap = cap, .full = cap == 0 };
	/* the backslash of an escape, as the output writes it */
	const char *bs = style == ESCAPE_PROM ? "\\\\" : "\\";
	char tmp[16];
	const unsigned char *p = (const unsigned char *)s;
	while (*p) {
		uint32_t cp;
		size_t n = utf8_seq(p, &cp);
		if (n == 0) {
			snprintf(tmp, sizeof(tmp), "%sx%02x", bs, *p);
			put(&o, tmp, strlen(tmp));
			p++;
			continue;
		}
		if (style == ESCAPE_JSON) {
			put(&o, (const char *)p, n);
		} else if (cp == '\\') {
			put(&o, "\\\\", 2);
		} else if (cp == '"' && style == ESCAPE_PROM) {
			put(&o, "\\\"", 2);
		} else if (cp == '\n') {
			put(&o, "\\n", 2);
		} else if (style == ESCAPE_TEXT && (cp == '\r' || cp == '\t')) {
			put(&o, cp == '\r' ? "\\r" : "\\t", 2);
		} else if (cp < 0x20 || cp == 0x7f) {
			snprintf(tmp, sizeof(tmp), "%sx%02x", bs, (unsigned)cp);
			put(&o, tmp, strlen(tmp));
		} else if (format_char(cp)) {
			snprintf(tmp, sizeof(tmp), "%su%04x", bs, (unsigned)cp);
			put(&o, tmp, strlen(tmp));
		} else {
			put(&o, (const char *)p, n);
		}
		p += n;
	}
	if (cap)
		out[o.fit] = 0;
	return o.len;
}

char *escape_dup(const char *s, enum escape_style style)
{
	size_t n = escape(s, style, NULL, 0);
	char *p = malloc(n + 1);
	if (p)
		escape(s, style, p, n + 1);
	return p;
}
