/* Strict JSON into a read-only tree that lives in one arena.
 *
 * Why not yajl_tree: it allocates every node, key and string on its own
 * (a 100 000-artifact manifest is millions of mallocs and frees, most of a
 * first mount), converts every number with strtod, accepts comments and
 * keeps no string lengths.  Here yajl's event parser fills an arena: a few
 * large allocations, freed at once; numbers stay integers when they are
 * integers; strings carry their length and may not contain NUL; nesting
 * deeper than the caller allows is refused while parsing.  Comments,
 * trailing garbage and invalid UTF-8 are errors (yajl's defaults).
 *
 * One array may be streamed: the elements of the array under a named key of
 * the top-level object are handed to a callback one by one, then their
 * memory is reused, so a manifest's artifact list never exists as a tree. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "err.h"

enum json_type { JSON_NULL, JSON_BOOL, JSON_INT, JSON_NUMBER, JSON_STRING, JSON_OBJECT, JSON_ARRAY };

struct json {
	enum json_type type;
	uint32_t len;               /* string bytes, or members / elements */
	const char *key;            /* member of an object: its key */
	union {
		int64_t i;          /* JSON_INT; JSON_BOOL as 0/1 */
		const char *s;      /* JSON_STRING; JSON_NUMBER's text (not an int64) */
		struct json *first; /* JSON_OBJECT, JSON_ARRAY: first member, in order */
	} u;
	struct json *next;          /* next member of the parent */
	const char *dup;            /* JSON_OBJECT: a key it has twice, or NULL */
};

struct json_opts {
	unsigned max_depth;         /* containers nested deeper are refused */
	/* Stream the elements of root[stream_key] when that is an array: it
	 * stays in the tree with its len counted and no members. */
	const char *stream_key;
	int (*element)(void *ctx, size_t index, const struct json *v, struct stella_err *e);
	void *ctx;
};

struct json_doc;

/* Parse buf[0..len) as one JSON value; *root stays valid until
 * json_doc_free(*doc).  Errors: -EBADMSG with a one-line message ("invalid
 * JSON: ...", the depth limit, a NUL in a string), -ENOMEM, or whatever
 * the element callback returned (its message kept). */
int json_parse(const char *buf, size_t len, const struct json_opts *o, struct json_doc **doc,
	       const struct json **root, struct stella_err *e);
void json_doc_free(struct json_doc *doc);

/* The member of object o named key, or NULL. */
const struct json *json_get(const struct json *o, const char *key);

/* The same, fed in pieces (a manifest of hundreds of MB is never whole in
 * memory): feed returns the first error and keeps returning it; finish
 * ends the document and gives its root, valid until json_stream_free.
 * Streamed elements reach the callback while feeding. */
struct json_stream;
int json_stream_new(const struct json_opts *o, struct json_stream **out, struct stella_err *e);
int json_stream_feed(struct json_stream *js, const char *buf, size_t len);
int json_stream_finish(struct json_stream *js, const struct json **root);
void json_stream_free(struct json_stream *js);
/* The root as parsed so far (NULL before it starts): from an element
 * callback, the members of the top-level object before the streamed array
 * are complete. */
const struct json *json_stream_root(const struct json_stream *js);
/* Values, keys and closings parsed so far: unchanged over a feed means
 * the input ended inside one token, which yajl keeps and lexes again from
 * its start on the next feed. */
uint64_t json_stream_events(const struct json_stream *js);
