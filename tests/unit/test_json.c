/* json.c: values of every type with their lengths and order, integers kept
 * as integers and other numbers as text, a duplicate key reported, the
 * depth limit, strict refusals (comments, trailing garbage, NUL in a
 * string, invalid UTF-8), and one array streamed element by element with
 * the callback's failure passed on. */
#include <stdlib.h>

#include "check.h"
#include "json.h"

static int parse(const char *s, const struct json_opts *o, struct json_doc **d, const struct json **root,
		 struct stella_err *e)
{
	memset(e, 0, sizeof(*e));
	*d = NULL;
	return json_parse(s, strlen(s), o, d, root, e);
}

struct seen {
	size_t n;
	int64_t sum;
	size_t fail_at;
};

static int element(void *ctx, size_t index, const struct json *v, struct stella_err *e)
{
	struct seen *s = ctx;
	if (index != s->n)
		return stella_fail(e, -EIO, "out of order");
	s->n++;
	const struct json *x = json_get(v, "x");
	if (x && x->type == JSON_INT)
		s->sum += x->u.i;
	if (s->fail_at && s->n == s->fail_at)
		return stella_fail(e, -ECANCELED, "stop at %zu", index);
	return 0;
}

int main(void)
{
	struct json_opts o = { .max_depth = 8 };
	struct json_doc *d;
	const struct json *r;
	struct stella_err e;

	CHECK(parse("{\"a\":1,\"b\":\"h\\u00e9\",\"c\":[true,null,2.5,-7],\"d\":{}}", &o, &d, &r, &e) == 0);
	if (r) {
		CHECK(r->type == JSON_OBJECT && r->len == 4 && !r->dup);
		const struct json *a = json_get(r, "a"), *b = json_get(r, "b"), *c = json_get(r, "c");
		CHECK(a && a->type == JSON_INT && a->u.i == 1);
		CHECK(b && b->type == JSON_STRING && b->len == 3 && !memcmp(b->u.s, "h\xc3\xa9", 3));
		CHECK(c && c->type == JSON_ARRAY && c->len == 4);
		if (c && c->u.first) {
			const struct json *x = c->u.first;
			CHECK(x->type == JSON_BOOL && x->u.i == 1);
			x = x->next;
			CHECK(x && x->type == JSON_NULL);
			x = x ? x->next : NULL;
			CHECK(x && x->type == JSON_NUMBER && !strncmp(x->u.s, "2.5", 3));
			x = x ? x->next : NULL;
			CHECK(x && x->type == JSON_INT && x->u.i == -7 && !x->next);
		}
		CHECK(json_get(r, "nope") == NULL);
	}
	json_doc_free(d);

	CHECK(parse("{\"k\":1,\"k\":2}", &o, &d, &r, &e) == 0);
	CHECK(r && r->dup && !strcmp(r->dup, "k"));
	json_doc_free(d);

	const char *bad[] = { "{\"a\":1} x", "/* c */ {}", "{\"a\":\"x\\u0000y\"}", "{\"a\":\"\xff\"}", "{\"a\":}",
			      "[[[[[[[[[1]]]]]]]]]" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(parse(bad[i], &o, &d, &r, &e) == -EBADMSG);
		CHECK(e.msg[0] != 0);
		json_doc_free(d);
	}

	struct seen s = { 0 };
	struct json_opts so = { .max_depth = 8, .stream_key = "items", .element = element, .ctx = &s };
	CHECK(parse("{\"v\":1,\"items\":[{\"x\":1},{\"x\":2},{\"x\":39}]}", &so, &d, &r, &e) == 0);
	CHECK(s.n == 3 && s.sum == 42);
	const struct json *items = r ? json_get(r, "items") : NULL;
	CHECK(items && items->type == JSON_ARRAY && items->len == 3 && !items->u.first);
	json_doc_free(d);

	struct seen s2 = { .fail_at = 2 };
	so.ctx = &s2;
	CHECK(parse("{\"items\":[{\"x\":1},{\"x\":2},{\"x\":3}]}", &so, &d, &r, &e) == -ECANCELED);
	CHECK(strstr(e.msg, "stop at 1") != NULL);
	json_doc_free(d);
	return CHECK_DONE();
}
