/* Untrusted text made safe for one output.  Names come from kits (component
 * names, file names: any bytes but NUL and '/'), paths from the command
 * line, messages quote both; an output that prints them raw lets a name
 * forge lines ("OK" checks in health), break a format, or send escape
 * sequences to a terminal.
 *
 *   ESCAPE_TEXT  one visible line: \\ \n \r \t, other C0 controls and DEL as
 *                \xHH, C1 controls and the Unicode line separators and
 *                bidirectional controls as \uHHHH, bytes that are not UTF-8
 *                as \xHH.  Unambiguous: a backslash in the name is doubled.
 *   ESCAPE_JSON  for a JSON string (its writer escapes quotes and C0): valid
 *                UTF-8 passes unchanged, a byte that is not UTF-8 becomes the
 *                text \xHH (JSON cannot carry it).
 *   ESCAPE_PROM  a Prometheus label value (text format 0.0.4): \\ \" \n as the
 *                format says; other controls and non-UTF-8 bytes as in
 *                ESCAPE_TEXT, written with an escaped backslash so that the
 *                value reads \xHH. */
#pragma once

#include <stddef.h>

enum escape_style { ESCAPE_TEXT, ESCAPE_JSON, ESCAPE_PROM };

/* Write s escaped into out (cap bytes, NUL-terminated, cut only between
 * whole escapes); returns the length the whole result needs, as snprintf. */
size_t escape(const char *s, enum escape_style style, char *out, size_t cap);
/* The same, malloc'ed; NULL when out of memory. */
char *escape_dup(const char *s, enum escape_style style);
