#include "json.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#include "util.h"

#define CHUNK_MIN (256u << 10)
#define DEPTH_LIMIT 64u
#define KEY_CACHE 32u
#define KEY_CACHE_LEN 32u

/* ---- arena: chunks in a list, newest first; a mark rolls it back ---- */

struct chunk {
	struct chunk *next;
	size_t used, cap;
	max_align_t data[];
};

struct arena {
	struct chunk *head;
};

struct mark {
	struct chunk *chunk;
	size_t used;
};

static void *arena_alloc(struct arena *a, size_t size)
{
	size = (size + 7) & ~(size_t)7;
	struct chunk *c = a->head;
	if (!c || c->cap - c->used < size) {
		size_t cap = MAX(size, (size_t)CHUNK_MIN);
		if (!(c = malloc(sizeof(*c) + cap)))
			return NULL;
		c->next = a->head;
		c->used = 0;
		c->cap = cap;
		a->head = c;
	}
	void *p = (char *)c->data + c->used;
	c->used += size;
	return p;
}

static struct mark arena_mark(const struct arena *a)
{
	return (struct mark){ a->head, a->head ? a->head->used : 0 };
}

static void arena_rollback(struct arena *a, struct mark m)
{
	while (a->head != m.chunk) {
		struct chunk *c = a->head;
		a->head = c->next;
		free(c);
	}
	if (a->head)
		a->head->used = m.used;
}

static void arena_free(struct arena *a)
{
	arena_rollback(a, (struct mark){ NULL, 0 });
}

/* ---- the parse ---- */

struct frame {
	struct json *node;
	struct json *last;
	bool stream;          /* its elements go to the callback */
	bool slow_keys;       /* has a key the cache does not hold */
	uint32_t keys_seen;   /* cached keys met so far, by cache slot */
};

struct json_doc {
	struct arena arena;        /* the tree */
	struct arena keys;         /* interned keys: never rolled back */
	const struct json_opts *o;
	struct json *root;
	struct frame stack[DEPTH_LIMIT + 1];
	unsigned depth;
	const char *key;           /* pending member key */
	struct {
		uint32_t len;
		const char *s;
	} key_cache[KEY_CACHE];
	unsigned nkeys;
	/* the element being streamed: where it started, how deep it is */
	bool in_elem;
	unsigned elem_depth;
	struct mark elem_mark;
	struct json *elem;
	size_t nelem;
	int rc;
	struct stella_err *e;
	uint64_t events;           /* values, keys and closings parsed */
};

static int fail(struct json_doc *d, int rc)
{
	d->rc = rc;
	return 0; /* cancels yajl */
}

static int emit(struct json_doc *d)
{
	int r = d->o->element(d->o->ctx, d->nelem++, d->elem, d->e);
	arena_rollback(&d->arena, d->elem_mark);
	d->in_elem = false;
	d->elem = NULL;
	return r < 0 ? fail(d, r) : 1;
}

static int done_value(struct json_doc *d)
{
	/* a scalar that is itself a streamed element */
	if (d->in_elem && d->depth == d->elem_depth)
		return emit(d);
	return 1;
}

/* A new value where the parser is: linked under its container. */
static struct json *add(struct json_doc *d, enum json_type t)
{
	d->events++;
	struct frame *f = d->depth ? &d->stack[d->depth - 1] : NULL;
	if (f && f->stream && !d->in_elem) {
		d->in_elem = true;
		d->elem_depth = d->depth;
		d->elem_mark = arena_mark(&d->arena);
	}
	struct json *v = arena_alloc(&d->arena, sizeof(*v));
	if (!v) {
		fail(d, -ENOMEM);
		return NULL;
	}
	memset(v, 0, sizeof(*v));
	v->type = t;
	if (!f) {
		d->root = v;
		return v;
	}
	if (f->node->type == JSON_OBJECT) {
		v->key = d->key;
		d->key = NULL;
	}
	if (f->node->len == UINT32_MAX) {
		fail(d, stella_fail(d->e, -EBADMSG, "invalid JSON: too many members"));
		return NULL;
	}
	f->node->len++;
	if (f->stream) {
		d->elem = v;
		return v;
	}
	if (f->last)
		f->last->next = v;
	else
		f->node->u.first = v;
	f->last = v;
	return v;
}

static const char *copy_str(struct json_doc *d, struct arena *a, const unsigned char *s, size_t l)
{
	if (memchr(s, 0, l)) {
		fail(d, stella_fail(d->e, -EBADMSG, "unsafe name or string: NUL character (\\u0000)"));
		return NULL;
	}
	char *p = arena_alloc(a, l + 1);
	if (!p) {
		fail(d, -ENOMEM);
		return NULL;
	}
	memcpy(p, s, l);
	p[l] = 0;
	return p;
}

static int cb_null(void *ctx)
{
	struct json_doc *d = ctx;
	return add(d, JSON_NULL) ? done_value(d) : 0;
}

static int cb_boolean(void *ctx, int b)
{
	struct json_doc *d = ctx;
	struct json *v = add(d, JSON_BOOL);
	if (!v)
		return 0;
	v->u.i = !!b;
	return done_value(d);
}

/* JSON's integers as int64 when they are plain digits and fit; anything
 * else numeric (fractions, exponents, huge) keeps its text. */
static bool parse_int(const char *s, size_t l, int64_t *out)
{
	bool neg = l && s[0] == '-';
	size_t i = neg;
	if (i == l)
		return false;
	uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; i < l; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		unsigned dgt = (unsigned)(s[i] - '0');
		if (v > (lim - dgt) / 10)
			return false;
		v = v * 10 + dgt;
	}
	*out = neg ? (int64_t)(0 - v) : (int64_t)v;
	return true;
}

static int cb_number(void *ctx, const char *s, size_t l)
{
	struct json_doc *d = ctx;
	int64_t i;
	bool is_int = parse_int(s, l, &i);
	struct json *v = add(d, is_int ? JSON_INT : JSON_NUMBER);
	if (!v)
		return 0;
	if (is_int) {
		v->u.i = i;
	} else {
		if (!(v->u.s = copy_str(d, &d->arena, (const unsigned char *)s, l)))
			return 0;
		v->len = (uint32_t)l;
	}
	return done_value(d);
}

static int cb_string(void *ctx, const unsigned char *s, size_t l)
{
	struct json_doc *d = ctx;
	if (l > UINT32_MAX)
		return fail(d, stella_fail(d->e, -EBADMSG, "invalid JSON: string too long"));
	struct json *v = add(d, JSON_STRING);
	if (!v || !(v->u.s = copy_str(d, &d->arena, s, l)))
		return 0;
	v->len = (uint32_t)l;
	return done_value(d);
}

static int open_container(struct json_doc *d, enum json_type t)
{
	if (d->depth >= d->o->max_depth || d->depth >= DEPTH_LIMIT)
		return fail(d, stella_fail(d->e, -EBADMSG, "JSON nested deeper than %u levels",
					   MIN(d->o->max_depth, DEPTH_LIMIT)));
	/* the streamed array: root[stream_key], an array */
	bool stream = t == JSON_ARRAY && d->depth == 1 && d->o->stream_key && d->key &&
		      d->stack[0].node->type == JSON_OBJECT && !strcmp(d->key, d->o->stream_key);
	struct json *v = add(d, t);
	if (!v)
		return 0;
	d->stack[d->depth++] = (struct frame){ .node = v, .stream = stream };
	return 1;
}

static int key_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Duplicates among an object's keys when some are outside the cache (rare:
 * a manifest's keys are a handful of short names).  Sorted, not compared
 * pairwise: a hostile manifest of a million distinct keys in one object
 * would otherwise hold the mount for hours before its signature is even
 * looked at. */
static int slow_dup(struct json_doc *d, struct json *o)
{
	const char **keys = malloc((o->len ? o->len : 1) * sizeof(*keys));
	if (!keys)
		return fail(d, -ENOMEM);
	size_t n = 0;
	for (const struct json *a = o->u.first; a; a = a->next)
		keys[n++] = a->key;
	qsort(keys, n, sizeof(*keys), key_cmp);
	for (size_t i = 1; i < n && !o->dup; i++)
		if (!strcmp(keys[i - 1], keys[i]))
			o->dup = keys[i];
	free(keys);
	return 1;
}

static int close_container(struct json_doc *d)
{
	d->events++;
	struct frame *f = &d->stack[--d->depth];
	struct json *o = f->node;
	if (o->type == JSON_OBJECT && f->slow_keys && !o->dup && !slow_dup(d, o))
		return 0;
	return done_value(d);
}

static int cb_start_map(void *ctx) { return open_container(ctx, JSON_OBJECT); }
static int cb_start_array(void *ctx) { return open_container(ctx, JSON_ARRAY); }
static int cb_end(void *ctx) { return close_container(ctx); }

static int cb_map_key(void *ctx, const unsigned char *s, size_t l)
{
	struct json_doc *d = ctx;
	d->events++;
	/* A manifest repeats a handful of keys thousands of times: keep one
	 * copy of each, outside the arena that streaming rolls back. */
	struct frame *f = &d->stack[d->depth - 1];
	unsigned slot;
	for (slot = 0; slot < d->nkeys; slot++)
		if (d->key_cache[slot].len == l && !memcmp(d->key_cache[slot].s, s, l))
			break;
	if (slot == d->nkeys) {
		bool cache = l <= KEY_CACHE_LEN && d->nkeys < KEY_CACHE;
		const char *k = copy_str(d, cache ? &d->keys : &d->arena, s, l);
		if (!k)
			return 0;
		d->key = k;
		if (!cache) {
			f->slow_keys = true;
			return 1;
		}
		d->key_cache[d->nkeys].len = (uint32_t)l;
		d->key_cache[d->nkeys].s = k;
		d->nkeys++;
	}
	d->key = d->key_cache[slot].s;
	/* duplicates among cached keys: one bit each, no string compares */
	if ((f->keys_seen & (1u << slot)) && !f->node->dup)
		f->node->dup = d->key;
	f->keys_seen |= 1u << slot;
	return 1;
}

static const yajl_callbacks callbacks = {
	.yajl_null = cb_null,
	.yajl_boolean = cb_boolean,
	.yajl_number = cb_number,
	.yajl_string = cb_string,
	.yajl_start_map = cb_start_map,
	.yajl_map_key = cb_map_key,
	.yajl_end_map = cb_end,
	.yajl_start_array = cb_start_array,
	.yajl_end_array = cb_end,
};

void json_doc_free(struct json_doc *d)
{
	if (!d)
		return;
	arena_free(&d->arena);
	arena_free(&d->keys);
	free(d);
}

struct json_stream {
	struct json_doc *d;
	yajl_handle h;
};

int json_stream_new(const struct json_opts *o, struct json_stream **out, struct stella_err *e)
{
	struct json_stream *js = calloc(1, sizeof(*js));
	if (!js || !(js->d = calloc(1, sizeof(*js->d)))) {
		free(js);
		return -ENOMEM;
	}
	js->d->o = o;
	js->d->e = e;
	if (!(js->h = yajl_alloc(&callbacks, NULL, js->d))) {
		json_stream_free(js);
		return -ENOMEM;
	}
	*out = js;
	return 0;
}

void json_stream_free(struct json_stream *js)
{
	if (!js)
		return;
	if (js->h)
		yajl_free(js->h);
	json_doc_free(js->d);
	free(js);
}

/* yajl's verdict as one line, or the callback's own failure. */
static int stream_status(struct json_stream *js, bool ok)
{
	struct json_doc *d = js->d;
	if (d->rc < 0)
		return d->rc;
	if (ok)
		return 0;
	unsigned char *msg = yajl_get_error(js->h, 0, NULL, 0);
	char line[200];
	snprintf(line, sizeof(line), "%s", msg ? (const char *)msg : "parse error");
	line[strcspn(line, "\n")] = 0;
	if (msg)
		yajl_free_error(js->h, msg);
	return d->rc = stella_fail(d->e, -EBADMSG, "invalid JSON: %s", line);
}

int json_stream_feed(struct json_stream *js, const char *buf, size_t len)
{
	if (js->d->rc < 0)
		return js->d->rc;
	return stream_status(js, yajl_parse(js->h, (const unsigned char *)buf, len) == yajl_status_ok);
}

uint64_t json_stream_events(const struct json_stream *js)
{
	return js->d->events;
}

const struct json *json_stream_root(const struct json_stream *js)
{
	return js->d->root;
}

int json_stream_finish(struct json_stream *js, const struct json **root)
{
	if (js->d->rc < 0)
		return js->d->rc;
	int r = stream_status(js, yajl_complete_parse(js->h) == yajl_status_ok && js->d->root);
	if (r == 0)
		*root = js->d->root;
	return r;
}

int json_parse(const char *buf, size_t len, const struct json_opts *o, struct json_doc **doc,
	       const struct json **root, struct stella_err *e)
{
	struct json_stream *js;
	int r = json_stream_new(o, &js, e);
	if (r < 0)
		return r;
	if ((r = json_stream_feed(js, buf, len)) == 0)
		r = json_stream_finish(js, root);
	if (r == 0) {
		*doc = js->d;
		js->d = NULL;
	}
	json_stream_free(js);
	return r;
}

const struct json *json_get(const struct json *o, const char *key)
{
	if (!o || o->type != JSON_OBJECT)
		return NULL;
	for (const struct json *v = o->u.first; v; v = v->next)
		if (!strcmp(v->key, key))
			return v;
	return NULL;
}
